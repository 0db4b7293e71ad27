"""The shared driver (spa.em.run): options checked by field name, continue refused when inputs or
options changed, --restart, the per-iteration progress line."""

from __future__ import annotations

import pytest

from spa.class2d.classify import Class2DOptions, run_class2d
from spa.class2d.synthetic import make_particles, make_views
from spa.em.engine import ArrayImages, last_checkpoint, load_checkpoint, save_checkpoint
from spa.errors import SpaInputError

BOX, PX = 32, 4.0


@pytest.fixture(scope="module")
def data():
    views = make_views(2, BOX, PX, 90, 1)
    images, table = make_particles(views, 160, PX, snr=0.5, max_shift_px=1.0, rng=2)
    return images, table


def _opts(**kw):
    base = dict(n_classes=2, n_iter=1, particle_diameter=100, offset_range=2, seed=3, noise_decoys=0, chunk_size=64)
    return Class2DOptions(**{**base, **kw})


def _run(data, out, opts, **kw):
    images, table = data
    return run_class2d(table, ArrayImages(images, PX), opts, out, log=None, **kw)


@pytest.mark.parametrize("field,value,words", [("tau2_fudge", 0.0, "tau2_fudge must be > 0"),
                                               ("n_classes", 0, "n_classes must be ≥ 1"),
                                               ("psi_step", 400.0, "psi_step must be in (0, 360]"),
                                               ("significant_fraction", 1.5, "significant_fraction")])
def test_options_checked_by_field_name(data, tmp_path, field, value, words):
    with pytest.raises(SpaInputError, match=words.replace("(", r"\(").replace("]", r"\]")):
        _run(data, tmp_path, _opts(**{field: value}))


def test_continue_with_a_changed_option_is_refused_naming_it(data, tmp_path):
    _run(data, tmp_path, _opts())
    with pytest.raises(SpaInputError, match=r"option n_classes: 2 → 3"):
        _run(data, tmp_path, _opts(n_classes=3, n_iter=2), continue_=True)
    with pytest.raises(SpaInputError, match=r"option offset_range: 2 → 3"):
        _run(data, tmp_path, _opts(offset_range=3, n_iter=2), continue_=True)


def test_continue_with_other_particles_is_refused(data, tmp_path):
    images, table = data
    _run(data, tmp_path, _opts())
    fewer = (images[:150], table.iloc[:150].reset_index(drop=True))
    with pytest.raises(SpaInputError, match=r"particle table differs \(160 → 150 rows\)"):
        _run(fewer, tmp_path, _opts(n_iter=2), continue_=True)
    changed = table.copy()
    changed["rlnDefocusU"] = changed["rlnDefocusU"] + 100.0
    with pytest.raises(SpaInputError, match="particle table differs"):
        _run((images, changed), tmp_path, _opts(n_iter=2), continue_=True)
    other_images = images.copy()
    other_images[0] += 1.0
    with pytest.raises(SpaInputError, match="images"):
        _run((other_images, table), tmp_path, _opts(n_iter=2), continue_=True)


def test_continue_with_more_iterations_is_allowed_and_restart_starts_afresh(data, tmp_path):
    _run(data, tmp_path, _opts())
    model, _, _ = _run(data, tmp_path, _opts(n_iter=2), continue_=True)
    assert model.iteration == 2 and last_checkpoint(tmp_path)[0] == 2
    model, _, _ = _run(data, tmp_path, _opts(n_classes=3), restart=True)
    assert model.iteration == 1 and model.n_classes == 3
    # the earlier run's later iterations are gone: a --continue cannot pick them up
    assert last_checkpoint(tmp_path)[0] == 1
    assert not (tmp_path / "run_it002_classes.mrcs").exists()


def test_a_fresh_run_removes_an_earlier_runs_files(data, tmp_path):
    _run(data, tmp_path, _opts(n_iter=2))
    (tmp_path / "notes.txt").write_text("mine")
    _run(data, tmp_path, _opts())
    assert last_checkpoint(tmp_path)[0] == 1 and (tmp_path / "notes.txt").exists()


def test_checkpoint_without_a_fingerprint_is_refused(data, tmp_path):
    _run(data, tmp_path, _opts())
    it, path = last_checkpoint(tmp_path)
    arrays = load_checkpoint(path)
    del arrays["fingerprint"]
    save_checkpoint(tmp_path, it, arrays)
    with pytest.raises(SpaInputError, match="--restart"):
        _run(data, tmp_path, _opts(n_iter=2), continue_=True)


def test_progress_line_has_time_and_estimate(data, tmp_path):
    lines = []
    images, table = data
    run_class2d(table, ArrayImages(images, PX), _opts(n_iter=2), tmp_path, log=lines.append)
    first = next(m for m in lines if m.startswith("class2d: iteration 1/2"))
    assert " s, about " in first and first.endswith("left")
    last = next(m for m in lines if m.startswith("class2d: iteration 2/2"))
    assert "left" not in last


def test_cli_continue_refused_in_one_line(tmp_path, capsys):
    from spa.cli import main

    sim = tmp_path / "sim"
    assert main(["simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "80",
                 "--output-dir", str(sim)]) == 0
    args = ["class2d", "--particles", str(sim / "particles.star"), "--iter", "1", "--noise-decoys", "0",
            "--output-dir", str(tmp_path / "c")]
    assert main(args + ["--classes", "2"]) == 0
    capsys.readouterr()
    assert main(args + ["--classes", "3", "--continue"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spa class2d: error:") and "option n_classes: 2 → 3" in err[-1]
    assert main(args + ["--classes", "3", "--restart"]) == 0


def test_resume_continues_its_own_run_and_restarts_another(data, tmp_path):
    """What the workflow's rules pass: continue an interrupted run, but never another run's checkpoint."""
    lines = []
    images, table = data
    run_class2d(table, ArrayImages(images, PX), _opts(), tmp_path, log=None)
    model, _, _ = run_class2d(table, ArrayImages(images, PX), _opts(n_iter=2), tmp_path, resume=True,
                              log=lines.append)
    assert model.iteration == 2 and any("continuing after iteration 1" in m for m in lines)
    lines.clear()
    model, _, _ = run_class2d(table, ArrayImages(images, PX), _opts(n_classes=3, n_iter=2), tmp_path, resume=True,
                              log=lines.append)
    assert model.n_classes == 3 and any("starting afresh" in m and "n_classes" in m for m in lines)


def test_checkpoint_of_other_code_is_refused(data, tmp_path, monkeypatch):
    import spa.em.run as em_run

    _run(data, tmp_path, _opts())
    monkeypatch.setattr(em_run, "_CODE_DIGEST", ["0123456789abcdef"])
    with pytest.raises(SpaInputError, match="code changed"):
        _run(data, tmp_path, _opts(n_iter=2), continue_=True)
