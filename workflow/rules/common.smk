# Plumbing shared by every stage: where results go, the options every `spa`
# command takes, and which files the workflow must finally produce.
#
# Adding a stage: write workflow/rules/<stage>.smk whose outputs lie under
# results/<stage>/ (use `result()`), include it in the Snakefile, and point the functions in "Stage wiring" below at its outputs;
# its final outputs join the `all` target and the report's inputs with
# `add_stage_outputs(lambda: [...])` in its .smk ([] where the config leaves
# the stage out). Its figures reach the report through a figures.json in its
# output folder (docs/stages.md, "report").

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


def selection_thresholds():
    """`--threshold NAME=VALUE` for each value the config's select section sets (null: the default)."""
    return " ".join(f"--threshold {k}={v}" for k, v in config["select"].items()
                    if k != "remove_duplicates" and v is not None)


CLUSTER = config.get("cluster", {}) or {}
REMOTE_WORKERS = str(CLUSTER.get("kind") or "local") != "local"


def cluster_file():
    """The cluster section as a `spa --config` file, for the EM rules, when workers run elsewhere (SLURM
    jobs or a running scheduler); none for local runs. `ancient`: the file is remade when the section
    changes, but that reruns no stage (where the workers run does not change the results)."""
    return [ancient(result("cluster.yaml"))] if REMOTE_WORKERS else []


def em_threads():
    """Cores of an EM job: its Dask workers when they run inside it (cluster.kind local); 1 when the job
    only drives workers that run elsewhere (SLURM jobs, a running scheduler)."""
    return 1 if REMOTE_WORKERS else config["workers"]


def dask_workers():
    """Dask workers of an EM stage (`--workers {resources.dask_workers}`): the top-level `workers`, or for
    workers elsewhere cluster.workers when set. A resource, not a param: changing it reruns nothing (the
    results do not depend on it)."""
    return (CLUSTER.get("workers") or config["workers"]) if REMOTE_WORKERS else config["workers"]


def em_split(lanes=True):
    """`--chunk-size` and (``lanes``) `--reduction-lanes` where the config sets them away from the commands'
    defaults; nothing otherwise, so that the default config's commands (and their params) stay as they were."""
    out = option("--chunk-size", config.get("chunk_size"))
    if lanes and config.get("reduction_lanes", 1) != 1:
        out += f" --reduction-lanes {config['reduction_lanes']}"
    return out.strip()


def spa_common(seed=None, em=False):
    """Options every `spa` stage takes (CLI.md): seed and array backend; for the EM stages (``em``) the
    cluster section (`--config results/cluster.yaml`) when workers are not local.

    An EM rule's Dask worker count is `--workers {resources.dask_workers}` (see `dask_workers`), its
    threads `em_threads()`, so that Snakemake's core accounting and Dask agree.
    """
    seed = config["seed"] if seed is None else seed
    cluster = f" --config {result('cluster.yaml')}" if em and REMOTE_WORKERS else ""
    return f"--seed {seed} --backend {config['backend']}{cluster}"


import glob as _glob


# ---------------------------------------------------------------- stage wiring
# (simulate or the user's particles) -> class2d -> select -> initial_model ->
# class3d (x runs, consensus) -> refine3d; the refined map is validated against
# its own halves (gold standard) and, where a truth is known (the demo's, or
# the config's input.truth_map / input.truth_particles), against the truth and
# against a reconstruction from the TRUE poses of the same particles (the best
# the data allow).

INPUT = config["input"]
USER_PARTICLES = bool(INPUT.get("particles"))

# Preprocessing (workflow/rules/preprocess.smk): the user's movies (input.movies) or simulated ones
# (simulate.movies.enabled) -> import -> motion; or the user's micrographs (input.micrographs) -> import.
# Until particles are picked from them, the particle stages start from input.particles or the simulation.
# (not beside the user's own particles or micrographs: simulated movies are the demo's, or a test's)
SIMULATED_MOVIES = (bool((config["simulate"].get("movies") or {}).get("enabled")) and not INPUT.get("movies")
                    and not INPUT.get("particles") and not INPUT.get("micrographs"))
MOVIES = bool(INPUT.get("movies")) or SIMULATED_MOVIES
MICROGRAPHS = bool(INPUT.get("micrographs")) and not MOVIES
# simulated micrographs with their truth (config/examples/micrographs_ctf.yaml) -> CTF -> consensus
SIMULATED_MICROGRAPHS = bool((config["simulate"].get("micrographs") or {}).get("enabled")) and not (MOVIES or MICROGRAPHS)


def preprocess_targets():
    """What the preprocessing stages end in: the motion-corrected micrographs, or the imported ones."""
    if MOVIES:
        return [result("motion", "corrected_micrographs.star")]
    if MICROGRAPHS:
        return [result("import", "micrographs.star")]
    return []


def simulated_movie_spec():
    """The simulated movies' options: the preset's, with the simulate.movies overrides."""
    from spa.commands.simulate import PRESETS

    cfg = config["simulate"]["movies"]
    spec = dict(PRESETS[cfg["preset"]]["movies"])
    for key, field in [("n_micrographs", "n"), ("micrograph_size", "size"), ("n_frames", "n_frames"),
                       ("dose_per_frame", "dose_per_frame"), ("pixel_size", "pixel_size")]:
        if cfg.get(key) is not None:
            spec[field] = cfg[key]
    return spec


def import_source():
    """What `spa import` reads: `--micrographs GLOB|STAR`, or `--movie-groups JSON` (input.movies, or the
    simulated movies with their gain, pixel size and dose)."""
    import json
    import shlex

    if MICROGRAPHS:
        return f"--micrographs {shlex.quote(INPUT['micrographs'])}"
    if SIMULATED_MOVIES:
        spec = simulated_movie_spec()
        groups = [{"glob": result("simulate_movies", "movies", "*.mrc"), "gain": result("simulate_movies", "gain.mrc"),
                   "pixel_size": float(spec["pixel_size"]), "dose_per_frame": float(spec["dose_per_frame"])}]
    else:
        groups = INPUT["movies"]
    return f"--movie-groups {shlex.quote(json.dumps(groups, sort_keys=True))}"


def import_options():
    """The import section as `spa import` options (null keys left out)."""
    return " ".join(option(f"--{key.replace('_', '-')}", value) for key, value in config["import"].items())


def _groups():
    movies = INPUT.get("movies")
    entries = [movies] if isinstance(movies, (str, dict)) else list(movies or [])
    return [e if isinstance(e, dict) else {"glob": e} for e in entries]


def import_inputs(wildcards=None):
    """The files import reads, so that a movie added to the folder (or a changed gain) re-runs it."""
    files = []
    if SIMULATED_MOVIES:
        return [result("simulate_movies", "movies.star")]
    if MICROGRAPHS:
        source = INPUT["micrographs"]
        return files + ([source] if source.endswith(".star") else sorted(_glob.glob(source, recursive=True)))
    for group in _groups():
        files += sorted(f for f in _glob.glob(group["glob"], recursive=True) if os.path.isfile(f))
        gain = group.get("gain") or config["import"].get("gain")
        if gain:
            files.append(gain)
    return files


PICKED_PARTICLES = ((MOVIES or MICROGRAPHS or SIMULATED_MICROGRAPHS) and bool(config["pick"].get("use_for_particles"))
                    and not USER_PARTICLES)


def simulated_truth_dir():
    """The truth folder of simulated movies or micrographs (None for the user's data): where `spa truth` finds
    the true centres, poses and map of the particles picked from them."""
    if SIMULATED_MOVIES:
        return result("simulate_movies", "truth")
    if SIMULATED_MICROGRAPHS:
        return result("simulate_micrographs", "truth")
    return None


# particles picked from simulated data: their truth comes from matching picks to the true centres (rule
# picked_truth, workflow/rules/micrographs.smk)
PICKED_TRUTH = PICKED_PARTICLES and simulated_truth_dir() is not None

# Pickers (workflow/rules/micrographs.smk): LoG always; template matching when pick.template names class
# averages (.mrcs) or a map (.mrc), or is "auto" (the selected 2D class averages of LoG's particles, as a
# practitioner makes templates in RELION); with pick.consensus a learned picker and the consensus of them all.
PICK_TEMPLATE = config["pick"].get("template")
AUTO_TEMPLATES = PICK_TEMPLATE == "auto"


def template_source():
    """The templates of the template picker: the auto-selected class averages of LoG's particles, or the user's."""
    return result("template_select", "class_averages.star") if AUTO_TEMPLATES else PICK_TEMPLATE


def extract_options():
    """spa extract's options from config extract (box, rescaling, stack format, dust, normalisation, flipping)."""
    e = config["extract"]
    return " ".join([f"--box {e['box']}", option("--rescale", e["rescale"]),
                     f"--format {e['format']} --chunk {e['chunk']}", f"--dust {e['dust']}",
                     option("--bg-radius", e["bg_radius"]), "--phase-flip" if e["phase_flip"] else "",
                     "--float16" if e["float16"] else ""])
PICK_CONSENSUS = bool(config["pick"].get("consensus"))


def pick_diameter():
    """The particle diameter (Å) the template and learned pickers, the consensus and cleaning use."""
    pick = config["pick"]
    return pick.get("diameter") or 0.5 * (pick["diameter_min"] + pick["diameter_max"])


def picker_indexes():
    """autopick.star of every picker that runs on its own (LoG, and template matching where configured)."""
    return [result("pick", "autopick.star")] + ([result("pick_template", "autopick.star")] if PICK_TEMPLATE else [])


def picks_before_cleaning():
    return result("pick_consensus", "autopick.star") if PICK_CONSENSUS else result("pick", "autopick.star")


def final_picks():
    """The coordinates extraction reads: cleaned, else the consensus, else LoG's."""
    return result("clean", "autopick.star") if config["clean"]["enabled"] else picks_before_cleaning()


def micrographs_for_ctf():
    """The micrographs the CTF is estimated on: motion correction's, the imported ones, or simulated ones
    (simulate.micrographs.enabled; a run that starts from particles never asks for the CTF rules)."""
    targets = preprocess_targets()
    if not targets and SIMULATED_MICROGRAPHS:
        return result("simulate_micrographs", "micrographs.star")
    return targets[0] if targets else result("import", "micrographs.star")


# ctf section keys -> `spa ctf` options (the estimators' search) and `spa consensus ctf` options (the
# selection rules); null leaves the command's default
CTF_SEARCH_OPTIONS = {"defocus_min": "--defocus-min", "defocus_max": "--defocus-max", "defocus_step": "--defocus-step",
                      "search_max_astigmatism": "--max-astigmatism", "low_resolution": "--low-resolution",
                      "high_resolution": "--high-resolution", "tile": "--tile", "batch_size": "--batch-size"}
CTF_SELECTION_OPTIONS = {"max_fit_resolution": "--max-fit-resolution", "max_astigmatism": "--max-astigmatism",
                         "max_consensus_resolution": "--max-consensus-resolution", "max_drift": "--max-drift",
                         "max_frame_shift": "--max-frame-shift",
                         "selection_defocus_min": "--defocus-min", "selection_defocus_max": "--defocus-max"}


def ctf_options(wildcards):
    """`spa ctf` options of one estimator (the phase shift only for ctffind, the estimator that searches it)."""
    cfg = config["ctf"]
    out = " ".join(option(flag, cfg.get(key)) for key, flag in CTF_SEARCH_OPTIONS.items())
    if cfg.get("phase_shift") and wildcards.method == "ctffind":
        out += " --phase-shift"
    return " ".join(out.split())


def ctf_selection_options():
    """`spa consensus ctf` rule options; a rule set to null is switched off (0)."""
    cfg = config["ctf"]
    return " ".join(f"{flag} {0 if cfg.get(key) is None else cfg[key]}" for key, flag in CTF_SELECTION_OPTIONS.items())


def input_particles():
    """The particle STAR the processing starts from: the config's input.particles, the particles picked and
    extracted from the micrographs (pick.use_for_particles), or the simulated data (without poses)."""
    if USER_PARTICLES:
        return INPUT["particles"]
    if PICKED_PARTICLES:
        return result("extract", "particles.star")
    return result("simulate", "particles.star")


def refine3d_particles():
    """Particles refined: the selected set, or the class-consensus set (config refine3d.particles)."""
    if config["refine3d"]["particles"] == "class3d_consensus":
        return result("class3d", "consensus", "particles.star")
    return result("select", "particles.star")


def particles_with_poses():
    """STAR file with the TRUE poses (reconstruction of the ideal map); None when there is none."""
    if PICKED_TRUTH:
        return result("picked_truth", "particles.star")  # the true particles among the picks
    if USER_PARTICLES or PICKED_PARTICLES:
        return INPUT.get("truth_particles")
    return result("simulate", "truth", "particles.star")


def half_maps():
    return [result("refine3d", "run_half1_class001_unfil.mrc"), result("refine3d", "run_half2_class001_unfil.mrc")]


def final_map():
    return result("refine3d", "run_class001.mrc")


def ideal_map():
    """The map from the TRUE poses of refine3d's particles and halves, made as refine3d makes its final map
    (the true_poses job): what the refined map is compared with."""
    return result("true_poses", "run_class001.mrc")


def truth_map():
    """The true map (None when there is none)."""
    if USER_PARTICLES:
        return INPUT.get("truth_map")
    if PICKED_TRUTH:
        return result("picked_truth", "class001.mrc")  # resampled to the particles' pixel size and box
    if PICKED_PARTICLES:
        return INPUT.get("truth_map")
    return result("simulate", "truth", "class001.mrc")


# FSC comparisons: name -> (map1, map2). Each gives results/fsc/<name>/fsc.star; those against a truth
# only where there is one.
FSC_PAIRS = {"halves": half_maps}
if truth_map():
    FSC_PAIRS["truth"] = lambda: [final_map(), truth_map()]
    if particles_with_poses():
        FSC_PAIRS["ideal"] = lambda: [ideal_map(), truth_map()]


# How each comparison is named in its figure's title (the report)
FSC_TITLES = {"halves": "gold-standard half maps", "truth": "refined map vs the truth",
              "ideal": "map from the true poses (made as the refined map) vs the truth"}


def fsc_table(pair):
    return result("fsc", pair, "fsc.star")


def validate_inputs(wildcards=None):
    """Inputs of `spa validate`: the refinement, the class averages, and the truth map where there is one."""
    inputs = {"particles": result("refine3d", "run_data.star"), "map": final_map(), "half1": half_maps()[0],
              "half2": half_maps()[1],
              "classes": result("class2d", "run_classes.mrcs")}
    if truth_map():
        inputs["truth"] = truth_map()
    return inputs


def stage_outputs():
    """The final outputs of every stage present in this config: the summary and the maps it describes, the
    postprocessing and validation, the front end's, and whatever a stage's .smk added with
    `add_stage_outputs`. The report (the end of the workflow) waits for all of them."""
    return _stage_outputs() + [path for source in EXTRA_STAGE_OUTPUTS for path in source()]


# Functions (no arguments) giving more final outputs; a stage's .smk file adds its own with add_stage_outputs.
EXTRA_STAGE_OUTPUTS = []


def add_stage_outputs(source):
    """Register ``source`` (a function returning a list of paths, [] where the stage is absent from this
    config) as more final outputs: the `all` target and the report then wait for them."""
    EXTRA_STAGE_OUTPUTS.append(source)
    return source


def report_page():
    return result("report", "index.html")


def final_targets():
    """The final targets (inputs of the `all` target): every stage's final outputs and the report on them."""
    return [*stage_outputs(), report_page()]


def _stage_outputs():
    runs = [result("class3d", "consensus", "consensus_classes.star")] if config["class3d"]["runs"] >= 2 else []
    post = [result("postprocess", "postprocess.json"), result("locres", "locres.json"),
            result("validate", "validation.json")]
    front = [result("extract", "particles.star")] if (MOVIES or MICROGRAPHS) else []
    if SIMULATED_MICROGRAPHS:
        front = [result("ctf", "consensus", "micrographs_selected.star")]
    return [result("summary.json"), final_map(), *half_maps(), *runs, *post, *preprocess_targets(), *front]


def summary_inputs(wildcards=None):
    """The FSC tables the summary reads: the halves always, the truth comparisons where there is a truth."""
    return {**{pair: fsc_table(pair) for pair in FSC_PAIRS},
            "postprocess": result("postprocess", "postprocess.json"), "locres": result("locres", "locres.json"),
            "validation": result("validate", "validation.json"),
            **({"picking_truth": result("picked_truth", "picking_truth.json"),
                "picked_truth_particles": result("picked_truth", "particles.star"),
                "refined_particles": result("refine3d", "run_data.star")} if PICKED_TRUTH else {})}

