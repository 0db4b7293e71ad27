"""3D references for 3D classification, refinement and ab initio.

The 3D implementation of the reference-model protocol that the E-step uses
(see :class:`spa.em.inplane.InplaneReferences` for the 2D one): K maps,
"projected" at rotations given as RELION Euler angles (R, 3) = (rot, tilt,
psi) in degrees by Fourier-slice interpolation (:mod:`spa.em.projector`), and
the exact transpose for the M-step sums (:mod:`spa.em.backprojector`).
Sums live on the padded half grid; :meth:`VolumeReferences.reconstruct` is
the MAP/Wiener update (:func:`spa.em.reconstruction.reconstruct`, shared with 2D)
with τ² per shell (classification: from the reference power; gold-standard
refinement: from the half-map FSC via the SSNR).
"""

from __future__ import annotations

import numpy as np

from spa.backend import OnBackend, array_module, backend_of
from spa.em.gridding import gridding_factor, pad_centered, padded_size
from spa.em.projector import cuda_for, gather_slices, scatter_slices
from spa.em.reconstruction import reconstruct
from spa.fourier import radius_3d, rfft_centered
from spa.geometry.euler import euler_to_matrix


def rotation_matrices(rotations, xp):
    """(R, 3) Euler angles in degrees → (R, 3, 3) matrices on the backend (float32)."""
    r = np.asarray(backend_of(rotations).to_numpy(rotations) if not isinstance(rotations, np.ndarray) else rotations)
    return xp.asarray(euler_to_matrix(r[:, 0], r[:, 1], r[:, 2]), dtype=xp.float32)


class VolumeReferences(OnBackend):
    """K 3D references (K, B, B, B) float32, centred at B//2, ready to project and to insert into.

    ``refs.on(xp)`` gives them on another backend (chunks run where their images are)."""

    ndim = 3
    _array_fields = ("images", "fourier")

    def __init__(self, volumes, pad: float = 2.0, symmetry=None):
        xp = array_module(volumes)
        # point-group matrices (n, 3, 3): every pose is inserted once per group element
        self.symmetry = None if symmetry is None else np.asarray(symmetry, dtype=np.float64)
        self.xp = xp
        volumes = xp.asarray(volumes, dtype=xp.float32)
        if volumes.ndim == 3:
            volumes = volumes[None]
        self.images = volumes  # the name the engine uses for the references in real space
        self.n_classes = int(volumes.shape[0])
        self.box = int(volumes.shape[-1])
        self.padded = padded_size(self.box, pad)
        self.pad = self.padded / self.box
        g = gridding_factor(self.box, self.padded, 3, xp)
        self.fourier = xp.stack([rfft_centered(pad_centered(v / g, self.padded), 3) for v in volumes]).astype(
            xp.complex64
        )

    # -- forward model ------------------------------------------------------------
    def project_all(self, rotations, active):
        """All classes at all rotations: complex64 (K, R, F) at the active pixels."""
        xp = self.xp
        mats = rotation_matrices(rotations, xp)
        return xp.stack([gather_slices(self.fourier[k].reshape(-1), mats, active.jx, active.jy, self.pad,
                                       self.padded) for k in range(self.n_classes)])

    def project(self, class_index: int, rotations, active):
        """Class ``class_index`` at rotations (R, 3): complex64 (R, F)."""
        mats = rotation_matrices(rotations, self.xp)
        return gather_slices(self.fourier[class_index].reshape(-1), mats, active.jx, active.jy, self.pad,
                             self.padded)

    def project_rows(self, classes, rotations, active):
        """Row u: class ``classes[u]`` at Euler angles ``rotations[u]`` (U, 3), complex64 (U, F), in one
        CUDA launch; None where the CUDA kernels do not run (the caller then calls :meth:`project` per
        class)."""
        ck = cuda_for(self.fourier)
        if ck is None:
            return None
        return ck.project3d(self.fourier, classes, rotation_matrices(rotations, self.xp), active.jx, active.jy,
                            self.pad, self.padded)

    # -- adjoint ----------------------------------------------------------------------
    def insert_rows(self, sums: dict, classes, rotations, active, data, weight) -> bool:
        """Row u of ``data`` / ``weight`` (U, F) into class ``classes[u]`` at Euler angles ``rotations[u]``
        (every symmetry copy), all rows in one deterministic fixed-point accumulation on the GPU; False
        (nothing done) where the CUDA kernels do not run or a subclass inserts its own way (the caller
        then calls :meth:`insert` per class)."""
        ck = cuda_for(sums["data"], sums["weight"])
        if ck is None or type(self).insert is not VolumeReferences.insert \
                or not ck.grids_supported(sums["data"], sums["weight"]):
            return False
        xp = self.xp
        mats = rotation_matrices(rotations, xp)
        syms = np.eye(3)[None] if self.symmetry is None else self.symmetry
        sets = [mats @ xp.asarray(sym, dtype=xp.float32) for sym in syms]
        ck.insert3d(sums["data"], sums["weight"], classes, sets, active.jx, active.jy, data, weight, self.pad,
                    self.padded)
        return True

    def new_sums(self) -> dict:
        shape = (self.n_classes, self.padded, self.padded, self.padded // 2 + 1)
        return {"data": self.xp.zeros(shape, self.xp.complex128), "weight": self.xp.zeros(shape, self.xp.float64)}

    def insert(self, sums: dict, class_index: int, rotations, active, data, weight) -> None:
        """Add per-pose sums (R, F) into class ``class_index`` (transpose of :meth:`project_all`)."""
        if self.insert_rows(sums, int(class_index), rotations, active, data, weight):
            return
        xp = self.xp
        be = backend_of(sums["data"])
        mats = rotation_matrices(rotations, xp)
        weight = xp.asarray(weight)
        data = xp.asarray(data)
        for sym in (np.eye(3)[None] if self.symmetry is None else self.symmetry):
            # a projection at A of a map invariant under R is also its projection at A·R
            scatter_slices(be, sums["data"][class_index].reshape(-1), sums["weight"][class_index].reshape(-1),
                           mats @ xp.asarray(sym, dtype=xp.float32), active.jx, active.jy, data, weight,
                           self.pad, self.padded)

    # -- spectra and reconstruction -------------------------------------------------
    def power_spectrum(self):
        """Per-class signal power per shell (K, B//2+1): mean |V̂|²/2 of a central section.

        A slice of the 3D transform carries the map's power scaled by B (sum
        along z), so the per-pixel power that images see is B² × the 3D
        spectrum of the map's transform normalised per voxel; computed directly
        from the padded transform's shells for consistency with the E-step.
        """
        xp = self.xp
        nsh = self.box // 2 + 1
        sh = xp.rint(radius_3d(self.padded, xp) / self.pad).astype(xp.int64).reshape(-1)
        keep = sh < nsh
        out = []
        for k in range(self.n_classes):
            p = (xp.abs(self.fourier[k]) ** 2).reshape(-1)[keep] / 2
            tot = xp.bincount(sh[keep], weights=p, minlength=nsh)
            cnt = xp.bincount(sh[keep], minlength=nsh)
            out.append(tot / xp.maximum(cnt, 1))
        return xp.stack(out).astype(xp.float64)

    def reconstruct(self, sums: dict, tau2, tau2_fudge: float, mask_radius_px: float | None = None,
                    mask_edge_px: float = 5.0, max_shell: int | None = None, ssnr=None):
        """MAP update V = Σ ΓCX/σ² ÷ (Σ ΓC²/σ² + 1/(T·τ²)) per class (τ² (K, B//2+1) per component).

        ``ssnr`` (K, B//2+1), gold-standard refinement: the regulariser is
        W̄_shell / SSNR_shell instead (SSNR = T·FSC/(1 − FSC) from the half
        maps, which is RELION's τ² = SSNR·σ²_recon with σ²_recon = 1/W̄).
        ``tau2=None`` and ``ssnr=None``: the plain ratio with a small floor
        (like :meth:`spa.em.backprojector.BackProjector.reconstruct`).
        ``max_shell``: the last shell kept (the E-step inserted pixels of rounded
        shell ≤ max_shell, i.e. radius < max_shell + ½).  Symmetry is imposed by
        the caller by inserting every pose once per group element.  The steps are
        :func:`spa.em.reconstruction.reconstruct`'s, shared with 2D.
        Returns (new references, data_vs_prior (K, B//2+1), zeros without τ²).
        """
        xp = self.xp
        nsh = self.box // 2 + 1
        max_shell = nsh - 1 if max_shell is None else min(int(max_shell), nsh - 1)
        use_tau2 = tau2 is not None and ssnr is None
        vols, dvp = reconstruct(sums["data"], sums["weight"], self.box, 3, tau2=tau2 if use_tau2 else None,
                                tau2_fudge=tau2_fudge, ssnr=ssnr, max_radius=max_shell + 0.5,
                                mask_radius_px=mask_radius_px, mask_edge_px=mask_edge_px)
        if dvp is None:
            dvp = xp.zeros((self.n_classes, nsh), xp.float64)
        return VolumeReferences(vols, self.pad, self.symmetry), dvp

    def with_images(self, volumes) -> "VolumeReferences":
        return VolumeReferences(volumes, self.pad, self.symmetry)

    def __getstate__(self):
        return {"images": backend_of(self.images).to_numpy(self.images), "pad": self.pad, "symmetry": self.symmetry}

    def __setstate__(self, state):
        self.__init__(state["images"], state["pad"], state.get("symmetry"))
