"""`spa validate` end to end on the simulated refinement: every check runs, writes its numbers and figures."""

import json

import numpy as np

from tests.validation.conftest import PIXEL


def test_validate_runs_every_check(refined, tmp_path):
    from spa.cli import main
    from spa.em.projector import Projector
    from spa.geometry.euler import euler_to_matrix
    from spa.io.mrc import write_mrcs

    classes = tmp_path / "classes.mrcs"
    write_mrcs(classes, Projector(refined.truth).project_images(
        euler_to_matrix(*refined.euler[:4].T).astype(np.float32)), PIXEL)
    out = tmp_path / "v"
    assert main(["validate", "--particles", str(refined.star), "--map", str(refined.map), "--half1",
                 str(refined.half1), "--half2", str(refined.half2), "--classes", str(classes), "--truth",
                 str(refined.truth_path), "--subset", "40", "--search-order", "1", "--final-order", "2",
                 "--reslog-steps", "2", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "validation.json").read_text())
    assert summary["angular"]["efficiency_E_od"] > 0.9
    assert summary["reprojection"]["correlation_min"] > 0.85 and not summary["reprojection"]["below_threshold"]
    assert summary["reslog"]["particles"] == [600, 300]
    assert summary["noise_substitution"]["passed"]
    assert summary["noise_particles"]["particles"] == 40
    assert summary["alignability"]["particles"] == 40
    assert summary["handedness"]["judged"] and summary["handedness"]["correct_hand"]
    assert summary["provenance"]["command"].startswith("spa validate")
    figures = json.loads((out / "figures.json").read_text())
    assert {f["file"] for f in figures} == {
        "angular_distribution.png", "reprojection_histogram.png", "reprojection_worst.png", "reslog.png",
        "noise_substitution.png", "noise_particles.png", "alignability.png"}
    assert all((out / f["file"]).stat().st_size > 0 and f["caption"] for f in figures)
    assert (out / "alignability.star").is_file()


def test_validate_refuses_a_map_check_without_a_map(refined, tmp_path):
    from spa.cli import main

    assert main(["validate", "--particles", str(refined.star), "--checks", "alignability",
                 "--output-dir", str(tmp_path / "v")]) != 0
    assert not (tmp_path / "v" / "validation.json").exists()


def test_validate_names_a_map_of_the_wrong_box(refined, tmp_path):
    from spa.cli import main
    from spa.io.mrc import write_mrc

    wrong = tmp_path / "wrong.mrc"
    write_mrc(wrong, np.zeros((20, 20, 20), np.float32), PIXEL)
    assert main(["validate", "--particles", str(refined.star), "--map", str(wrong), "--checks", "handedness",
                 "--output-dir", str(tmp_path / "v")]) != 0
    assert not (tmp_path / "v" / "validation.json").exists()
