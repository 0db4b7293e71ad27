"""Pictures of the final map for people: its three central sections and a shaded iso-surface from three sides.

The surface is scikit-image's marching cubes drawn as a lit triangle mesh on
matplotlib's 3D axes; where scikit-image is missing, a depth-shaded projection
of the voxels above the level stands in for it.  Maps larger than
``MAX_VIEW_BOX`` voxels a side are Fourier-cropped first (the picture needs no
more, and the mesh stays small).  Axes follow the MRC file: the array is
(z, y, x), sections are through the box centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_VIEW_BOX = 80  # voxels a side for the surface
VIEWS = [(20, -60), (20, 30), (80, -90)]  # (elevation, azimuth) in degrees of the three surface views
SURFACE_RGB = np.array([0.62, 0.78, 1.0])  # colour of a fully lit face


def surface_level(volume: np.ndarray) -> float:
    """The density level of the surface: Otsu's threshold between molecule and solvent (the level that best
    splits the voxel values into two groups), never below 3 standard deviations of the solvent (voxels
    outside 45 % of the box from its centre) above its median."""
    v = np.asarray(volume, np.float64)
    box = v.shape[0]
    z, y, x = np.indices(v.shape) - box // 2
    solvent = v[np.sqrt(x * x + y * y + z * z) > 0.45 * box]
    noise = float(np.median(solvent) + 3 * solvent.std()) if solvent.size else -np.inf
    return max(_otsu(v), noise)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximises the between-group variance of a two-group split)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(centres[int(np.argmax(between))]) if between.size else float(np.mean(values))


def view_volume(volume: np.ndarray, pixel_size: float) -> tuple[np.ndarray, float]:
    """The map at most ``MAX_VIEW_BOX`` voxels a side (Fourier crop) and its pixel size in Å."""
    from spa.fourier import fourier_resize

    box = volume.shape[0]
    if box <= MAX_VIEW_BOX:
        return np.asarray(volume, np.float32), pixel_size
    new = MAX_VIEW_BOX - MAX_VIEW_BOX % 2
    return np.asarray(fourier_resize(np.asarray(volume, np.float32), new, 3), np.float32), pixel_size * box / new


def write_slices(path, volume: np.ndarray, pixel_size: float, name: str) -> dict:
    """``path``: the three central sections of the map, large; returns its figures.json entry."""
    from spa.plots import plot_map_slices

    plot_map_slices(path, [volume], [name], panel=3.2,
                    title=f"{name}: box {volume.shape[0]} px at {pixel_size:.3g} Å/px")
    return {"file": Path(path).name, "title": "Final map: central sections",
            "caption": "The three sections through the centre of the final map (XY, XZ, YZ; grey values from the "
                       "1st to the 99.8th percentile). Density is white; a molecule shows as continuous density "
                       "with secondary structure at high resolution, noise as grain without shape."}


def write_surface(path, volume: np.ndarray, pixel_size: float, name: str) -> dict:
    """``path``: the iso-surface at :func:`surface_level` seen from three sides; returns its figures.json entry."""
    vol, px = view_volume(volume, pixel_size)
    level = surface_level(vol)
    inside = float((vol > level).mean())
    try:
        import skimage.measure  # noqa: F401
    except ImportError:
        how = "depth-shaded projection of the voxels above the level (scikit-image is not installed)"
        _draw_projection(path, vol, level, name)
    else:
        how = "marching-cubes surface (scikit-image), lit from the viewer's upper left"
        _draw_mesh(path, vol, px, level, name)
    return {"file": Path(path).name, "title": f"Final map: surface at density {level:.3g}",
            "caption": f"The map's {how}, from three sides; the level (Otsu's threshold between molecule and "
                       f"solvent, at least 3σ above the solvent) encloses {100 * inside:.1f} % of the box. Axes in Å."}


def _pyplot():
    from spa.plots import _pyplot as plt

    return plt()


def _draw_mesh(path, vol: np.ndarray, px: float, level: float, name: str) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from skimage.measure import marching_cubes

    from spa.plots import save_figure

    # marching cubes on (x, y, z) order so that the plot's axes are the map's x, y, z
    verts, faces, _, _ = marching_cubes(np.ascontiguousarray(vol.transpose(2, 1, 0)), level, spacing=(px,) * 3)
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    # zoom on the surface: a cube around its vertices, 10 % larger than their widest extent
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    centre, half = 0.5 * (lo + hi), 0.55 * float(np.max(hi - lo)) + px
    plt = _pyplot()
    fig = plt.figure(figsize=(10.5, 3.8), dpi=100)
    for i, (elev, azim) in enumerate(VIEWS):
        ax = fig.add_subplot(1, len(VIEWS), i + 1, projection="3d")
        e, a = np.radians(elev), np.radians(azim)
        towards_viewer = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        light = towards_viewer + np.array([0.0, 0.0, 0.6])
        light /= np.linalg.norm(light)
        # marching_cubes' normals point down the gradient (out of the density): light the outside
        shade = 0.2 + 0.8 * np.clip(-(normals @ light), 0, 1)
        colours = np.column_stack([np.outer(shade, SURFACE_RGB), np.ones_like(shade)])
        colours = np.clip(colours, 0, 1)  # edges in the face colour hide the seams between triangles
        ax.add_collection3d(Poly3DCollection(tri, facecolors=colours, edgecolors=colours, linewidths=0.3))
        for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            setter(c - half, c + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("x", fontsize=7)
        ax.set_ylabel("y", fontsize=7)
        ax.set_zlabel("z", fontsize=7)
    fig.suptitle(f"{name}: surface at {level:.3g} ({len(faces)} triangles)", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=0.93, wspace=0.08)
    save_figure(fig, path, tight=False)


def _draw_projection(path, vol: np.ndarray, level: float, name: str) -> None:
    """Fallback: along z, y and x, the depth of the first voxel above ``level``, shaded by its slope."""
    from spa.plots import save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8), dpi=100)
    above = vol > level
    n = vol.shape[0]
    for ax, axis, label in zip(axes, (0, 1, 2), ("down z", "down y", "down x")):
        hit = above.any(axis=axis)
        depth = np.where(hit, np.argmax(above, axis=axis), n).astype(np.float64)
        gy, gx = np.gradient(depth)
        shade = np.where(hit, 0.3 + 0.7 * np.clip(1 - 0.5 * (gx + gy) / np.maximum(np.hypot(gx, gy), 1), 0, 1) *
                         (1 - depth / n), 0)
        ax.imshow(shade, cmap="bone", origin="lower", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{name}: voxels above {level:.3g}, seen from three sides", fontsize=9)
    save_figure(fig, path)
