"""A particle scorer trained on the data itself (deep-consensus / Topaz style), and a picker built on it.

No particle model comes from outside: the *positives* are coordinates that
several pickers agree on (``spa consensus pick --mode and``), the *negatives*
are random locations at least a particle radius away from every known pick,
plus coordinates that only one picker found (where the user passes them).
A classifier learns what the agreed particles look like on *these*
micrographs (their size, their CTF rings, the ice around them) and then
scores every location of every micrograph.

Features (rotation-invariant, dense): the micrograph is binned in Fourier
space so that the particle radius spans about 8 pixels, and three maps are
made from it, each scaled to unit robust σ per micrograph:

* ``L`` — the intensity band-passed between 1/diameter and 1/20 Å
  (the particle's low-resolution contrast, CTF-modulated);
* ``E`` — the local power in the band between 2/diameter and 1/15 Å, as the
  LoG picker uses it (:mod:`spa.picking.log`: a particle adds power where the
  CTF passes its signal and the ice is weak);
* ``L²`` — so that the variance of ``L`` along a ring is available.

Each map is averaged over ``rings`` concentric rings of radius 0 to 1.25 ×
the particle radius around every pixel (an FFT convolution with ring
kernels); the features of a location are the ring means of ``L`` and ``E``
and the ring variances of ``L`` (mean of ``L²`` minus the squared mean):
a radial profile, unchanged when the particle rotates in plane.  So scoring
a whole micrograph costs a few FFTs of the binned image and one classifier
call per binned pixel.

The classifier is scikit-learn's histogram gradient boosting with balanced
class weights (a few dozen features, hundreds to thousands of examples: no
GPU needed).  Picks are local maxima of the score map (probability that a
particle is centred there) at least ``min_distance`` apart and at least
``threshold``, sub-pixel refined, none closer than a radius to an edge;
rlnAutopickFigureOfMerit is the probability.  Coordinates follow RELION:
rlnCoordinateX = column, rlnCoordinateY = row of the full-size micrograph,
0-based pixel of the particle centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from spa.picking.log import fourier_bin
from spa.picking.peaks import robust_z, select_peaks


@dataclass(frozen=True)
class LearnedOptions:
    """Lengths in Å; ``threshold`` is a probability (0–1)."""

    diameter: float
    threshold: float = 0.5
    min_distance: float | None = None  # Å between picks; None: 0.8 × diameter
    rings: int = 8  # radial profile samples from the centre to 1.25 × the radius
    radius_pixels: float = 8.0  # binned pixels across the particle radius
    low_resolution: float = 20.0  # Å: the fine end of the L map's band
    high_resolution: float = 15.0  # Å: the fine end of the E map's band (as the LoG picker)
    negatives_per_micrograph: int = 200  # random background locations drawn per micrograph
    exclusion: float = 0.5  # random negatives lie at least this × diameter from every known pick
    shifted_negatives: int = 4  # per positive: locations ``shift`` × diameter off its centre (teach centring)
    shift: float = 0.35
    seed: int = 0

    def __post_init__(self):
        if not self.diameter > 0:
            raise ValueError(f"particle diameter must be > 0 Å, got {self.diameter}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the learned picker's threshold is a probability in [0, 1], got {self.threshold}")


def binning_factor(pixel_size: float, opts: LearnedOptions) -> int:
    """Integer Fourier binning that leaves about ``radius_pixels`` pixels across the particle radius."""
    return max(1, int(opts.diameter / 2 / pixel_size // opts.radius_pixels))


def _ring_kernels(radius: float, rings: int) -> list[np.ndarray]:
    """Normalised annuli (sum 1) between 0 and 1.25 × ``radius`` (binned pixels), in ``rings`` steps."""
    outer = 1.25 * radius
    half = int(np.ceil(outer)) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    rr = np.hypot(yy, xx)
    edges = np.linspace(0.0, outer, rings + 1)
    edges[0] = -1.0  # the first ring holds the centre pixel
    kernels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = ((rr > lo) & (rr <= hi)).astype(np.float64)
        if k.sum() == 0:  # rings thinner than a pixel near the centre: the nearest pixels instead
            k = (np.abs(rr - hi) == np.abs(rr - hi).min()).astype(np.float64)
        kernels.append(k / k.sum())
    return kernels


def _convolve(image_f: np.ndarray, kernel: np.ndarray, shape) -> np.ndarray:
    """Circular convolution of an image (given as its rfft2) with a small centred kernel."""
    padded = np.zeros(shape)
    h = kernel.shape[0] // 2
    padded[: h + 1, : h + 1] = kernel[h:, h:]
    padded[: h + 1, -h:] = kernel[h:, :h]
    padded[-h:, : h + 1] = kernel[:h, h:]
    padded[-h:, -h:] = kernel[:h, :h]
    return np.fft.irfft2(image_f * np.fft.rfft2(padded), s=shape)


def feature_maps(micrograph: np.ndarray, pixel_size: float, opts: LearnedOptions) -> tuple[np.ndarray, int]:
    """(features (F, rows, cols) float32 of the binned micrograph, binning factor): see the module docstring."""
    factor = binning_factor(pixel_size, opts)
    img = fourier_bin(np.asarray(micrograph, np.float32), factor)
    apix = pixel_size * factor
    f = np.fft.rfft2(img - img.mean())
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.rfftfreq(img.shape[1])[None, :]
    s = np.sqrt(kx**2 + ky**2) / apix  # 1/Å
    nyquist = 1.0 / (2.0 * apix)
    low = np.fft.irfft2(f * ((s > 1.0 / opts.diameter) & (s < min(1.0 / opts.low_resolution, nyquist))), s=img.shape)
    energy = np.fft.irfft2(f * ((s > 2.0 / opts.diameter) & (s < min(1.0 / opts.high_resolution, nyquist))),
                           s=img.shape) ** 2
    maps = []
    for m in (low, energy):
        med, sd = robust_z(m)
        maps.append((m - med) / sd)
    low, energy = maps
    kernels = _ring_kernels(opts.diameter / 2 / apix, opts.rings)
    out = []
    transforms = [np.fft.rfft2(m) for m in (low, energy, low**2)]
    for k in kernels:
        mean_l, mean_e, mean_l2 = (_convolve(t, k, img.shape) for t in transforms)
        out += [mean_l, mean_e, mean_l2 - mean_l**2]
    return np.stack(out).astype(np.float32), factor


def sample_features(features: np.ndarray, factor: int, xy: np.ndarray) -> np.ndarray:
    """(n, F) features at full-size pixel coordinates ``xy`` (n, 2: x = column, y = row), nearest binned pixel."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    cols = np.clip(np.rint(xy[:, 0] / factor).astype(int), 0, features.shape[2] - 1)
    rows = np.clip(np.rint(xy[:, 1] / factor).astype(int), 0, features.shape[1] - 1)
    return features[:, rows, cols].T


def random_negatives(shape, known_xy: np.ndarray, n: int, min_distance: float, edge: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` random full-size (x, y) at least ``min_distance`` px from every known pick and ``edge`` px
    inside the micrograph (rows, cols = ``shape``)."""
    rows, cols = shape
    if rows <= 2 * edge or cols <= 2 * edge:
        return np.zeros((0, 2))
    draw = np.column_stack([rng.uniform(edge, cols - edge, 4 * n), rng.uniform(edge, rows - edge, 4 * n)])
    known = np.asarray(known_xy, float).reshape(-1, 2)
    if len(known):
        d, _ = cKDTree(known).query(draw)
        draw = draw[d >= min_distance]
    return draw[:n]


def _one_thread():
    """The classifier runs on one OpenMP thread: its problems are small, and on a shared machine its thread
    team spins against the other processes (measured: 16 s instead of 0.25 s for one fit on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


class LearnedScorer:
    """The classifier of the module docstring: ``fit`` on feature rows, ``score`` → probability of a particle."""

    def __init__(self, opts: LearnedOptions):
        self.opts = opts
        self.model = None
        self.n_positive = self.n_negative = 0

    def fit(self, positives: np.ndarray, negatives: np.ndarray) -> LearnedScorer:
        """Train on (n, F) feature rows of particles and of background; a ValueError when either is empty."""
        positives = np.asarray(positives, np.float32).reshape(-1, positives.shape[-1] if np.ndim(positives) else 0)
        negatives = np.asarray(negatives, np.float32).reshape(-1, positives.shape[1])
        if len(positives) < 2 or len(negatives) < 2:
            raise ValueError(f"the learned picker needs at least 2 positive and 2 negative examples, got "
                             f"{len(positives)} and {len(negatives)}")
        try:
            from sklearn.ensemble import HistGradientBoostingClassifier
        except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
            raise ValueError("the learned picker needs scikit-learn (pip install scikit-learn)") from exc
        x = np.concatenate([positives, negatives])
        y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
        self.model = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, max_leaf_nodes=15,
                                                    min_samples_leaf=10, l2_regularization=1.0,
                                                    class_weight="balanced", early_stopping=False,
                                                    random_state=self.opts.seed)
        with _one_thread():
            self.model.fit(x, y)
        self.n_positive, self.n_negative = len(positives), len(negatives)
        return self

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Probability (0–1) that each (n, F) feature row is a particle centre."""
        rows = np.asarray(rows, np.float32)
        if len(rows) == 0:
            return np.zeros(0)
        with _one_thread():
            return self.model.predict_proba(rows)[:, 1]

    def score_map(self, features: np.ndarray) -> np.ndarray:
        """Probability map (rows, cols) of the binned micrograph."""
        f, h, w = features.shape
        return self.score(features.reshape(f, -1).T).reshape(h, w)


def training_rows(features: np.ndarray, factor: int, pixel_size: float, positives_xy, negatives_xy,
                  opts: LearnedOptions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positive rows, negative rows) of one micrograph (full-size pixel coordinates (n, 2), x = column):
    the positives; the given negatives that lie further than a fifth of the diameter from every positive
    (a pick only one picker made); and ``negatives_per_micrograph`` random locations at least
    ``exclusion`` × diameter from every pick, positive or negative, and a radius inside the edges."""
    pos = np.asarray(positives_xy, float).reshape(-1, 2)
    neg = np.asarray(negatives_xy, float).reshape(-1, 2)
    diameter_px = opts.diameter / pixel_size
    if len(pos) and len(neg):
        d, _ = cKDTree(pos).query(neg)
        neg = neg[d > 0.2 * diameter_px]
    shape = (features.shape[1] * factor, features.shape[2] * factor)
    known = np.concatenate([pos, neg])
    background = random_negatives(shape, known, opts.negatives_per_micrograph, opts.exclusion * diameter_px,
                                  diameter_px / 2, rng)
    angles = rng.uniform(0, 2 * np.pi, (len(pos), opts.shifted_negatives))
    off = opts.shift * diameter_px * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    shifted = (pos[:, None, :] + off).reshape(-1, 2)
    return (sample_features(features, factor, pos),
            sample_features(features, factor, np.concatenate([neg, background, shifted])))


def pick_learned(scorer: LearnedScorer, features: np.ndarray, factor: int, pixel_size: float) -> pd.DataFrame:
    """Picks of one micrograph from its feature maps, sorted by probability: rlnCoordinateX/Y (full-size
    pixels), rlnAutopickFigureOfMerit (probability)."""
    opts = scorer.opts
    score = scorer.score_map(features)
    apix = pixel_size * factor
    distance = (opts.min_distance if opts.min_distance else 0.8 * opts.diameter) / apix
    edge = opts.diameter / 2 / apix
    fine_rows, fine_cols, merit = select_peaks(score, score, distance, edge, opts.threshold)
    return pd.DataFrame({
        "rlnCoordinateX": np.round(fine_cols * factor, 1),
        "rlnCoordinateY": np.round(fine_rows * factor, 1),
        "rlnAutopickFigureOfMerit": merit.astype(float),
    })


def _xy(table) -> np.ndarray:
    """(n, 2) x, y of a coordinate table (None or empty: no rows)."""
    if table is None or len(table) == 0:
        return np.zeros((0, 2))
    return table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)


def train_scorer(load, positives: dict, negatives: dict, opts: LearnedOptions, *, rounds: int = 2,
                 progress=None) -> tuple[LearnedScorer, dict]:
    """Train a scorer on the micrographs that have positives, then refine it by self-training.

    ``load(name)`` returns (micrograph (rows, cols), pixel size Å); ``positives`` / ``negatives`` map a
    micrograph name to its coordinate table (rlnCoordinateX/Y, full-size pixels).  Only micrographs with
    positives are used: random negatives are safe only where the pickers have looked.  Each of the
    ``rounds`` self-training rounds replaces the positives by the scorer's own picks on those micrographs
    (better centred than the pickers' averaged coordinates, and the particles they missed), keeping the
    given negatives.  Returns (scorer, counts of examples per round)."""
    rng = np.random.default_rng(opts.seed)
    names = [n for n, t in positives.items() if t is not None and len(t)]
    if not names:
        raise ValueError("no positive coordinates: the learned picker trains on picks several pickers agree on")
    current = {n: _xy(positives[n]) for n in names}
    history = []
    scorer = None
    for round_ in range(rounds + 1):
        pos_rows, neg_rows = [], []
        picks = {}
        for i, name in enumerate(names):
            image, pixel = load(name)
            features, factor = feature_maps(image, pixel, opts)
            if scorer is not None:
                own = pick_learned(scorer, features, factor, pixel)
                current[name] = _xy(own[own.rlnAutopickFigureOfMerit >= max(opts.threshold, 0.5)])
                picks[name] = len(current[name])
            p, n = training_rows(features, factor, pixel, current[name], _xy(negatives.get(name)), opts, rng)
            pos_rows.append(p)
            neg_rows.append(n)
            if progress:
                progress(round_ * len(names) + i + 1, (rounds + 1) * len(names))
        positive, negative = np.concatenate(pos_rows), np.concatenate(neg_rows)
        if len(positive) < 2:
            break  # the scorer found (almost) nothing of its own: keep the previous round's
        scorer = LearnedScorer(opts).fit(positive, negative)
        history.append({"round": round_, "positives": int(len(positive)), "negatives": int(len(negative))})
    return scorer, {"micrographs": len(names), "rounds": history}


def score_coordinates(scorer: LearnedScorer, image: np.ndarray, pixel_size: float, xy) -> np.ndarray:
    """The scorer's probability at full-size pixel coordinates ``xy`` (n, 2) of one micrograph: the best
    within a binned pixel of each (a coordinate a picker put a few pixels off centre is not penalised)."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros(0)
    features, factor = feature_maps(image, pixel_size, scorer.opts)
    score = ndimage.maximum_filter(scorer.score_map(features), size=3, mode="nearest")
    cols = np.clip(np.rint(xy[:, 0] / factor).astype(int), 0, score.shape[1] - 1)
    rows = np.clip(np.rint(xy[:, 1] / factor).astype(int), 0, score.shape[0] - 1)
    return score[rows, cols]
