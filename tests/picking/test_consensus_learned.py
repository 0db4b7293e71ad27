"""Consensus of pickers and the learned picker, against the truth of simulated micrographs (match radius
0.2 × diameter, as tests/picking/test_picking.py scores the LoG picker)."""

import json
import numpy as np
import pandas as pd
import pytest

from spa.io.mrc import read_mrc
from spa.picking.consensus import agreement_counts, merge_picks, required_votes
from spa.picking.coordinates import match_to_truth, read_coordinates, write_coordinate_index, write_coordinates
from spa.picking.learned import LearnedOptions, feature_maps, pick_learned, train_scorer
from spa.picking.log import LoGOptions, pick_log
from spa.simulate import MicrographSpec, simulate_micrographs

DIAMETER = 120.0
RADIUS = 0.2 * DIAMETER  # px (1 Å/px): the match radius


def _xy(table):
    return pd.DataFrame({"rlnCoordinateX": table[:, 0], "rlnCoordinateY": table[:, 1]})


def _score(picks: dict, truth: dict) -> tuple[float, float, float]:
    """(precision, recall, F1) over all micrographs."""
    n = np.zeros(3)
    for name, t in truth.items():
        m = match_to_truth(picks[name], t, RADIUS)
        n += [m["picks"], m["true"], m["matched"]]
    p, r = n[2] / max(n[0], 1), n[2] / n[1]
    return p, r, 2 * p * r / max(p + r, 1e-12)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Two demo-size micrographs (1024², 1 Å/px, 120 Å particles) of clean ice (carbon and contaminants are
    the cleaning step's, not the pickers'), each picker's picks, and the learned picker trained on AND."""
    out = tmp_path_factory.mktemp("sim")
    spec = MicrographSpec(n=2, size=1024, pixel_size=1.0, diameter=DIAMETER, carbon_fraction=0.0, contaminants=0.0)
    star = simulate_micrographs(out, spec, 11)
    images, truth = {}, {}
    for path in sorted((out / "micrographs").glob("*.mrc")):
        image, _ = read_mrc(path)
        images[path.stem] = image.squeeze()
        truth[path.stem] = read_coordinates(out / "truth" / "coordinates" / f"{path.stem}.star")
    pickers = {"log_a": LoGOptions(90, 130, threshold=2.0), "log_b": LoGOptions(100, 140, threshold=3.0),
               "sloppy_small": LoGOptions(60, 100, threshold=1.0), "sloppy_mid": LoGOptions(80, 120, threshold=0.5)}
    picks = {label: {n: pick_log(im, 1.0, o) for n, im in images.items()} for label, o in pickers.items()}
    agreed = {n: merge_picks([picks["log_a"][n], picks["log_b"][n]], 0.3 * DIAMETER) for n in images}
    agreed = {n: m[m.rlnSpaPickerVotes == 2] for n, m in agreed.items()}
    opts = LearnedOptions(DIAMETER)
    scorer, info = train_scorer(lambda n: (images[n], 1.0), agreed, {}, opts, rounds=1)
    picks["learned"] = {n: pick_learned(scorer, *feature_maps(im, 1.0, opts), 1.0) for n, im in images.items()}
    return {"dir": out, "star": star, "images": images, "truth": truth, "picks": picks, "agreed": agreed}


def test_merge_modes_on_known_picks():
    a = _xy(np.array([[100.0, 100.0], [300.0, 300.0], [500.0, 500.0]]))
    b = _xy(np.array([[104.0, 100.0], [700.0, 700.0], [302.0, 296.0]]))
    c = _xy(np.array([[98.0, 102.0]]))
    merged = merge_picks([a, b, c], radius=20.0)
    votes = dict(zip(zip(merged.rlnCoordinateX.round(), merged.rlnCoordinateY.round()), merged.rlnSpaPickerVotes))
    assert votes == {(101.0, 101.0): 3, (301.0, 298.0): 2, (500.0, 500.0): 1, (700.0, 700.0): 1}
    assert agreement_counts(merged, 3) == {"per_picker": [3, 3, 1], "exactly": [2, 1, 1], "at_least": [4, 2, 1]}
    assert required_votes("and", 3) == 3 and required_votes("or", 3) == 1 and required_votes("at-least", 3, 2) == 2
    with pytest.raises(ValueError):
        required_votes("at-least", 3, 4)
    empty = merge_picks([a.iloc[:0], b.iloc[:0]], 20.0)
    assert len(empty) == 0 and agreement_counts(empty, 2)["at_least"] == [0, 0]


def test_and_is_more_precise_or_recalls_more_and_k_is_monotone(sim):
    """Two sloppy pickers (low thresholds, different size ranges) make different false picks."""
    x, y = sim["picks"]["sloppy_small"], sim["picks"]["sloppy_mid"]
    px, rx, _ = _score(x, sim["truth"])
    py, ry, _ = _score(y, sim["truth"])
    merged = {n: merge_picks([x[n], y[n]], 0.3 * DIAMETER) for n in sim["truth"]}
    p_and, r_and, _ = _score({n: m[m.rlnSpaPickerVotes == 2] for n, m in merged.items()}, sim["truth"])
    p_or, r_or, _ = _score(merged, sim["truth"])
    assert p_and > max(px, py), (p_and, px, py)
    assert r_or >= max(rx, ry) and r_or > r_and, (r_or, rx, ry, r_and)
    three = {n: merge_picks([x[n], y[n], sim["picks"]["log_a"][n]], 0.3 * DIAMETER) for n in sim["truth"]}
    scores = [_score({n: m[m.rlnSpaPickerVotes >= k] for n, m in three.items()}, sim["truth"]) for k in (1, 2, 3)]
    kept = [sum(int((m.rlnSpaPickerVotes >= k).sum()) for m in three.values()) for k in (1, 2, 3)]
    assert kept[0] > kept[1] > kept[2]
    assert scores[0][1] >= scores[1][1] >= scores[2][1]  # recall falls with k
    assert scores[0][0] < scores[1][0] <= scores[2][0] + 0.02  # precision rises with k


def test_learned_picker_and_consensus_reach_the_targets(sim):
    truth, picks = sim["truth"], sim["picks"]
    _, _, f1_log = _score(picks["log_a"], truth)
    p_l, r_l, f1_learned = _score(picks["learned"], truth)
    # the scorer learns the particles from another picker's agreed picks: about as good as the best LoG on clean ice
    assert f1_learned >= 0.9 and f1_learned >= f1_log - 0.05, (f1_learned, f1_log)
    merged = {n: merge_picks([picks["log_a"][n], picks["log_b"][n], picks["learned"][n]], 0.3 * DIAMETER)
              for n in truth}
    p, r, f1 = _score({n: m[m.rlnSpaPickerVotes >= 2] for n, m in merged.items()}, truth)
    assert p >= 0.9 and f1 >= 0.9, (p, r, f1)


def _spa(*args, capsys):
    """The CLI in-process (a subprocess costs a second of imports): (exit status, stderr)."""
    from spa.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _index(folder, picks: dict):
    names, files = [], []
    for stem, table in picks.items():
        write_coordinates(folder / "coordinates" / f"{stem}_autopick.star", table)
        names.append(f"micrographs/{stem}.mrc")
        files.append(str(folder / "coordinates" / f"{stem}_autopick.star"))
    write_coordinate_index(folder / "autopick.star", names, files)
    return folder / "autopick.star"


def test_consensus_pick_command_with_rescue_and_bad_input(sim, tmp_path, capsys):
    a = _index(tmp_path / "a", sim["picks"]["log_a"])
    # picker B lost half its picks: AND loses those particles, the learned rescue brings them back
    b = _index(tmp_path / "b", {n: t.iloc[::2] for n, t in sim["picks"]["log_b"].items()})
    rc, err = _spa("consensus", "pick", "--micrographs", str(sim["star"]), "--picks", str(a), str(b), "--diameter",
               "120", "--mode", "and", "--rescue", "--output-dir", str(tmp_path / "c"), capsys=capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "c" / "consensus_pick.json").read_text())
    n_a = sum(len(t) for t in sim["picks"]["log_a"].values())
    assert summary["picks_per_picker"][0] == n_a and summary["found_by_all"] < 0.7 * n_a
    assert summary["rescued"] >= 0.5 * (n_a - summary["found_by_all"]), summary
    assert summary["kept"] == summary["found_by_all"] + summary["rescued"]
    kept = {n: read_coordinates(tmp_path / "c" / "coordinates" / f"{n}_autopick.star") for n in sim["truth"]}
    p, r, _ = _score(kept, sim["truth"])
    assert r >= 0.85 and p >= 0.75, (p, r)
    for name in ("autopick.star", "consensus_pick.star", "consensus_table.png", "consensus_picks.png", "figures.json"):
        assert (tmp_path / "c" / name).stat().st_size > 0

    # a coordinate file for a micrograph that is not in the micrographs STAR: one line naming the index
    stray = dict(sim["picks"]["log_a"], mic9999=sim["picks"]["log_a"]["mic0001"])
    bad = _index(tmp_path / "bad", stray)
    rc, err = _spa("consensus", "pick", "--micrographs", str(sim["star"]), "--picks", str(a), str(bad), "--diameter",
               "120", "--output-dir", str(tmp_path / "d"), capsys=capsys)
    assert rc != 0 and str(bad) in err and "mic9999" in err
    assert not (tmp_path / "d" / "autopick.star").exists()
    # empty pick sets: a clean zero result
    empty = _index(tmp_path / "e", {n: t.iloc[:0] for n, t in sim["picks"]["log_a"].items()})
    rc, err = _spa("consensus", "pick", "--micrographs", str(sim["star"]), "--picks", str(empty), str(b),
               "--diameter", "120", "--mode", "and", "--output-dir", str(tmp_path / "f"), capsys=capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "f" / "consensus_pick.json").read_text())["kept"] == 0


def test_pick_learned_command(sim, tmp_path, capsys):
    agreed = _index(tmp_path / "agreed", {n: t.drop(columns=["rlnSpaPickers"]) for n, t in sim["agreed"].items()})
    single = _index(tmp_path / "single", sim["picks"]["sloppy_small"])
    rc, err = _spa("pick", "--method", "learned", "--micrographs", str(sim["star"]), "--diameter-min", "100",
               "--diameter-max", "120", "--positives", str(agreed), "--negatives", str(single), "--rounds", "0",
               "--output-dir", str(tmp_path / "learned"), capsys=capsys)
    assert rc == 0, err
    picks = {n: read_coordinates(tmp_path / "learned" / "coordinates" / f"{n}_autopick.star") for n in sim["truth"]}
    assert _score(picks, sim["truth"])[2] >= 0.85
    rc, err = _spa("pick", "--method", "learned", "--micrographs", str(sim["star"]), "--diameter-min", "100",
               "--diameter-max", "120", "--output-dir", str(tmp_path / "none"), capsys=capsys)
    assert rc != 0 and "--positives" in err
