"""`spa report` on a small results folder: what the summary says, the order of the stages, absent stages,
a broken figure list, the page being self-contained, and the surface view's level."""

from __future__ import annotations

import builtins
import json
import re

import numpy as np
import pytest

from spa import __version__
from spa.cli import main
from spa.report.collect import collect_sections
from spa.report.facts import count_rows
from spa.report.mapview import surface_level, write_surface
from tests.report.fake_results import COUNTS, make_results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(results):
    config = results.parent / "config.yaml"
    config.write_text("seed: 7\nsimulate:\n  seed: 3\n")
    assert main(["report", "--results", str(results), "--config", str(config)]) == 0
    return (results / "report" / "index.html").read_text(encoding="utf-8")


def _row(page: str, label: str) -> str:
    """The text of the table row whose first cell is ``label``."""
    found = re.search(r"<tr><td>" + re.escape(label) + r"</td>(.*?)</tr>", page)
    assert found, label
    return re.sub(r"<[^>]+>", " ", found.group(1))


def test_summary_has_the_counts_resolution_bfactor_rejections_and_seeds(results, page):
    assert "40" in _row(page, "particles simulated") and "31" in _row(page, "particles in the final refinement")
    assert count_rows(results / "select" / "particles.star", "particles") == COUNTS["select/particles.star"]
    # the FSC of identical maps never drops below 0.143: a bound, not a number
    assert "≥ Nyquist (8.00 Å)" in _row(page, "gold-standard FSC 0.143 (half maps, unmasked)")
    post = json.loads((results / "postprocess" / "postprocess.json").read_text())
    assert f"{post['bfactor_used_A2']:.0f} Å²" in _row(page, "B-factor used for sharpening")
    assert f"{post['resolution_A']:.2f} Å" in _row(page, "FSC 0.143 masked, corrected (postprocess)")
    assert "class 3 (9): contrast 1.2 &lt; 0.3 × 9.9" in _row(page, "2D class selection")
    assert "7" in _row(page, "processing seed") and "3" in _row(page, "simulation seed")
    assert __version__ in _row(page, "spa") and np.__version__ in _row(page, "numpy")


def test_stages_in_pipeline_order_with_a_problem_instead_of_a_broken_image(results, page):
    sections = collect_sections(results, exclude=[results / "report"])
    assert [s.folder for s in sections] == ["class2d", "fsc/halves", "postprocess", "validate"]
    assert sections[-1].figures == [] and "missing or empty" in sections[-1].problems[0]
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == ["summary", "stage-class2d", "stage-fsc-halves", "stage-postprocess", "stage-validate"]
    positions = [page.index(f'id="{a}"') for a in ids]
    assert positions == sorted(positions)
    assert "reslog.png: listed in figures.json but missing or empty" in page


def test_page_is_self_contained(results, page):
    images = re.findall(r'<img src="([^"]+)"', page)
    # class2d 1, fsc 1, postprocess 2, and the map's sections and surface
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert (results / "report" / "map_slices.png").stat().st_size > 1000


def test_absent_stages_are_left_out(tmp_path):
    results = make_results(tmp_path, postprocess=False)
    assert main(["report", "--results", str(results), "--output-dir", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "B-factor used for sharpening" not in page and 'id="stage-postprocess"' not in page
    assert 'id="stage-class2d"' in page


def test_a_missing_results_folder_is_one_clear_error(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out")]) == 1
    assert "results folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.html").exists()


def _sphere(box=40, radius=10.0, noise=0.1, seed=0):
    z, y, x = np.indices((box,) * 3) - box // 2
    inside = np.sqrt(x * x + y * y + z * z) <= radius
    noisy = inside.astype(np.float32) + np.random.default_rng(seed).normal(0, noise, (box,) * 3).astype(np.float32)
    return noisy, inside


def test_surface_level_encloses_the_molecule_not_the_noise():
    vol, inside = _sphere()
    level = surface_level(vol)
    assert 0.3 < level < 0.7  # between solvent (0) and molecule (1), clear of both noise bands
    assert abs((vol > level).sum() / inside.sum() - 1) < 0.05


def test_surface_without_scikit_image_falls_back_to_a_projection(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name.startswith("skimage"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    vol, _ = _sphere(box=24, radius=6)
    entry = write_surface(tmp_path / "s.png", vol, 2.0, "sphere")
    assert "depth-shaded projection" in entry["caption"] and (tmp_path / "s.png").stat().st_size > 1000


def test_the_like_with_like_comparison_is_a_summary_row(tmp_path):
    from spa.report.facts import resolutions

    alike = {"refined_fsc05": "≥ Nyquist (4.00 Å)", "true_poses_fsc05": "≥ Nyquist (4.00 Å)",
             "largest_shortfall": 0.1253, "largest_shortfall_at_A": 4.36, "mean_shortfall": 0.0468,
             "tolerance": 0.05, "reaches_true_poses": False}
    (tmp_path / "summary.json").write_text(json.dumps({"nyquist_A": 4.0, "refined_vs_true_poses": alike}))
    rows = dict(resolutions(tmp_path))
    assert rows["refined map vs the true-pose map made alike"].startswith("falls short: largest FSC shortfall 0.125 at 4.36 Å")
