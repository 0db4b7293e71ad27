# Plumbing shared by every stage: where results go, the options every `spa`
# command takes, and which files the workflow must finally produce.
#
# Adding a stage: write workflow/rules/<stage>.smk whose outputs lie under
# results/<stage>/ (use `result()`), include it in the Snakefile, and point
# the functions in "Stage wiring" below at its outputs.

RESULTS = config["results"].rstrip("/")


wildcard_constraints:
    part="half1|half2|full",
    pair="[a-z0-9_]+",


def result(*parts):
    """Path of a workflow output: <results>/<stage>/<name...>."""
    return "/".join([RESULTS, *parts])


def log_file(name):
    """Log of one job (stdout and stderr of the `spa` call)."""
    return result("logs", f"{name}.log")


def benchmark_file(name):
    """Snakemake benchmark table (wall time, memory) of one job."""
    return result("benchmarks", f"{name}.tsv")


def option(flag, value):
    """`--flag value` for a config value that may be unset (None)."""
    return "" if value is None else f"{flag} {value}"


def spa_common(seed=None):
    """Options every `spa` stage takes (CLI.md): seed and array backend.

    The Dask worker count is `--workers {threads}` in each rule, so that
    Snakemake's core accounting and Dask agree.
    """
    seed = config["seed"] if seed is None else seed
    return f"--seed {seed} --backend {config['backend']}"


# ---------------------------------------------------------------- stage wiring
# The maps the validation compares. At this stage of the project they are
# reconstructed from the TRUE poses of the simulated particles; later stages
# (class2d -> select -> initial-model -> class3d -> refine3d) replace these
# functions with their own outputs and the rest of the workflow follows.


def particles_with_poses():
    """STAR file whose poses the reconstruction uses."""
    return result("simulate", "truth", "particles.star")


def half_maps():
    return [result("reconstruct", "half1.mrc"), result("reconstruct", "half2.mrc")]


def final_map():
    return result("reconstruct", "full.mrc")


def truth_map():
    return result("simulate", "truth", "class001.mrc")


# FSC comparisons: name -> (map1, map2). Each gives results/fsc/<name>/fsc.star.
FSC_PAIRS = {
    "halves": half_maps,
    "truth": lambda: [final_map(), truth_map()],
}


def fsc_table(pair):
    return result("fsc", pair, "fsc.star")


def final_targets():
    """The final targets (inputs of the `all` target): the summary and the maps it describes."""
    return [result("summary.json"), final_map(), *half_maps()]
