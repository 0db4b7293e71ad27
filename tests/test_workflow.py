"""The Snakemake workflow: its graph, its lint, its config schema, and one
end-to-end run of the demo pipeline on the tiny preset.

Snakemake runs in a subprocess of the interpreter running the tests, in a
temporary working directory (``--directory``), so nothing lands in the
repository. The venv's ``bin`` goes first on PATH so the rules find ``spa``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

# The demo's stages and how many jobs each has (from simulated movies to extracted particles, beside the
# particle stages on simulated particles; true_poses: the map from the true
# poses of refine3d's particles, made as refine3d's; class3d: two seeds; fsc: halves,
# truth, true poses vs truth).
DEMO_JOBS = {"simulate_movies": 1, "import_data": 1, "motion": 1, "ctf": 2, "ctf_consensus": 1, "pick": 1,
             "pick_agreed": 1, "pick_learned": 1, "pick_consensus": 1, "clean": 1, "extract": 1,
             "picked_truth": 1, "class2d": 1, "select": 1, "initial_model": 1, "class3d": 2, "class3d_consensus": 1,
             "refine3d": 1, "true_poses": 1, "fsc": 3, "mask": 1, "postprocess": 1, "locres": 1, "validate": 1,
             "summary": 1, "report_config": 1, "report": 1, "all": 1}


def snakemake(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table that Snakemake prints: rule name -> job count."""
    table = output.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE)
    return {name: int(n) for name, n in rows if name != "total"}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_shows_the_demo_graph(tmp_path):
    run = snakemake(tmp_path, "--dry-run", "--cores", "2")
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    assert job_counts(out) == DEMO_JOBS
    # outputs lie under results/<stage>/ of the working directory
    for path in ["results/extract/particles.star", "results/class2d/run_data.star",
                 "results/initial_model/initial_model.mrc", "results/class3d/run1/run_data.star",
                 "results/refine3d/run_class001.mrc", "results/fsc/truth/fsc.star", "results/summary.json",
                 "results/report/index.html"]:
        assert path in out
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_results_folder_follows_config(tmp_path):
    run = snakemake(tmp_path, "--dry-run", "--cores", "1", "--config", "results=elsewhere")
    assert run.returncode == 0, run.stderr
    assert "elsewhere/true_poses/run_class001.mrc" in run.stdout
    assert "results/true_poses" not in run.stdout


def test_lint_finds_nothing_but_the_software_stack(tmp_path):
    """`snakemake --lint` exits non-zero for any lint; the only one accepted is
    the request for a conda env/container per rule: the rules run the `spa`
    command of the environment Snakemake itself is installed in."""
    run = snakemake(tmp_path, "--lint")
    out = run.stdout + run.stderr
    titles = re.findall(r"^\s+\* (.+?):?$", out, flags=re.MULTILINE)
    if run.returncode != 0:
        assert titles, out  # it failed for a reason other than a lint
    assert all(t.startswith("Specify a conda environment or container") for t in titles), titles


def test_default_config_is_valid_and_defaults_fill_in():
    jsonschema.validate(DEFAULT_CONFIG, SCHEMA)
    assert DEFAULT_CONFIG["simulate"]["preset"] == "demo"
    for key, prop in SCHEMA["properties"].items():
        assert "description" in prop, key
        for sub, subprop in prop.get("properties", {}).items():
            assert "description" in subprop and "default" in subprop, f"{key}.{sub}"


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("simulate", "box", -64),
        ("simulate", "pixel_size", 0.0),
        ("simulate", "preset", "huge"),
        ("reconstruct", "sym", "C0"),
        ("reconstruct", "unknown_key", 1),
    ],
)
def test_schema_rejects_bad_values(section, key, value):
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg[section][key] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, SCHEMA)


def test_snakemake_rejects_negative_box_with_a_clear_message(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", {"simulate": {"box": -64}})
    run = snakemake(tmp_path, "--dry-run", "--cores", "1", "--configfile", str(cfg))
    assert run.returncode != 0
    err = run.stdout + run.stderr
    assert "-64 is less than the minimum of 16" in err
    assert "box" in err


@pytest.mark.parametrize("example", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example):
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in yaml.safe_load(example.read_text()).items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    jsonschema.validate(cfg, SCHEMA)


def test_partial_config_gets_defaults(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", {"simulate": {"preset": "tiny", "movies": {"enabled": False}}})
    run = snakemake(tmp_path, "--dry-run", "--cores", "1", "--configfile", str(cfg), "--printshellcmds")
    assert run.returncode == 0, run.stderr
    assert "--preset tiny" in run.stdout
    assert "--sym C1" in run.stdout  # reconstruct defaults still apply


STAGE_COMMANDS = ["simulate", "reconstruct", "fsc", "class2d", "select", "initial_model", "class3d", "consensus",
                  "refine3d"]
MISSING = [c for c in STAGE_COMMANDS if importlib.util.find_spec(f"spa.commands.{c}") is None]

# The tiny example: 600 particles, box 32 at 4 Å/px (Nyquist 8 Å), SNR 1.
# From the true poses the map reaches FSC 0.5 against the truth at ~12 Å; the
# pipeline, which finds its own poses from an ab-initio start, must come close
# to that.  A convention error gives no correlation past the first few shells.
TINY_RESOLUTION_LIMIT_A = 20.0
# the report's sections (stage folders with a figures.json) in the demo
REPORT_SECTIONS = ["summary", *(f"stage-{s}" for s in (
    "class2d", "select", "initial-model", "class3d-run1", "class3d-run2", "class3d-consensus", "refine3d",
    "fsc-halves", "fsc-truth", "fsc-ideal", "postprocess", "locres", "validate", "summary"))]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"spa commands not written yet: {MISSING}")
def test_demo_pipeline_end_to_end_on_tiny_preset(tmp_path):
    example = REPO / "config" / "examples" / "tiny.yaml"
    run = snakemake(tmp_path, "--cores", "2", "--configfile", str(example), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    results = tmp_path / yaml.safe_load(example.read_text())["results"]
    for name in ["refine3d/run_class001.mrc", "refine3d/run_half1_class001_unfil.mrc", "refine3d/run_data.star",
                 "class2d/run_classes.mrcs", "select/particles.star", "initial_model/initial_model.mrc",
                 "class3d/consensus/particles.star", "fsc/halves/fsc.star", "fsc/truth/fsc.png",
                 "logs/simulate.log", "benchmarks/refine3d.tsv"]:
        assert (results / name).is_file(), name
    summary = json.loads((results / "summary.json").read_text())
    nyquist = summary["nyquist_A"]
    truth05 = summary["truth"]["resolution_fsc05_A"]
    halves0143 = summary["halves"]["resolution_fsc0143_A"]
    assert nyquist <= truth05 <= TINY_RESOLUTION_LIMIT_A, summary
    assert nyquist <= halves0143 <= TINY_RESOLUTION_LIMIT_A, summary
    # the refined map (ab-initio start, poses found by the pipeline) comes within 25 % of
    # the map from the true poses of the same particles
    assert truth05 <= 1.25 * summary["true_poses"]["resolution_fsc05_A"], summary
    # ... made and compared alike (the same particles and halves, reconstruction, alignment)
    alike = summary["refined_vs_true_poses"]
    assert alike["reaches_true_poses"] == (alike["largest_shortfall"] <= alike["tolerance"])
    assert (results / "true_poses" / "run_class001.mrc").is_file()
    assert alike["true_poses_fsc05"].endswith("Å") or alike["true_poses_fsc05"].endswith("Å)")
    # it ends with the report: every stage's figures on one page, which a browser shows without errors
    page = (results / "report" / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<section id="([^"]+)"', page) == REPORT_SECTIONS
    assert "listed in figures.json but missing" not in page
    if shutil.which("chromium"):
        from tests.integration.browser.page_check import check_page, problems

        assert problems(check_page(results / "report" / "index.html", results / "report" / "screenshot.png")) == []

    # everything is up to date: a second invocation has nothing to do
    again = snakemake(tmp_path, "--dry-run", "--cores", "2", "--configfile", str(example))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def _user_config(tmp_path, particles, **extra) -> Path:
    tiny = yaml.safe_load((REPO / "config" / "examples" / "tiny.yaml").read_text())
    cfg = {**tiny, "results": "results_user", "input": {"particles": str(particles), **extra}}
    cfg.pop("simulate")
    return write_config(tmp_path / "user.yaml", cfg)


def test_dag_starts_from_the_users_particles(tmp_path):
    """input.particles: no simulation; without a truth no truth comparisons, with one they come back."""
    star = tmp_path / "mine.star"
    star.write_text("data_particles\nloop_\n_rlnImageName\n1@x.mrcs\n")
    run = snakemake(tmp_path, "--dry-run", "--cores", "2", "--printshellcmds", "--configfile",
                    str(_user_config(tmp_path, star)))
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout + run.stderr)
    assert "simulate" not in counts and "true_poses" not in counts and counts["fsc"] == 1
    assert f"--particles {star}" in run.stdout
    truth = tmp_path / "truth.mrc"
    truth.write_bytes(b"")
    cfg = _user_config(tmp_path, star, truth_map=str(truth), truth_particles=str(star))
    run = snakemake(tmp_path, "--dry-run", "--cores", "2", "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout + run.stderr)
    assert counts["fsc"] == 3 and counts["true_poses"] == 1 and "simulate" not in counts


def test_starting_from_micrographs_imports_them(tmp_path):
    (tmp_path / "mics").mkdir()
    (tmp_path / "mics" / "a.mrc").write_bytes(b"")
    cfg = write_config(tmp_path / "m.yaml", {"input": {"micrographs": "mics/*.mrc"}})
    run = snakemake(tmp_path, "--dry-run", "--cores", "1", "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout + run.stderr)
    assert counts["import_data"] == 1 and "motion" not in counts
    assert "results/import/micrographs.star" in run.stdout


@pytest.mark.slow
def test_pipeline_on_a_relion_particle_stack(tmp_path):
    """The user's own data: a RELION 3.1 STAR with an .mrcs stack (made here from spa's simulator and
    converted; no poses), processed end to end; the summary has no truth to compare with."""
    from spa.cli import main

    assert main(["simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "600", "--snr", "1.0",
                 "--output-dir", str(tmp_path / "sim"), "--seed", "1"]) == 0
    assert main(["convert", "--particles", str(tmp_path / "sim" / "particles.star"), "--to", "mrcs",
                 "--output-dir", str(tmp_path / "relion")]) == 0
    star = tmp_path / "relion" / "particles.star"
    assert (tmp_path / "relion" / "particles.mrcs").is_file()
    cfg = _user_config(tmp_path, star)
    run = snakemake(tmp_path, "--cores", "2", "--configfile", str(cfg), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = tmp_path / "results_user"
    assert not (results / "simulate").exists()
    summary = json.loads((results / "summary.json").read_text())
    assert "truth" not in summary and summary["halves"]["resolution_fsc0143_A"] <= TINY_RESOLUTION_LIMIT_A
    again = snakemake(tmp_path, "--dry-run", "--cores", "2", "--configfile", str(cfg))
    assert "Nothing to be done" in again.stdout + again.stderr


def _class2d_outputs(results: Path):
    """(class averages, class numbers) of a workflow's class2d stage."""
    from spa.io.mrc import read_mrc
    from spa.io.star import read_particles

    averages, _ = read_mrc(results / "class2d" / "run_classes.mrcs")
    table, _ = read_particles(results / "class2d" / "run_data.star")
    return averages, table["rlnClassNumber"].to_numpy()


@pytest.mark.slow
def test_a_rerun_after_a_change_equals_a_clean_run(tmp_path):
    """Snakemake reruns a stage whose params or inputs changed; the stage then starts afresh (its
    checkpoint belongs to another run), so the result is that of a clean run with the new config."""
    base = {"results": "res", "simulate": {"preset": "tiny", "n_particles": 300, "snr": 1.0,
                                           "movies": {"enabled": False}},
            "class2d": {"classes": 3, "iter": 3}}
    target = "res/class2d/run_data.star"
    work, clean = tmp_path / "work", tmp_path / "clean"
    work.mkdir()
    clean.mkdir()

    def run(where, cfg):
        out = snakemake(where, target, "--cores", "2", "--configfile", str(write_config(where / "c.yaml", cfg)),
                        timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout + out.stderr

    run(work, base)
    for change in ({"class2d": {"classes": 4, "iter": 3}},
                   {"simulate": {"preset": "tiny", "n_particles": 300, "snr": 0.5, "movies": {"enabled": False}}}):
        cfg = {**base, **change}
        log = run(work, cfg)
        assert "class2d" in job_counts(log)  # the changed config reran the stage
        shutil.rmtree(clean / "res", ignore_errors=True)
        run(clean, cfg)
        (a_avg, a_cls), (b_avg, b_cls) = _class2d_outputs(work / "res"), _class2d_outputs(clean / "res")
        assert np.array_equal(a_avg, b_avg) and np.array_equal(a_cls, b_cls)
        base = cfg


@pytest.mark.slow
def test_replaced_particles_rerun_from_scratch(tmp_path):
    """The user's particle STAR replaced by another set: class2d reruns and gives the new set's result."""
    from spa.cli import main

    for name, seed in (("a", 1), ("b", 2)):
        assert main(["simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "200", "--seed",
                     str(seed), "--output-dir", str(tmp_path / name)]) == 0
    star = tmp_path / "mine" / "particles.star"
    cfg = {"results": "res", "input": {"particles": str(star)}, "class2d": {"classes": 3, "iter": 2}}

    def run(where):
        out = snakemake(where, "res/class2d/run_data.star", "--cores", "2", "--configfile",
                        str(write_config(where / "c.yaml", cfg)), timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    shutil.copytree(tmp_path / "a", tmp_path / "mine")
    (tmp_path / "w").mkdir()
    run(tmp_path / "w")
    shutil.rmtree(tmp_path / "mine")
    # a newer STAR (written now, as a user replacing the file does): Snakemake reruns what depends on it
    shutil.copytree(tmp_path / "b", tmp_path / "mine", copy_function=shutil.copy)
    run(tmp_path / "w")
    (tmp_path / "c").mkdir()
    run(tmp_path / "c")
    (a_avg, a_cls), (b_avg, b_cls) = _class2d_outputs(tmp_path / "w" / "res"), _class2d_outputs(tmp_path / "c" / "res")
    assert np.array_equal(a_avg, b_avg) and np.array_equal(a_cls, b_cls)


def test_micrographs_to_particles_in_the_dag(tmp_path):
    """From movies: CTF by both estimators, their consensus, picking and extraction; with
    pick.use_for_particles the particle stages start from the extracted particles."""
    cfg = write_config(tmp_path / "movies.yaml", {"simulate": {"movies": {"enabled": True}},
                                                   "pick": {"use_for_particles": False}})
    run = snakemake(tmp_path, "--dry-run", "--cores", "2", "--printshellcmds", "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout + run.stderr)
    assert counts["ctf"] == 2 and counts["ctf_consensus"] == 1 and counts["pick"] == 1 and counts["extract"] == 1
    assert "--particles results/simulate/particles.star" in run.stdout
    cfg = write_config(tmp_path / "picked.yaml", {"simulate": {"movies": {"enabled": True}},
                                                   "pick": {"use_for_particles": True}})
    run = snakemake(tmp_path, "--dry-run", "--cores", "2", "--printshellcmds", "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr
    assert "--particles results/extract/particles.star" in run.stdout
    assert "simulate" not in job_counts(run.stdout + run.stderr)


def test_auto_templates_come_from_the_selected_classes_of_log_particles(tmp_path):
    """pick.template: auto: LoG's particles are extracted, classified and selected, and the template picker
    matches the selected class averages; its picks join the consensus and are negatives of the learned picker.
    Every select threshold the config holds reaches the command line in a form it accepts (booleans too)."""
    cfg = write_config(tmp_path / "auto.yaml", {"pick": {"template": "auto", "template_classes": 6}})
    run = snakemake(tmp_path, "--dry-run", "--cores", "2", "--printshellcmds", "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout + run.stderr)
    for rule in ("template_extract", "template_class2d", "template_select", "pick_template"):
        assert counts.get(rule) == 1, (rule, counts)
    assert "--classes 6" in run.stdout
    assert "--templates results/template_select/class_averages.star" in run.stdout
    consensus = next(line for line in run.stdout.splitlines() if "spa consensus pick" in line and "--mode at-least" in line)
    assert "results/pick_template/autopick.star" in consensus
    from spa.commands.select import _parse_thresholds

    select = next(line for line in run.stdout.splitlines() if "spa select" in line)
    _parse_thresholds([item.split()[0] for item in select.split("--threshold ")[1:]])  # raises on a bad value
