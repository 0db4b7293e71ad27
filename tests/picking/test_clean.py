"""Micrograph cleaning against the simulator's truth regions (carbon 1, contaminant 2, aggregate 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spa.cli import main as spa
from spa.io.mrc import read_mrc, write_mrc
from spa.io.star import read_star
from spa.picking.clean import CleanOptions, clean_micrograph, drop_masked
from spa.picking.coordinates import read_coordinates
from spa.picking.log import LoGOptions, pick_log
from spa.simulate import MicrographSpec, simulate_micrographs

DIAMETER = 90.0  # Å, the tiny preset's particle
TINY = dict(size=512, pixel_size=1.5, diameter=DIAMETER)


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """Three micrographs with carbon, contaminants and aggregates; LoG picks; spa clean."""
    out = tmp_path_factory.mktemp("clean")
    spec = MicrographSpec(n=3, carbon_fraction=1.0, contaminants=1.5, aggregates=2.0, **TINY)
    star = simulate_micrographs(out / "sim", spec, seed=2)
    # LoG without its shape tests, so that carbon and contaminants are picked and cleaning has them to remove
    assert spa(["pick", "--micrographs", str(star), "--diameter-min", "70", "--diameter-max", "100",
                "--min-roundness", "0", "--max-energy-ratio", "0", "--output-dir", str(out / "pick")]) == 0
    assert spa(["clean", "--micrographs", str(star), "--coordinates", str(out / "pick" / "autopick.star"),
                "--diameter", str(DIAMETER), "--output-dir", str(out / "clean")]) == 0
    return out


def _at(labels, table):
    r = np.clip(np.rint(table.rlnCoordinateY.to_numpy(float)).astype(int), 0, labels.shape[0] - 1)
    c = np.clip(np.rint(table.rlnCoordinateX.to_numpy(float)).astype(int), 0, labels.shape[1] - 1)
    return labels[r, c]


def test_bad_regions_removed_and_true_particles_kept(cleaned):
    from scipy import ndimage

    counts = dict(bad=0, bad_dropped=0, agg=0, agg_caught=0, true=0, true_lost=0)
    for mask_file in sorted((cleaned / "clean" / "masks").glob("*.mrc")):
        stem = mask_file.stem
        truth = read_mrc(cleaned / "sim" / "truth" / "regions" / f"{stem}.mrc")[0].squeeze().astype(int)
        mask = read_mrc(mask_file)[0].squeeze().astype(int)
        picks = read_coordinates(cleaned / "pick" / "coordinates" / f"{stem}_autopick.star")
        kept = read_coordinates(cleaned / "clean" / "coordinates" / f"{stem}_autopick.star")
        assert len(kept) + len(read_star(cleaned / "clean" / "dropped" / f"{stem}_dropped.star")[""]) == len(picks)
        region, masked = _at(truth, picks), _at(mask, picks) > 0
        bad = (region == 1) | (region == 2)
        counts["bad"] += int(bad.sum())
        counts["bad_dropped"] += int((bad & masked).sum())
        clumps, n = ndimage.label(truth == 3)  # an aggregate is caught when most of it is masked
        counts["agg"] += n
        counts["agg_caught"] += sum(float((mask[clumps == k] > 0).mean()) >= 0.5 for k in range(1, n + 1))
        true = read_coordinates(cleaned / "sim" / "truth" / "coordinates" / f"{stem}.star")
        counts["true"] += len(true)
        counts["true_lost"] += int((_at(mask, true) > 0).sum())
    assert counts["bad"] >= 10 and counts["agg"] >= 3 and counts["true"] >= 30, counts
    assert counts["bad_dropped"] >= 0.9 * counts["bad"], counts  # carbon and contaminant picks removed
    assert counts["agg_caught"] >= 0.6 * counts["agg"], counts  # aggregates caught
    assert counts["true_lost"] <= 0.05 * counts["true"], counts  # particles in clean ice kept


def test_outputs_summary_figure_and_resume(cleaned, capsys):
    out = cleaned / "clean"
    table = read_star(out / "clean_summary.star")["micrographs"]
    assert len(table) == 3 and (table.spaPicksKept <= table.spaPicksIn).all()
    assert (table.spaArea_carbon > 0.05).all()  # every micrograph shows a carbon edge
    index = read_star(out / "autopick.star")["coordinate_files"]
    assert all(Path(f).exists() for f in index.rlnMicrographCoordinates)
    assert json.loads((out / "figures.json").read_text())[0]["file"] == "clean.png"
    assert (out / "clean.png").stat().st_size > 0
    before = {p: p.stat().st_mtime_ns for p in (out / "coordinates").glob("*.star")}
    capsys.readouterr()
    assert spa(["clean", "--micrographs", str(cleaned / "sim" / "micrographs.star"), "--coordinates",
                str(cleaned / "pick" / "autopick.star"), "--diameter", str(DIAMETER), "--output-dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["picks_in"] == int(table.spaPicksIn.sum())
    assert summary["fraction_dropped"] == pytest.approx(1 - table.spaPicksKept.sum() / table.spaPicksIn.sum(), abs=1e-3)
    assert {p: p.stat().st_mtime_ns for p in (out / "coordinates").glob("*.star")} == before  # nothing redone


def test_clean_micrograph_drops_nothing(tmp_path):
    spec = MicrographSpec(n=1, carbon_fraction=0.0, contaminants=0.0, **TINY)
    simulate_micrographs(tmp_path, spec, seed=5)
    image, pixel = read_mrc(tmp_path / "micrographs" / "mic0001.mrc")
    image = image.squeeze()
    picks = pick_log(image, pixel, LoGOptions(70.0, 100.0))
    labels, info = clean_micrograph(image, pixel, CleanOptions(DIAMETER))
    kept, dropped = drop_masked(picks, labels)
    assert len(picks) >= 10 and len(dropped) == 0, info
    assert info["area_masked"] == 0.0


def test_bad_input_names_the_file(cleaned, tmp_path, capsys):
    star = cleaned / "sim" / "micrographs.star"
    # coordinates of a micrograph the STAR does not list
    index = tmp_path / "autopick.star"
    text = (cleaned / "pick" / "autopick.star").read_text().replace("micrographs/mic0003.mrc", "micrographs/other.mrc")
    index.write_text(text)
    assert spa(["clean", "--micrographs", str(star), "--coordinates", str(index), "--diameter", "90",
                "--output-dir", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert str(index) in err and "other.mrc" in err
    # a micrograph that is a stack, not one image
    mics = tmp_path / "mics"
    (mics / "micrographs").mkdir(parents=True)
    write_mrc(mics / "micrographs" / "mic0001.mrc", np.ones((2, 64, 64), np.float32), 1.5, None)
    (mics / "micrographs.star").write_text(star.read_text())
    one = tmp_path / "one.star"
    one.write_text("\n".join(line for line in (cleaned / "pick" / "autopick.star").read_text().splitlines()
                             if "mic0002" not in line and "mic0003" not in line) + "\n")
    assert spa(["clean", "--micrographs", str(mics / "micrographs.star"), "--coordinates", str(one),
                "--diameter", "90", "--output-dir", str(tmp_path / "b")]) == 1
    assert "mic0001.mrc" in capsys.readouterr().err
    # picks beyond the micrograph (coordinates of a larger one)
    write_mrc(mics / "micrographs" / "mic0001.mrc", np.random.default_rng(0).poisson(50, (128, 128)).astype(np.float32),
              1.5, None)
    assert spa(["clean", "--micrographs", str(mics / "micrographs.star"), "--coordinates", str(one),
                "--diameter", "90", "--output-dir", str(tmp_path / "c")]) == 1
    assert "mic0001_autopick.star" in capsys.readouterr().err
