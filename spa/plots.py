"""Figures (matplotlib, Agg: no display needed), written atomically as PNG."""

from __future__ import annotations

import numpy as np

from spa.io.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, tight: bool = True) -> None:
    """Write a figure as PNG atomically (temp file, then rename) and close it."""
    plt = _pyplot()
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def angstrom_axis(ax, box_angstrom: float) -> None:
    """A top axis labelled in Å over an x axis in 1/Å: ticks at round resolutions (a secondary axis
    with 1/x labels overlapped at low frequency and showed an offset)."""
    lo, hi = ax.get_xlim()
    hi = max(hi, 1e-6)
    candidates = [100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2, 1.5, 1.2, 1]
    ticks = [d for d in candidates if lo < 1.0 / d <= hi]
    # keep ticks at least 6 % of the axis apart, and at least ~0.4 inch on a narrow axis (labels such as
    # "100" and "30" ran into each other on a 3-inch panel)
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    spacing = max(0.06, 0.4 / max(width_in, 1e-3))
    kept: list[float] = []
    for d in ticks:
        if not kept or (1.0 / d - 1.0 / kept[-1]) > spacing * (hi - lo):
            kept.append(d)
    top = ax.twiny()
    top.set_xlim(lo, hi)
    top.set_xticks([1.0 / d for d in kept])
    top.set_xticklabels([f"{d:g}" for d in kept])
    top.set_xlabel("resolution (Å)")


def plot_fsc(path, curves, box: int, pixel_size: float, thresholds=(0.143, 0.5)) -> None:
    """FSC curves against resolution (1/Å) with threshold lines; ``curves`` = [(values, label), …]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for values, label in curves:
        s = np.arange(len(values))
        ax.plot(s / (box * pixel_size), values, label=label)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("resolution (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    angstrom_axis(ax, box * pixel_size)
    save_figure(fig, path)


def plot_guinier(path, s2, curves, fit=None, resolution: float | None = None) -> None:
    """Guinier plot: ln(amplitude) against s² (Å⁻²); ``curves`` = [(values, label), …]; ``fit`` =
    (slope, intercept, fitted mask) drawn as a line over the fitted range."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    s2 = np.asarray(s2)
    for values, label in curves:
        ax.plot(s2, values, label=label)
    if fit is not None:
        slope, intercept, used = fit
        x = s2[np.asarray(used, bool)]
        if x.size:
            ax.plot(x, intercept + slope * x, "k--", lw=1.2, label=f"fit: B = {-4 * slope:.0f} Å²")
    if resolution:
        ax.axvline(1.0 / resolution**2, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("s² (Å⁻²)")
    ax.set_ylabel("ln amplitude")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_figures_index(folder, entries) -> None:
    """``figures.json`` in ``folder``: [{"file", "title", "caption"}, …] for the report (atomic)."""
    import json
    from pathlib import Path

    with atomic_path(Path(folder) / "figures.json") as tmp:
        Path(tmp).write_text(json.dumps(list(entries), indent=1, ensure_ascii=False))


def central_slices(volume) -> list:
    """The three central sections of a (z, y, x) map: the XY plane (z = box/2), XZ (y = box/2), YZ (x = box/2)."""
    v = np.asarray(volume, np.float32)
    z, y, x = (n // 2 for n in v.shape)
    return [v[z], v[:, y, :], v[:, :, x]]


def plot_map_slices(path, volumes, labels, *, title: str | None = None, panel: float = 1.9) -> None:
    """One row per map in ``volumes`` (each (z, y, x)): its three central sections (XY, XZ, YZ), grey values
    scaled per map (1st to 99.8th percentile), ``labels[i]`` on the row's first panel."""
    plt = _pyplot()
    rows = len(volumes)
    fig, axes = plt.subplots(rows, 3, figsize=(3 * panel, panel * rows + (0.35 if title else 0)), squeeze=False)
    for r, (vol, label) in enumerate(zip(volumes, labels)):
        planes = central_slices(vol)
        lo, hi = np.percentile(np.concatenate([p.ravel() for p in planes]), [1, 99.8])
        for c, (plane, name) in enumerate(zip(planes, ("XY", "XZ", "YZ"))):
            ax = axes[r, c]
            ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label} · {name}" if c == 0 and label else name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
