"""The hand of the map, where it can be judged.

Projections cannot tell a map from its mirror image: the projection of
V(x, y, −z) along z is that of V, and every view of the mirror is the mirror
of a view of V, so particles, class averages and FSCs fit both hands equally
well.  Without other information (tilt pairs, a known structure, secondary
structure of known chirality at high resolution) the absolute hand of a map
made from projections alone cannot be judged, and this check says so.

With a map of the right hand (a simulation's truth, a known structure) it can:
the refined map and its mirror (:func:`spa.initial_model.align.mirror_volume`)
are each aligned to it (:func:`spa.initial_model.align.align_to_reference`,
one hand each) and their FSCs with it compared at low resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import fsc


@dataclass
class Handedness:
    """``judged`` False when there is nothing to judge by (``reason`` says so); else the mean FSC with the
    reference up to ``resolution`` Å of the map as it is and of its mirror, and whether the map's hand is the
    reference's."""

    judged: bool
    reason: str
    correlation: float | None = None
    mirror_correlation: float | None = None
    correct: bool | None = None
    resolution: float | None = None


NOT_JUDGED = ("a map made from projections alone has no absolute hand (its mirror image explains every image "
              "equally well); give a map of known hand (input.truth_map, a known structure) to judge it")


def judge_hand(volume, reference=None, *, pixel_size: float, resolution: float = 10.0) -> Handedness:
    """Compare ``volume`` and its mirror with ``reference`` (same box and pixel size); without one, say why
    the hand cannot be judged."""
    if reference is None:
        return Handedness(False, NOT_JUDGED)
    from spa.initial_model.align import align_to_reference, mirror_volume

    volume = np.asarray(volume, np.float32)
    reference = np.asarray(reference, np.float32)
    if volume.shape != reference.shape:
        return Handedness(False, f"the reference map's box {reference.shape} differs from the map's {volume.shape}")
    box = volume.shape[-1]
    shell = max(2, int(box * pixel_size / resolution))
    scores = []
    for v in (volume, mirror_volume(volume)):
        aligned, _ = align_to_reference(v, reference, pixel_size=pixel_size, resolution=max(resolution, 15.0),
                                        allow_mirror=False)
        scores.append(float(np.mean(fsc(aligned, reference)[1:shell + 1])))
    direct, mirrored = scores
    return Handedness(True, "compared with the reference map", direct, mirrored, direct > mirrored, resolution)
