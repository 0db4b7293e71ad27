"""Solvent masks from a map, as RELION's MaskCreate: low-pass, threshold, extend, soften.

All lengths are in Å and converted with the map's pixel size.  The mask is 1
inside the molecule, falls to 0 over a raised-cosine edge of ``soft_edge``
Å beyond a binary region grown by ``extend`` Å from the thresholded map.

The automatic threshold looks at the low-passed map's background — the voxels
outside the largest sphere the box holds, where a centred molecule has no
density — and takes mean + ``sigmas`` × standard deviation of that background,
but at least ``min_fraction`` of the map's 99.9th percentile, so that a map
with an almost noiseless background still gets a threshold at its molecule's
edge rather than at its noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spa.fourier import lowpass, real_radius


def auto_threshold(lowpassed: np.ndarray, *, sigmas: float = 5.0, min_fraction: float = 0.05) -> float:
    """Threshold of a low-passed map (see the module docstring); the map's density units."""
    box = lowpassed.shape[-1]
    outside = real_radius(box, 3) > box / 2
    background = lowpassed[outside] if outside.any() else lowpassed.ravel()
    peak = float(np.percentile(lowpassed, 99.9))
    return max(float(background.mean() + sigmas * background.std()), min_fraction * peak)


def soft_edge_mask(binary: np.ndarray, pixel_size: float, *, extend: float = 3.0, soft_edge: float = 6.0) -> np.ndarray:
    """A binary region grown by ``extend`` Å, with a raised-cosine fall over the next ``soft_edge`` Å (float32)."""
    if not binary.any():
        return np.zeros(binary.shape, np.float32)
    # distance (px) of every voxel from the region: one Euclidean distance transform does both steps
    distance = ndimage.distance_transform_edt(~binary.astype(bool))
    d = distance * pixel_size - extend  # Å beyond the extended region
    mask = np.where(d <= 0, 1.0, np.where(d < soft_edge, 0.5 * (1 + np.cos(np.pi * d / max(soft_edge, 1e-9))), 0.0))
    return mask.astype(np.float32)


def solvent_mask(volume: np.ndarray, pixel_size: float, *, lowpass_resolution: float = 15.0,
                 threshold: float | None = None, extend: float = 3.0, soft_edge: float = 6.0,
                 keep_largest: bool = True) -> tuple[np.ndarray, float]:
    """Solvent mask of a map (B,B,B): low-pass at ``lowpass_resolution`` Å, threshold (None: automatic),
    keep the largest connected region (drops isolated noise blobs), extend ``extend`` Å, soft edge
    ``soft_edge`` Å.  Returns (mask float32 in [0, 1], threshold used)."""
    smooth = lowpass(np.asarray(volume, np.float32), pixel_size, lowpass_resolution, ndim=3)
    level = auto_threshold(smooth) if threshold is None else float(threshold)
    binary = smooth > level
    if keep_largest and binary.any():
        labels, n = ndimage.label(binary)
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            binary = labels == (1 + int(np.argmax(sizes)))
    return soft_edge_mask(binary, pixel_size, extend=extend, soft_edge=soft_edge), level


def mask_from_map(mask_map: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """A user's mask map as a mask: values clipped to [0, 1]; a binary map (0/1) is used as is.  Values
    outside [0, 1] beyond rounding (a density map given by mistake) are the caller's to reject."""
    return np.clip(np.asarray(mask_map, np.float32), 0.0, 1.0)
