"""Model state (RELION's MlModel) and the E-step's weighted sums (MlWsumModel).

The engine is generic over two small protocols, so 2D classification, 3D
classification, refinement and ab initio share the E-step, the sums and the
M-step.

ReferenceModel — the current references and how poses act on them
--------------------------------------------------------------------
``n_classes`` : int; ``box`` : int (B); ``ndim`` : 2 or 3.

``project(class_index, rotations, active) -> complex64 (R, F)``
    The class's transform as an image at R poses, sampled at the active
    pixels ``active`` (:class:`spa.em.estep.ActivePixels`: ``index``, ``jx``,
    ``jy`` in Fourier pixels of the B box, ``shell``).  2D: ``rotations`` are
    in-plane angles ψ (R,) in degrees (:class:`spa.em.inplane.InplaneReferences`);
    3D: Euler matrices (R, 3, 3), i.e. ``Projector(volume).project_active(
    rotations, active.index, active.jx, active.jy)``.
``project_all(rotations, active) -> complex64 (K, R, F)``
    All classes at the same poses (pass 1 of the E-step).
``new_sums() -> dict``
    Empty accumulators in the class frame (2D: ``data``/``weight`` on the padded
    half grid per class; 3D: one BackProjector's data and weight per class).
    Must be a dict of arrays so sums add elementwise in a tree reduction.
``insert(sums, class_index, rotations, active, data (R, F), weight (R, F))``
    Transpose of ``project``: adds Σ Γ·C·X·P/σ² and Σ Γ·C²/σ² at R poses into
    ``sums`` (3D: ``BackProjector.insert_active`` with the same arguments).
``reconstruct(sums, tau2 (K, B//2+1), tau2_fudge, ...) -> (new ReferenceModel, data_vs_prior (K, B//2+1))``
    The MAP update V = data ÷ (weight + 1/(T·τ²)) (Scheres 2012).
``power_spectrum() -> (K, B//2+1)``
    Per-class signal power per shell, mean |V̂|²/2 (the unit of σ²).
The object must pickle (it is broadcast to Dask workers once per iteration).

Sampling — the pose grid and its oversampled children
-----------------------------------------------------
``coarse_rotations`` (R0, …) and ``coarse_translations`` (S0, 2) pixels;
``rotation_children`` / ``translation_children`` (c_r, c_t); ``fine_rotations``
(R0·c_r, …) and ``fine_translations`` (S0·c_t, 2) with child j of coarse
sample r at index r·c_r + j.  (:class:`spa.em.inplane.InplaneSampling` for 2D.)
A sampling with ``local = True`` (:class:`spa.em.sampling3d.LocalSampling`,
:class:`spa.em.sampling3d.FixedPoses`) has no shared grid to score: its
``candidates(priors)`` lists each particle's own coarse orientations (grid
indices) with a log prior, ``log_prior(angles, priors)`` scores fine ones, and
``coarse_rotations`` / ``fine_rotations`` turn indices into Euler angles on
demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from spa.backend import backend_of
from spa.fourier import resolution_of


@runtime_checkable
class ReferenceModel(Protocol):
    """The current references and how poses act on them (see the module docstring)."""

    n_classes: int
    box: int
    ndim: int

    def project(self, class_index: int, rotations, active) -> object:
        """Class ``class_index`` at R poses: complex64 (R, F) at the active pixels."""

    def project_all(self, rotations, active) -> object:
        """Every class at the same R poses: complex64 (K, R, F)."""

    def new_sums(self) -> dict:
        """Empty accumulators in the class frame (a dict of arrays that add elementwise)."""

    def insert(self, sums: dict, class_index: int, rotations, active, data, weight) -> None:
        """The transpose of :meth:`project`: add data (R, F) and weights (R, F) into ``sums``."""

    def reconstruct(self, sums: dict, tau2, tau2_fudge: float, **kwargs) -> tuple:
        """The MAP update → (new references, data_vs_prior (K, B//2+1))."""

    def power_spectrum(self) -> object:
        """Per-class signal power per shell (K, B//2+1), mean |V̂|²/2."""


@runtime_checkable
class Sampling(Protocol):
    """A pose grid and its oversampled children (see the module docstring)."""

    coarse_rotations: object
    fine_rotations: object
    coarse_translations: object
    fine_translations: object
    rotation_children: int
    translation_children: int


@runtime_checkable
class LocalSearch(Sampling, Protocol):
    """A sampling with no shared grid: each particle's own candidates around its prior pose."""

    local: bool

    def candidates(self, priors) -> tuple:
        """(image rows, coarse orientation keys, log prior) per candidate, image-major."""

    def log_prior(self, angles, priors) -> object:
        """Log prior of fine orientations (n, 3) around priors (n, 3), degrees."""


@dataclass
class MlModel:
    """Everything the next iteration needs besides the references (host NumPy arrays).

    ``pdf_class`` (K,) class fractions (rlnClassDistribution);
    ``sigma2_noise`` (G, B//2+1) noise power per optics group and shell
    (per real component; rlnSigma2Noise); ``tau2`` (K, B//2+1) signal power
    used as prior (rlnReferenceTau2); ``data_vs_prior`` (K, B//2+1) SSNR
    estimate (rlnSsnrMap); ``sigma_offset_px`` prior width of offsets in pixels
    (rlnSigmaOffsetsAngst / pixel size); ``current_shells``: Fourier window
    (shells 0 … current_shells−1 take part); ``resolution_shell`` (K,) last
    shell with SSNR ≥ 1 per class.
    """

    box: int
    pixel_size: float
    n_classes: int
    n_groups: int
    pdf_class: np.ndarray
    sigma2_noise: np.ndarray
    tau2: np.ndarray
    data_vs_prior: np.ndarray
    sigma_offset_px: float
    current_shells: int
    resolution_shell: np.ndarray
    iteration: int = 0
    loglike: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n_shells(self) -> int:
        return self.box // 2 + 1

    @classmethod
    def initial(cls, box, pixel_size, n_classes, sigma2_noise, sigma_offset_px, current_shells):
        nsh = box // 2 + 1
        return cls(
            box=int(box), pixel_size=float(pixel_size), n_classes=int(n_classes),
            n_groups=int(sigma2_noise.shape[0]),
            pdf_class=np.full(n_classes, 1.0 / n_classes), sigma2_noise=np.asarray(sigma2_noise, np.float64),
            tau2=np.zeros((n_classes, nsh)), data_vs_prior=np.zeros((n_classes, nsh)),
            sigma_offset_px=float(sigma_offset_px), current_shells=int(current_shells),
            resolution_shell=np.zeros(n_classes, np.int64),
        )

    def resolution_angstrom(self) -> np.ndarray:
        """Per-class resolution in Å (rlnEstimatedResolution; 999 when no shell has SSNR ≥ 1)."""
        return np.asarray(resolution_of(self.resolution_shell, self.box, self.pixel_size), np.float64)

    def to_arrays(self, prefix: str = "model_") -> dict:
        out = {}
        for name in ("box", "pixel_size", "n_classes", "n_groups", "pdf_class", "sigma2_noise", "tau2",
                     "data_vs_prior", "sigma_offset_px", "current_shells", "resolution_shell", "iteration",
                     "loglike"):
            out[prefix + name] = np.asarray(getattr(self, name))
        for k, v in self.extra.items():
            out[prefix + "extra_" + k] = np.asarray(v)
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "model_") -> "MlModel":
        def get(name):
            return arrays[prefix + name]

        extra = {k[len(prefix) + 6:]: np.asarray(arrays[k]) for k in arrays if k.startswith(prefix + "extra_")}
        return cls(
            box=int(get("box")), pixel_size=float(get("pixel_size")), n_classes=int(get("n_classes")),
            n_groups=int(get("n_groups")), pdf_class=np.array(get("pdf_class")),
            sigma2_noise=np.array(get("sigma2_noise")), tau2=np.array(get("tau2")),
            data_vs_prior=np.array(get("data_vs_prior")), sigma_offset_px=float(get("sigma_offset_px")),
            current_shells=int(get("current_shells")), resolution_shell=np.array(get("resolution_shell")),
            iteration=int(get("iteration")), loglike=float(get("loglike")), extra=extra,
        )


@dataclass
class WsumModel:
    """Weighted sums of one chunk (or of many, once added): what the M-step reads.

    ``sums``: the reference model's class-frame accumulators (``new_sums``);
    ``sigma2`` (G, B//2+1): Σ Γ·|X − C·A|² per optics group and shell (plus
    Σ|X|² beyond the Fourier window); ``sigma2_count`` (G, B//2+1): pixels
    summed (images × pixels per shell); ``class_weight`` (K,): Σ Γ per class;
    ``offset2``: Σ Γ·|t|² (px²) of absolute offsets; ``n_images``;
    ``loglike``: Σ of rlnLogLikeliContribution.  All float64, host or device.
    Two WsumModels add with ``+`` (elementwise; ``+=`` in place, the same
    bits), so a fixed order of additions gives the same result for any
    number of workers.
    """

    sums: dict
    sigma2: object
    sigma2_count: object
    class_weight: object
    offset2: float = 0.0
    n_images: int = 0
    loglike: float = 0.0

    def __add__(self, other: "WsumModel") -> "WsumModel":
        return WsumModel(
            sums={k: self.sums[k] + other.sums[k] for k in self.sums},
            sigma2=self.sigma2 + other.sigma2,
            sigma2_count=self.sigma2_count + other.sigma2_count,
            class_weight=self.class_weight + other.class_weight,
            offset2=self.offset2 + other.offset2,
            n_images=self.n_images + other.n_images,
            loglike=self.loglike + other.loglike,
        )

    def __iadd__(self, other: "WsumModel") -> "WsumModel":
        for k in self.sums:
            self.sums[k] += other.sums[k]
        self.sigma2 += other.sigma2
        self.sigma2_count += other.sigma2_count
        self.class_weight += other.class_weight
        self.offset2 += other.offset2
        self.n_images += other.n_images
        self.loglike += other.loglike
        return self

    def to_host(self) -> "WsumModel":
        """Copy of the sums as NumPy arrays (for sending between processes)."""
        def h(a):
            return backend_of(a).to_numpy(a) if hasattr(a, "shape") else a

        return WsumModel({k: h(v) for k, v in self.sums.items()}, h(self.sigma2), h(self.sigma2_count),
                         h(self.class_weight), float(self.offset2), int(self.n_images), float(self.loglike))
