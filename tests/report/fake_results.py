"""A small results folder for the report's tests, made in seconds: a real 32-voxel map and half maps, real
`spa fsc` and `spa postprocess` outputs on them, a class gallery from the real gallery code, particle STAR
files of known lengths, the selection summaries, and one stage whose figures.json lists a missing file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spa.cli import main
from spa.class2d.gallery import write_gallery
from spa.io.mrc import write_mrc
from spa.io.star import write_particles
from spa.plots import write_figures_index
from tests.conftest import blob_volume

PIXEL = 4.0  # Å: Nyquist 8 Å
BOX = 32
COUNTS = {"simulate/particles.star": 40, "class2d/run_data.star": 40, "select/particles.star": 31,
          "refine3d/run_data.star": 31}


def _particles(path: Path, n: int) -> None:
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [PIXEL], "rlnImageSize": [BOX], "rlnImageDimensionality": [2],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
                          "rlnOpticsGroup": 1, "rlnClassNumber": 1 + np.arange(n) % 3})
    write_particles(path, table, optics)


def make_results(root: Path, *, postprocess: bool = True) -> Path:
    """The results folder ``root/results`` (see the module docstring); returns its path."""
    results = root / "results"
    rng = np.random.default_rng(4)
    truth = blob_volume(BOX, seed=3)
    refine = results / "refine3d"
    refine.mkdir(parents=True)
    halves = []
    for i in (1, 2):
        halves.append(refine / f"run_half{i}_class001_unfil.mrc")
        write_mrc(halves[-1], truth + rng.normal(0, 0.05 * truth.std(), truth.shape).astype(np.float32), PIXEL)
    write_mrc(refine / "run_class001.mrc", truth, PIXEL)
    for rel, n in COUNTS.items():
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        _particles(results / rel, n)
    # identical maps: the FSC never drops, the resolution is "≥ Nyquist"
    shutil.copy(refine / "run_class001.mrc", root / "copy.mrc")
    assert main(["fsc", "--map1", str(refine / "run_class001.mrc"), "--map2", str(root / "copy.mrc"),
                 "--output-dir", str(results / "fsc" / "halves"), "--title", "gold-standard half maps"]) == 0
    if postprocess:
        mask = results / "postprocess" / "mask.mrc"
        assert main(["mask", "--map", str(refine / "run_class001.mrc"), "--output", str(mask), "--lowpass", "15",
                     "--extend", "4", "--soft-edge", "6"]) == 0
        assert main(["postprocess", "--half1", str(halves[0]), "--half2", str(halves[1]), "--mask", str(mask),
                     "--output-dir", str(results / "postprocess")]) == 0
    images = np.stack([truth.sum(axis=a) for a in range(3)])
    write_gallery(results / "class2d" / "run_classes.png", images, [0.5, 0.3, 0.2], [12.0, 14.0, 30.0])
    write_figures_index(results / "class2d", [{"file": "run_classes.png", "title": "2D class averages",
                                               "caption": "Three projections of the test map."}])
    (results / "select" / "selection.json").write_text(json.dumps({
        "particles_in": 40, "particles_kept": 31, "classes": 3, "classes_kept": [1, 2],
        "classes_dropped": [{"class": 3, "particles": 9, "reason": "contrast 1.2 < 0.3 × 9.9 (best classes)"}],
        "particles_in_dropped_classes": 9, "noise_like_removed": 0, "max_noise_pvalue": 0.05,
        "duplicates_removed": 0}))
    # a stage whose figures.json lists a file that is not there
    broken = results / "validate"
    broken.mkdir()
    write_figures_index(broken, [{"file": "reslog.png", "title": "ResLog", "caption": "never drawn"}])
    return results
