"""The SLURM profiles cover the whole workflow: every rule that runs as a job is sized in both profiles, with
memory and time growing on each retry; GPUs only for the rules whose commands use the array backend; and
with workers elsewhere (cluster.kind slurm) every stage with Dask workers runs in a 1-core job driving
cluster.workers workers (docs/cluster.md)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = {name: yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
            for name in ("slurm", "slurm-gpu")}


def _workflow_text() -> str:
    return "".join(p.read_text() for p in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))])


def _rules() -> dict[str, str]:
    """Every rule of the workflow (also those defined under an `if`) -> the `spa` command it runs ('' if none)."""
    rules = {}
    lines = _workflow_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)rule (\w+):", line)
        if not m:
            continue
        indent, body = len(m.group(1)), []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt)
        command = re.search(r'"spa ([a-z][\w-]*)', "\n".join(body))
        rules[m.group(2)] = command.group(1) if command else ""
    return rules


def _local_rules() -> set[str]:
    """Rules named by every `localrules:` block (the Snakefile's, and those of optional rules under an `if`)."""
    blocks = re.findall(r"^[ \t]*localrules:[ \t]*\n((?:[ \t]+\w+,?[ \t]*\n)+)", _workflow_text(), flags=re.MULTILINE)
    return {name for block in blocks for name in re.findall(r"\w+", block)}


def _uses_array_backend(command: str) -> bool:
    """Whether `spa COMMAND` hands its --backend to the array code (CuPy on a GPU) rather than ignoring it."""
    from spa.cli import COMMANDS

    module = COMMANDS[command][0]
    source = (REPO / Path(*module.split("."))).with_suffix(".py").read_text()
    return bool(re.search(r"args\.backend|option\(args, \"backend\"", source))


def _grows(expr) -> bool:
    """A resource expression of the profile (e.g. `2000 * attempt`) grows with each retry."""
    values = [eval(str(expr), {}, {"attempt": attempt}) for attempt in (1, 2, 3)]  # noqa: S307 - our own profile
    return values[0] > 0 and values[0] < values[1] < values[2]


def test_the_workflow_has_the_rules_these_tests_read():
    rules, local = _rules(), _local_rules()
    assert {"class2d", "refine3d", "reconstruct", "motion", "ctf", "simulate"} <= set(rules)
    assert {"all", "select", "fsc", "cluster_config"} <= local <= set(rules)
    assert rules["initial_model"] == "initial-model" and rules["import_data"] == "import"
    # the rules whose commands take the backend: the EM stages, reconstruct (also as true_poses), motion and
    # extract (not simulate, ctf, ...)
    assert {r for r, c in rules.items() if c and _uses_array_backend(c)} == {
        "class2d", "initial_model", "class3d", "refine3d", "reconstruct", "true_poses", "motion", "extract",
        "template_extract", "template_class2d"}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_job_is_sized_and_asks_for_more_on_each_retry(name):
    """A job killed for memory or time is resubmitted (retries) with a larger request: true only where the
    profile sets the rule's memory and time as a function of `attempt` (a rule's own fixed `resources:`
    would otherwise win over default-resources)."""
    profile = PROFILES[name]
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    assert profile["rerun-incomplete"] is True and profile["latency-wait"] >= 30
    assert _grows(profile["default-resources"]["mem_mb"]) and _grows(profile["default-resources"]["runtime"])
    jobs = set(_rules()) - _local_rules()
    sized = profile["set-resources"]
    assert jobs <= set(sized), f"{name}: rules without resources: {sorted(jobs - set(sized))}"
    assert not set(sized) - jobs, f"{name}: resources for rules that are local or gone: {sorted(set(sized) - jobs)}"
    for rule in jobs:
        assert _grows(sized[rule]["mem_mb"]) and _grows(sized[rule]["runtime"]), (name, rule)


def test_gpus_only_for_the_rules_that_use_them():
    """slurm-gpu: one GPU, on the GPU partition, exactly for the rules whose commands use the array backend
    (with backend=cupy any other job would fail on a CPU node, and a GPU for simulate or ctf would be idle);
    sizes the same as profiles/slurm; the CPU profile asks for no GPU anywhere."""
    rules = _rules()
    cpu, gpu = PROFILES["slurm"]["set-resources"], PROFILES["slurm-gpu"]["set-resources"]
    for rule, res in gpu.items():
        wants = _uses_array_backend(rules[rule])
        assert (res.get("gres") == "gpu:1") == wants, rule
        assert (res.get("slurm_partition") == "gpu") == wants, rule
        assert {k: v for k, v in res.items() if k not in ("gres", "slurm_partition")} == cpu[rule], rule
    assert not any("gres" in res or "slurm_partition" in res for res in cpu.values())


def _dry_run(tmp_path, *configs) -> dict[str, str]:
    """{rule: its job block} of a dry run of the whole workflow with the given config files."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "8", "--dry-run", "--printshellcmds", "--configfile", *configs],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    blocks = re.split(r"^(?:local)?rule (\w+):\n", run.stdout, flags=re.MULTILINE)
    return dict(zip(blocks[1::2], blocks[2::2]))


def test_with_workers_on_slurm_every_dask_stage_drives_cluster_workers_from_one_core(tmp_path):
    """cluster.kind slurm, workers 4, cluster.workers 6: each rule that starts Dask workers (class2d, ...,
    true_poses, and motion and ctf on the movies path) takes 1 core and starts 6 workers from the cluster
    file — not 4 cores of its own for workers that run elsewhere."""
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"workers": 4, "cluster": {"kind": "slurm", "workers": 6}}))
    jobs = {**_dry_run(tmp_path, str(cfg)),
            **_dry_run(tmp_path, str(REPO / "config" / "examples" / "movies.yaml"), str(cfg))}
    dask = {rule: block for rule, block in jobs.items() if re.search(r"--workers \d", block)}
    remote = {rule for rule, block in dask.items() if "--config results_movies/cluster.yaml" in block
              or "--config results/cluster.yaml" in block}
    assert {"class2d", "initial_model", "class3d", "refine3d", "true_poses", "motion", "ctf"} <= remote
    for rule, block in dask.items():
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.MULTILINE)
        workers = int(re.search(r" --workers (\d+)", block).group(1))
        if rule in remote:  # drives workers elsewhere: 1 core (not shown), cluster.workers workers
            assert threads is None and workers == 6, (rule, block)
        else:  # its workers run inside its job (simulate): as many cores as workers
            assert threads and int(threads.group(1)) == workers == 4, (rule, block)
    # the same config with local workers: 4 cores and 4 workers per stage
    cfg.write_text(yaml.safe_dump({"workers": 4}))
    block = _dry_run(tmp_path, str(REPO / "config" / "examples" / "movies.yaml"), str(cfg))["motion"]
    assert re.search(r"^\s+threads: 4$", block, flags=re.MULTILINE) and " --workers 4 " in block
