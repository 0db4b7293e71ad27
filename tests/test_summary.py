"""workflow/scripts/summary.py: the refined map against the true-pose map, both against the truth."""

import importlib.util
from pathlib import Path

import numpy as np

from spa.em.fsc import fsc_table
from spa.io.star import write_star

SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "summary.py"


def _summary_module():
    spec = importlib.util.spec_from_file_location("summary_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fsc_star(path, curve, box=48, pixel=2.0):
    write_star(path, {"general": {"rlnFinalResolution": 0.0, "rlnSpaResolutionFsc05": 0.0},
                      "fsc": fsc_table(curve, box, pixel)})
    return str(path)


def test_comparison_reads_nyquist_as_a_bound_and_finds_the_shortfall(tmp_path):
    summary = _summary_module()
    shells = np.arange(25)
    ideal = np.clip(1.0 - 0.015 * shells, 0, 1)  # never below 0.5: '≥ Nyquist'
    close = ideal - 0.02  # within the tolerance everywhere
    short = ideal.copy()
    short[16:] -= 0.3  # falls short beyond shell 15 (6 Å at 48 px × 2 Å)
    a = summary.compare_with_true_poses(_fsc_star(tmp_path / "close.star", close), _fsc_star(tmp_path / "i.star", ideal))
    assert a["true_poses_fsc05"] == "≥ Nyquist (4.00 Å)" and a["refined_fsc05"].startswith("≥ Nyquist")
    assert a["reaches_true_poses"] and abs(a["largest_shortfall"] - 0.02) < 1e-6
    b = summary.compare_with_true_poses(_fsc_star(tmp_path / "short.star", short), _fsc_star(tmp_path / "i.star", ideal))
    assert not b["reaches_true_poses"] and abs(b["largest_shortfall"] - 0.3) < 1e-6
    assert b["largest_shortfall_at_A"] == 6.0 and not b["refined_fsc05"].startswith("≥")
