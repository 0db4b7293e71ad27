"""Template picking against spa simulate's truth: templates from the true map and from templates that are not
the truth (low-passed to 25 Å, given at another pixel size as a class-average stack), LoG on the same data."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spa.fourier import fourier_resize, lowpass
from spa.io.mrc import read_mrc, write_mrcs
from spa.io.star import read_micrographs
from spa.picking.coordinates import read_coordinates
from spa.picking.log import LoGOptions, pick_log
from spa.picking.scoring import pick_scores
from spa.picking.template import CTFParams, TemplateOptions, TemplateSet, pick_template, project_map

DIAMETER = 120.0  # Å, the demo preset's


def _spa(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spa.cli", *args], capture_output=True, text=True, cwd=cwd)


def _pick(*args, cwd):
    """``spa pick`` in this process (no interpreter start-up): (exit status, stderr)."""
    from spa.cli import main

    err = io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["pick", *args])
    finally:
        os.chdir(here)
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Two demo micrographs (1024² px at 1 Å, SNR 0.05, CTF, ice, carbon, contaminants) and their truth."""
    out = tmp_path_factory.mktemp("mics")
    run = _spa("simulate", "--kind", "micrographs", "--preset", "demo", "--n-micrographs", "2", "--output-dir", str(out))
    assert run.returncode == 0, run.stderr
    mics, _ = read_micrographs(out / "truth" / "micrographs_ctf.star")
    data = []
    for row in mics.itertuples():
        image, pixel = read_mrc(out / row.rlnMicrographName)
        truth = read_coordinates(out / "truth" / "coordinates" / f"{Path(row.rlnMicrographName).stem}.star")
        data.append((image, pixel, row, truth))
    return out, data


def _f1(data, picker):
    return pick_scores([(picker(image, pixel, row), truth) for image, pixel, row, truth in data],
                       0.2 * DIAMETER / data[0][1])


def test_template_from_true_map_beats_log_and_needs_the_contrast_sign(sim):
    out, data = sim
    volume, pixel = read_mrc(out / "truth" / "class001.mrc")
    templates = TemplateSet(project_map(volume, 60), pixel)
    opts = TemplateOptions(DIAMETER)
    template = _f1(data, lambda im, p, row: pick_template(im, p, templates, opts, CTFParams.from_row(row)))
    log = _f1(data, lambda im, p, row: pick_log(im, p, LoGOptions(0.75 * DIAMETER, 1.1 * DIAMETER)))
    assert template["f1"] >= 0.9, template  # measured 1.0 (LoG 0.88)
    assert template["f1"] >= log["f1"], (template, log)
    assert template["rms_px"] < 0.1 * DIAMETER / pixel
    # the same templates on the micrograph taken as white on black: particles are anti-correlated
    flipped = TemplateOptions(DIAMETER, invert=False)
    wrong = _f1(data[:1], lambda im, p, row: pick_template(im, p, templates, flipped, CTFParams.from_row(row)))
    assert wrong["f1"] < 0.5, wrong


def test_pick_command_with_templates_that_are_not_the_truth(sim, tmp_path):
    """Projections of the true map low-passed to 25 Å, written as a class-average stack at 2 Å/px (the picker
    resamples them to the micrograph's 1 Å), a subset chosen with --template-classes."""
    out, data = sim
    volume, pixel = read_mrc(out / "truth" / "class001.mrc")
    proj = project_map(lowpass(volume, pixel, 25.0), 70)
    box = volume.shape[-1]
    stack = fourier_resize(proj, box // 2)  # 2 Å/px
    write_mrcs(tmp_path / "classes.mrcs", stack, 2 * pixel)
    keep = ",".join(str(i) for i in range(1, 71) if i % 7)  # 60 of the 70
    rc, err = _pick("--micrographs", "truth/micrographs_ctf.star", "--method", "template",
                    "--diameter", str(DIAMETER), "--templates", str(tmp_path / "classes.mrcs"), "--template-classes",
                    keep, "--output-dir", str(tmp_path / "pick"), cwd=out)  # micrograph names are relative to the run
    assert rc == 0, err
    assert (tmp_path / "pick" / "picks.png").stat().st_size > 0
    pairs = [(read_coordinates(tmp_path / "pick" / "coordinates" / f"{Path(row.rlnMicrographName).stem}_autopick.star"),
              truth) for _, _, row, truth in data]
    scores = pick_scores(pairs, 0.2 * DIAMETER / pixel)
    assert scores["f1"] >= 0.9, scores
    picks = pairs[0][0]
    assert np.all(np.diff(picks["rlnAutopickFigureOfMerit"]) <= 0) and picks["rlnAutopickFigureOfMerit"].min() >= 4.0
    assert picks["rlnSpaTemplate"].between(1, 60).all()
    # errors name the file: no CTF columns, a class number the stack does not hold
    rc, err = _pick("--micrographs", "micrographs.star", "--method", "template", "--diameter", "120",
                    "--templates", str(tmp_path / "classes.mrcs"), "--output-dir", str(tmp_path / "bad"), cwd=out)
    assert rc == 1 and "rlnDefocusU" in err and "micrographs.star" in err
    rc, err = _pick("--micrographs", "truth/micrographs_ctf.star", "--method", "template", "--diameter", "120",
                    "--templates", str(tmp_path / "classes.mrcs"), "--template-classes", "71",
                    "--output-dir", str(tmp_path / "bad"), cwd=out)
    assert rc == 1 and "classes.mrcs" in err
    # a class-averages STAR (spa select's, RELION's Select): only its rlnSelected rows are templates
    import pandas as pd

    from spa.io.star import write_star

    selected = [1 if i % 7 else 0 for i in range(1, 71)]
    table = pd.DataFrame({"rlnReferenceImage": [f"{i:06d}@classes.mrcs" for i in range(1, 71)],
                          "rlnClassNumber": range(1, 71), "rlnSelected": selected})
    write_star(tmp_path / "class_averages.star", {"model_classes": table})
    rc, err = _pick("--micrographs", "truth/micrographs_ctf.star", "--method", "template", "--diameter",
                    str(DIAMETER), "--templates", str(tmp_path / "class_averages.star"),
                    "--output-dir", str(tmp_path / "star"), cwd=out)
    assert rc == 0, err
    from_star = read_coordinates(tmp_path / "star" / "coordinates" / "mic0001_autopick.star")
    assert len(from_star) == len(picks) and np.allclose(from_star.rlnCoordinateX, picks.rlnCoordinateX)
    write_star(tmp_path / "none.star", {"model_classes": table.assign(rlnSelected=0)})
    rc, err = _pick("--micrographs", "truth/micrographs_ctf.star", "--method", "template", "--diameter", "120",
                    "--templates", str(tmp_path / "none.star"), "--output-dir", str(tmp_path / "bad"), cwd=out)
    assert rc == 1 and "none.star" in err and "selected" in err


def test_log_accepts_a_single_diameter(sim, tmp_path):
    out, data = sim
    rc, err = _pick("--micrographs", "micrographs.star", "--diameter", "120", "--output-dir", str(tmp_path / "log"),
                    cwd=out)
    assert rc == 0, err
    picks = read_coordinates(tmp_path / "log" / "coordinates" / "mic0001_autopick.star")
    assert pick_scores([(picks, data[0][3])], 24.0)["recall"] >= 0.8
