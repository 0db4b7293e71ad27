"""`spa consensus classes|poses` end to end through spa.cli.main, and its errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spa.cli import main
from spa.geometry import matrix_to_euler, random_rotations
from spa.geometry.symmetry import axis_rotation
from spa.io.star import read_particles, read_star, write_particles
from spa.provenance import read_record
from tests.conftest import listed_figures

PIXEL = 1.5  # Å


def _optics():
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [PIXEL],
            "rlnImageSize": [64],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )


def _names(n):
    return [f"{i + 1:06d}@Extract/particles.mrcs" for i in range(n)]


def _write(path, columns: dict, order=None):
    df = pd.DataFrame(columns)
    if order is not None:
        df = df.iloc[order].reset_index(drop=True)
    df["rlnOpticsGroup"] = 1
    write_particles(path, df, _optics())
    return path


def _class_runs(tmp_path, n=1200, k=3, flip=0.05, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    paths = []
    for r in range(3):
        perm = rng.permutation(k) + 1
        lab = perm[truth].copy()
        f = rng.random(n) < flip
        lab[f] = perm[(truth[f] + rng.integers(1, k, f.sum())) % k]
        cols = {"rlnImageName": _names(n), "rlnClassNumber": lab, "rlnDefocusU": np.full(n, 15000.0)}
        # later runs list the particles in another order: matching must be by name
        paths.append(_write(tmp_path / f"run{r + 1}" / "run_data.star", cols, order=None if r == 0 else rng.permutation(n)))
    return paths, truth


def test_classes_round_trip(tmp_path, capsys):
    paths, truth = _class_runs(tmp_path)
    out = tmp_path / "cons"
    rc = main(["consensus", "classes", "--runs", *map(str, paths), "--output-dir", str(out), "--seed", "3"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("particles.star", "consensus_classes.star", "consensus_classes.json", "consensus_classes.png"):
        assert (out / name).stat().st_size > 0
    assert listed_figures(out) == ["consensus_classes.png"]
    kept, optics = read_particles(out / "particles.star")
    assert len(kept) == printed["n_kept"] and 0.8 < len(kept) / 1200 < 0.9  # ≈ 0.95³
    assert optics["rlnImagePixelSize"].iloc[0] == PIXEL
    # class numbers are run 1's: check them against run 1 and the truth
    run1, _ = read_particles(paths[0])
    lab1 = dict(zip(run1.rlnImageName, run1.rlnClassNumber))
    assert all(lab1[nm] == c for nm, c in zip(kept.rlnImageName, kept.rlnClassNumber))
    index = kept.rlnImageName.str.split("@").str[0].astype(int).to_numpy() - 1
    by_class = pd.crosstab(kept.rlnClassNumber.to_numpy(), truth[index])
    assert by_class.max(axis=1).sum() / len(kept) >= 0.98
    np.testing.assert_allclose(kept.rlnSpaClassAgreement, 1.0)
    assert kept.rlnSpaClassStability.between(0.8, 1.0).all()

    report = read_star(out / "consensus_classes.star")
    table = report["consensus_classes"]
    assert table.rlnSpaIntersectionSize.sum() == len(kept)
    assert list(table.columns[1:4]) == ["rlnSpaClassSizeRun001", "rlnSpaClassSizeRun002", "rlnSpaClassSizeRun003"]
    assert (table.rlnSpaIntersectionSize > 5 * table.rlnSpaChanceIntersection).all()
    assert len(report["consensus_ari"]) == 3
    summary = json.loads((out / "consensus_classes.json").read_text())
    assert summary["n_kept"] == len(kept) and len(summary["classes"]) == 3
    assert summary["mean_adjusted_rand_index"] > 0.7
    rec = read_record(out / "particles.star")
    assert rec["seed"] == 3 and "consensus classes" in rec["command"]

    # two of three runs suffice: more particles kept
    out2 = tmp_path / "cons2"
    assert main(["consensus", "classes", "--runs", *map(str, paths), "--output-dir", str(out2), "--min-agreement", "2"]) == 0
    assert len(read_particles(out2 / "particles.star")[0]) > len(kept)


def _pose_runs(tmp_path, n=600, seed=0, relion30=False):
    rng = np.random.default_rng(seed)
    Ra = random_rotations(n, rng)
    G = axis_rotation((0.3, -1.0, 0.2), 25.0)
    noise = np.stack([axis_rotation(rng.normal(size=3), abs(rng.normal(0, 0.8))) for _ in range(n)])
    Rb = Ra @ noise @ G.T
    bad = np.arange(n) < n // 10
    Rb[bad] = random_rotations(bad.sum(), rng)
    sa = rng.normal(0, 4, (n, 2)) * PIXEL  # Å
    sb = sa + rng.normal(0, 0.3, (n, 2)) * PIXEL
    sb[n // 10 : n // 10 + 20, 0] += 6 * PIXEL  # 20 particles 6 px off
    paths = []
    for tag, R, s in (("A", Ra, sa), ("B", Rb, sb)):
        rot, tilt, psi = matrix_to_euler(R)
        cols = {"rlnImageName": _names(n), "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                "rlnOriginXAngst": s[:, 0], "rlnOriginYAngst": s[:, 1]}
        path = tmp_path / tag / "run_data.star"
        if relion30 and tag == "B":
            # RELION 3.0: one table, optics per row, origins in pixels
            path.parent.mkdir(parents=True)
            lines = ["", "data_", "", "loop_"]
            labels = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
                      "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnDetectorPixelSize", "rlnMagnification"]
            lines += [f"_{lab} #{i + 1}" for i, lab in enumerate(labels)]
            for i in range(n):
                vals = " ".join(repr(float(v)) for v in (rot[i], tilt[i], psi[i], s[i, 0] / PIXEL, s[i, 1] / PIXEL))
                lines.append(f"{cols['rlnImageName'][i]} {vals} 300 2.7 0.1 15.0 100000")
            path.write_text("\n".join(lines) + "\n")
        else:
            _write(path, cols)
        paths.append(path)
    return paths, G, bad


@pytest.mark.parametrize("relion30", [False, True])
def test_poses_round_trip(tmp_path, capsys, relion30):
    paths, G, bad = _pose_runs(tmp_path, relion30=relion30)
    out = tmp_path / "cons"
    rc = main(["consensus", "poses", "--runs", *map(str, paths), "--output-dir", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["global_rotation_angle_deg"] == pytest.approx(25.0, abs=0.3)
    kept, _ = read_particles(out / "particles.star")
    kept_idx = kept.rlnImageName.str.split("@").str[0].astype(int).to_numpy() - 1
    n = len(bad)
    shifted = np.zeros(n, bool)
    shifted[n // 10 : n // 10 + 20] = True
    good = ~bad & ~shifted
    is_kept = np.zeros(n, bool)
    is_kept[kept_idx] = True
    assert not is_kept[bad].any() and not is_kept[shifted].any()
    assert is_kept[good].mean() >= 0.95
    # the kept particles carry run A's poses
    a, _ = read_particles(paths[0])
    np.testing.assert_allclose(kept.rlnAngleTilt.to_numpy(), a.rlnAngleTilt.to_numpy()[kept_idx])
    table = read_star(out / "consensus_poses.star")["consensus_poses"]
    assert len(table) == n and table.rlnSpaConsensusKept.sum() == len(kept)
    np.testing.assert_allclose(table.rlnSpaShiftDifference.to_numpy()[shifted], 6.0, atol=1.5)
    summary = json.loads((out / "consensus_poses.json").read_text())
    assert summary["median_angular_difference_deg"] < 2.0 and summary["p90_angular_difference_deg"] > 2.5
    assert np.allclose(np.array(summary["global_rotation"]), G, atol=0.01)
    assert (out / "consensus_poses.png").stat().st_size > 0
    assert listed_figures(out) == ["consensus_poses.png"]

    # a looser shift limit in Å (6.8 px) keeps the shifted particles too
    out2 = tmp_path / "cons2"
    assert main(["consensus", "poses", "--runs", *map(str, paths), "--output-dir", str(out2),
                 "--max-shift-angstrom", str(6.8 * PIXEL)]) == 0
    kept2, _ = read_particles(out2 / "particles.star")
    assert len(kept2) > len(kept) + 15


def test_poses_symmetry_cli(tmp_path):
    rng = np.random.default_rng(4)
    n = 300
    Ra = random_rotations(n, rng)
    from spa.geometry import symmetry_matrices

    mats = symmetry_matrices("D2")
    Rb = Ra @ mats[rng.integers(0, 4, n)]
    paths = []
    for tag, R in (("A", Ra), ("B", Rb)):
        rot, tilt, psi = matrix_to_euler(R)
        zeros = np.zeros(n)
        paths.append(_write(tmp_path / tag / "d.star", {"rlnImageName": _names(n), "rlnAngleRot": rot,
                     "rlnAngleTilt": tilt, "rlnAnglePsi": psi, "rlnOriginXAngst": zeros, "rlnOriginYAngst": zeros}))
    for sym, expect in (("D2", n), ("C1", None)):
        out = tmp_path / sym
        assert main(["consensus", "poses", "--runs", *map(str, paths), "--output-dir", str(out), "--sym", sym, "--no-align"]) == 0
        got = len(read_particles(out / "particles.star")[0]) if (out / "particles.star").exists() else 0
        if expect is not None:
            assert got == expect
        else:
            assert got < 0.4 * n


def _err(capsys):
    return capsys.readouterr().err


def test_bad_inputs(tmp_path, capsys):
    paths, _ = _class_runs(tmp_path, n=100)
    out = str(tmp_path / "o")
    # one run only
    assert main(["consensus", "classes", "--runs", str(paths[0]), "--output-dir", out]) == 1
    assert str(paths[0]) in _err(capsys)
    # a different particle set
    df, optics = read_particles(paths[1])
    other = tmp_path / "other.star"
    write_particles(other, df.iloc[:-3], optics)
    assert main(["consensus", "classes", "--runs", str(paths[0]), str(other), "--output-dir", out]) == 1
    err = _err(capsys)
    assert str(other) in err and "same particle set" in err
    # duplicate names
    dup = tmp_path / "dup.star"
    d = df.copy()
    d.loc[1, "rlnImageName"] = d.loc[0, "rlnImageName"]
    write_particles(dup, d, optics)
    assert main(["consensus", "classes", "--runs", str(paths[0]), str(dup), "--output-dir", out]) == 1
    assert str(dup) in _err(capsys)
    # no class numbers
    nocls = tmp_path / "nocls.star"
    write_particles(nocls, df.drop(columns="rlnClassNumber"), optics)
    assert main(["consensus", "classes", "--runs", str(paths[0]), str(nocls), "--output-dir", out]) == 1
    err = _err(capsys)
    assert str(nocls) in err and "rlnClassNumber" in err
    # a posterior threshold on runs without class posteriors
    assert main(["consensus", "classes", "--runs", str(paths[0]), str(paths[1]), "--output-dir", out,
                 "--min-class-posterior", "0.9"]) == 1
    err = _err(capsys)
    assert str(paths[0]) in err and "rlnSpaClassPosterior" in err
    assert main(["consensus", "classes", "--runs", str(paths[0]), str(paths[1]), "--output-dir", out,
                 "--min-class-posterior", "1.5"]) == 1
    assert "min-class-posterior" in _err(capsys)
    # poses: no pose columns, and three runs
    assert main(["consensus", "poses", "--runs", str(paths[0]), str(paths[1]), "--output-dir", out]) == 1
    err = _err(capsys)
    assert str(paths[0]) in err and "rlnAngleRot" in err
    assert main(["consensus", "poses", "--runs", *map(str, paths), "--output-dir", out]) == 1
    assert str(paths[2]) in _err(capsys)
    # a missing file
    assert main(["consensus", "poses", "--runs", str(tmp_path / "nope.star"), str(paths[0]), "--output-dir", out]) == 1
    assert "nope.star" in _err(capsys)
    # a bad symmetry name
    assert main(["consensus", "poses", "--runs", str(paths[0]), str(paths[1]), "--output-dir", out, "--sym", "Q7"]) == 1
    assert "Q7" in _err(capsys)
    # nothing was written at a final path
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
