"""2D references for 2D classification: in-plane rotation in Fourier space and its adjoint.

This is the 2D :class:`spa.em.model.ReferenceModel`.  A 2D class average is
treated like a map seen along z: the "projection" at in-plane angle ψ
(RELION's rlnAnglePsi, rot = tilt = 0) samples the class transform at
Aᵀ·(kx, ky) with A = euler_to_matrix(0, 0, ψ), i.e. the frequency rotated by
+ψ counter-clockwise — the same convention as the 3D projector, so a 2D ψ
means the same thing as the ψ of a 3D pose.

Interpolation is bilinear on a grid padded ``pad`` times (RELION's padding
factor 2); the reference is divided by the bilinear gridding factor
sinc²(πx/P)·sinc²(πy/P) before the transform; reconstructions are the shared
:func:`spa.em.reconstruction.reconstruct` (the 3D maps' too), which divides by
it after the inverse transform.  :meth:`InplaneReferences.insert` is the
exact transpose of :meth:`InplaneReferences.project` (scatter-add with the same
weights), so the M-step is the adjoint of the forward model.
"""

from __future__ import annotations

import numpy as np

from spa.backend import OnBackend, array_module, backend_of
from spa.em.gridding import gridding_factor, pad_centered, padded_size
from spa.em.projector import cuda_for
from spa.em.reconstruction import reconstruct
from spa.fourier import radial_average, rfft_centered, shells_2d


def bilinear_setup(q, padded: int):
    """Neighbour indices and weights for 2D points ``q`` (…, 2) = (x, y) in padded Fourier pixels.

    Points with qx < 0 are reflected through the origin (Friedel symmetry) so
    they fall in the stored half grid; ``conj`` marks them.  Returns
    (flat_index (…, 4), weight (…, 4) float32, conj (…)) for a (P, P//2+1) grid.
    """
    xp = array_module(q)
    conj = q[..., 0] < 0
    q = xp.where(conj[..., None], -q, q)
    base = xp.floor(q)
    frac = (q - base).astype(xp.float32)
    base = base.astype(xp.int64)
    half = padded // 2 + 1
    x0 = xp.minimum(base[..., 0], half - 1)
    x1 = xp.minimum(x0 + 1, half - 1)
    y0 = base[..., 1] % padded
    y1 = (base[..., 1] + 1) % padded
    fx, fy = frac[..., 0], frac[..., 1]
    idx = xp.stack([y0 * half + x0, y0 * half + x1, y1 * half + x0, y1 * half + x1], axis=-1)
    w = xp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1)
    return idx, w, conj


def rotated_coordinates(psi_deg, jx, jy, pad: float):
    """pad·Aᵀ(jx, jy) for in-plane angles ψ (R,) in degrees → (R, F, 2) padded-grid coordinates."""
    xp = array_module(jx)
    psi = xp.asarray(np.deg2rad(np.asarray(psi_deg, dtype=np.float64)), dtype=xp.float32)
    c = xp.cos(psi)[:, None]
    s = xp.sin(psi)[:, None]
    # A = [[c, s], [-s, c]] (RELION, rot = tilt = 0); Aᵀ j = (c·jx − s·jy, s·jx + c·jy)
    qx = c * jx[None, :] - s * jy[None, :]
    qy = s * jx[None, :] + c * jy[None, :]
    return pad * xp.stack([qx, qy], axis=-1)


class AngleTable:
    """Bilinear setups of in-plane angles at one pixel set, computed once per angle and gathered after.

    :meth:`lookup` returns corner-major ``(index (4, R, F), weight (4, R, F), conj (R, F))``:
    a projection is then four contiguous gathers and multiply-adds, 3× faster than a sum over a
    trailing axis of length 4; with ``point_major`` (R, F, 4), the layout insertion's sparse product
    reads (kept too: transposing per call cost 40 % of an insertion).  Rows are appended (capacity
    doubling) and found through a small sorted host index, so new angles cost their own setup only.  Angles are keyed to 10⁻⁶ degree.
    The table is bounded (``MAX_ENTRIES`` corner entries); a lookup that would overflow it (e.g.
    local searches with continuous angles) starts it again.
    """

    MAX_ENTRIES = 1 << 24  # corners held, both layouts (int32 index + float32 weight: ~128 MB)

    def __init__(self, pad: float, padded: int, xp):
        import threading

        self.pad, self.padded, self.xp = pad, padded, xp
        self.itype = xp.int32 if padded * (padded // 2 + 1) < 2**31 else xp.int64
        self._lock = threading.Lock()  # Dask may run chunks in threads sharing the references
        self._reset()

    def _reset(self):
        self.codes = np.zeros(0, np.int64)  # sorted angle keys (host)
        self.rows = np.zeros(0, np.int64)  # table row of each key
        self.n = 0
        self.idx = self.w = self.conj = None  # (4, capacity, F), (4, capacity, F), (capacity, F)
        self.idx_pm = self.w_pm = None  # (capacity, F, 4) each

    def lookup(self, rotations, active, point_major: bool = False):
        xp = self.xp
        angles = np.asarray(rotations if isinstance(rotations, np.ndarray) else backend_of(rotations).to_numpy(rotations),
                            np.float64).reshape(-1)
        codes = np.rint(angles * 1e6).astype(np.int64)
        with self._lock:
            pos = np.searchsorted(self.codes, codes)
            known = (pos < self.codes.size) & (self.codes[np.minimum(pos, self.codes.size - 1)] == codes) \
                if self.codes.size else np.zeros(codes.size, bool)
            if not known.all():
                self._add(np.unique(codes[~known]), np.unique(codes), active)
                pos = np.searchsorted(self.codes, codes)
            take = xp.asarray(self.rows[pos])
            if point_major:
                return self.idx_pm[take], self.w_pm[take], self.conj[take]
            return self.idx[:, take], self.w[:, take], self.conj[take]

    def _add(self, new_codes, wanted_codes, active):
        """Append the setups of ``new_codes``; when the table would overflow, start again with
        just ``wanted_codes`` (all the current lookup needs)."""
        xp = self.xp
        f = active.size
        max_rows = max(1, self.MAX_ENTRIES // (8 * max(f, 1)))
        if self.n + new_codes.size > max_rows:
            self._reset()
            new_codes = wanted_codes
        idx, w, conj = bilinear_setup(rotated_coordinates(new_codes / 1e6, active.jx, active.jy, self.pad), self.padded)
        n_new = new_codes.size
        capacity = 0 if self.idx is None else self.idx.shape[1]
        if self.n + n_new > capacity:
            capacity = max(2 * capacity, self.n + n_new, 64)
            grown = (xp.empty((4, capacity, f), self.itype), xp.empty((4, capacity, f), xp.float32),
                     xp.empty((capacity, f), bool), xp.empty((capacity, f, 4), self.itype),
                     xp.empty((capacity, f, 4), xp.float32))
            if self.n:
                grown[0][:, :self.n] = self.idx[:, :self.n]
                grown[1][:, :self.n] = self.w[:, :self.n]
                grown[2][:self.n] = self.conj[:self.n]
                grown[3][:self.n] = self.idx_pm[:self.n]
                grown[4][:self.n] = self.w_pm[:self.n]
            self.idx, self.w, self.conj, self.idx_pm, self.w_pm = grown
        rows = slice(self.n, self.n + n_new)
        self.idx[:, rows] = xp.moveaxis(idx, -1, 0)
        self.w[:, rows] = xp.moveaxis(w, -1, 0)
        self.conj[rows] = conj
        self.idx_pm[rows] = idx
        self.w_pm[rows] = w
        codes = np.concatenate([self.codes, new_codes])
        table_rows = np.concatenate([self.rows, np.arange(self.n, self.n + n_new)])
        order = np.argsort(codes, kind="stable")
        self.codes, self.rows, self.n = codes[order], table_rows[order], self.n + n_new


def _interpolate(flat, idx, w, conj):
    """Bilinear values of ``flat`` (…, P·(P//2+1)) at corner-major setups (4, R, F) → complex64 (…, R, F)."""
    xp = array_module(flat)
    vals = flat[..., idx[0]] * w[0]
    for c in range(1, 4):
        vals += flat[..., idx[c]] * w[c]
    return xp.where(conj, vals.conj(), vals).astype(xp.complex64, copy=False)


class InplaneReferences(OnBackend):
    """K 2D class references, ready for in-plane rotated "projections" and insertion.

    ``refs.on(xp)`` gives them on another backend (chunks run where their images are).

    Parameters
    ----------
    images : (K, B, B) float32 real-space class averages (centre at B//2).
    pad : padding factor for interpolation (2 as RELION).

    Rotations are in-plane angles ψ in degrees (array (R,)).  ``active`` is an
    :class:`spa.em.estep.ActivePixels` (flat rfft indices with their (jx, jy)).
    """

    ndim = 2
    _array_fields = ("images", "fourier")
    _transient_fields = ("_backend_copies", "_setup_cache")

    def __init__(self, images, pad: float = 2.0):
        xp = array_module(images)
        self.xp = xp
        images = xp.asarray(images, dtype=xp.float32)
        self.images = images
        self.n_classes = int(images.shape[0])
        self.box = int(images.shape[-1])
        self.padded = padded_size(self.box, pad)
        self.pad = self.padded / self.box
        g = gridding_factor(self.box, self.padded, 2, xp)
        padded = xp.stack([pad_centered(im / g, self.padded) for im in images]) if self.n_classes else \
            xp.zeros((0, self.padded, self.padded), xp.float32)
        self.fourier = rfft_centered(padded, 2).astype(xp.complex64)  # (K, P, P//2+1)

    # -- forward model ------------------------------------------------------------
    def _setup(self, rotations, active, point_major: bool = False):
        """Interpolation setup of ``rotations`` (ψ, degrees) at the ``active`` pixels, from a per-angle cache.

        It depends only on the angle and the pixel set, not on the class or the data, and the
        E-step asks for the same few hundred angles once per class for projection and again for
        insertion in every chunk: gathering rows of a table is ~20× cheaper than recomputing them.
        """
        cache = self.__dict__.setdefault("_setup_cache", {})
        key = (active.box, active.size)  # ActivePixels of one box are prefixes of one sorted order
        table = cache.get(key)
        if table is None:
            table = cache.setdefault(key, AngleTable(self.pad, self.padded, self.xp))
        return table.lookup(rotations, active, point_major)

    def project_all(self, rotations, active):
        """All classes at all rotations: complex64 (K, R, F)."""
        ck = cuda_for(self.fourier)
        if ck is not None:  # one launch for every class and angle; the weights are formed on the fly
            angles = np.asarray(backend_of(rotations).to_numpy(rotations), np.float64).reshape(-1)
            k, r = self.n_classes, angles.size
            rows = ck.project2d(self.fourier, np.repeat(np.arange(k), r), np.tile(angles, k), active.jx, active.jy,
                                self.pad, self.padded)
            return rows.reshape(k, r, -1)
        return _interpolate(self.fourier.reshape(self.n_classes, -1), *self._setup(rotations, active))

    def project(self, class_index: int, rotations, active):
        """Class ``class_index`` at rotations ψ (R,): complex64 (R, F) at the active pixels."""
        ck = cuda_for(self.fourier)
        if ck is not None:
            return ck.project2d(self.fourier, int(class_index), rotations, active.jx, active.jy, self.pad, self.padded)
        return _interpolate(self.fourier[class_index].reshape(-1), *self._setup(rotations, active))

    def project_rows(self, classes, rotations, active):
        """Row u: class ``classes[u]`` at ψ = ``rotations[u]``, complex64 (U, F), in one CUDA launch; None
        where the CUDA kernels do not run (the caller then calls :meth:`project` per class)."""
        ck = cuda_for(self.fourier)
        if ck is None:
            return None
        return ck.project2d(self.fourier, classes, rotations, active.jx, active.jy, self.pad, self.padded)

    # -- adjoint: weighted sums for the M-step ------------------------------------------
    def new_sums(self) -> dict:
        """Empty accumulators: ``data`` complex128 and ``weight`` float64, (K, P, P//2+1)."""
        shape = (self.n_classes, self.padded, self.padded // 2 + 1)
        return {"data": self.xp.zeros(shape, self.xp.complex128), "weight": self.xp.zeros(shape, self.xp.float64)}

    def insert(self, sums: dict, class_index: int, rotations, active, data, weight) -> None:
        """Add per-pose sums (R, F) back into class ``class_index``'s frame (transpose of :meth:`project`)."""
        if self.insert_rows(sums, int(class_index), rotations, active, data, weight):
            return
        xp = self.xp
        be = backend_of(sums["data"])
        idx, w, conj = self._setup(rotations, active, point_major=True)
        data = xp.where(conj, xp.asarray(data).conj(), xp.asarray(data))
        be.add_interpolated([sums["data"][class_index], sums["weight"][class_index]], [data, xp.asarray(weight)],
                            idx, w, corner_axis=-1)

    def insert_rows(self, sums: dict, classes, rotations, active, data, weight) -> bool:
        """Row u of ``data`` / ``weight`` (U, F) into class ``classes[u]`` (an int: every row) at ψ =
        ``rotations[u]``, all classes in one deterministic CUDA launch; False (nothing done) where the
        CUDA kernels do not run (the caller then calls :meth:`insert` per class)."""
        ck = cuda_for(sums["data"], sums["weight"])
        if ck is None or not ck.grids_supported(sums["data"], sums["weight"]):
            return False
        ck.insert2d(sums["data"], sums["weight"], classes, rotations, active.jx, active.jy, data, weight, self.pad,
                    self.padded)
        return True

    # -- spectra and reconstruction -------------------------------------------------
    def power_spectrum(self):
        """Per-class signal power per shell (K, B//2+1): mean |V̂|²/2 (per real component, as σ²)."""
        xp = self.xp
        f = rfft_centered(self.images, 2)
        sh = shells_2d(self.box, xp)
        return radial_average((f.real**2 + f.imag**2) / 2, sh, self.box // 2 + 1).astype(xp.float64)

    def reconstruct(self, sums: dict, tau2, tau2_fudge: float, mask_radius_px: float | None = None,
                    mask_edge_px: float = 5.0, max_shell: int | None = None):
        """Wiener/MAP update V = Σ ΓCX/σ² ÷ (Σ ΓC²/σ² + 1/(T·τ²)) for every class.

        ``tau2`` (K, B//2+1) per-component signal power per shell; ``max_shell``
        zeroes frequencies beyond it (radius ≥ max_shell + ½, what the E-step
        inserted).  Returns (new :class:`InplaneReferences`, data_vs_prior
        (K, B//2+1): mean of weight·T·τ² per shell, RELION's SSNR estimate).  The
        padded weights are ``pad²`` times thinner than an unpadded grid's, so the
        regulariser is scaled likewise (as RELION).  The same function as the 3D
        maps' (:func:`spa.em.reconstruction.reconstruct`).
        """
        nsh = self.box // 2 + 1
        max_shell = nsh - 1 if max_shell is None else min(int(max_shell), nsh - 1)
        images, dvp = reconstruct(sums["data"], sums["weight"], self.box, 2, tau2=tau2, tau2_fudge=tau2_fudge,
                                  max_radius=max_shell + 0.5, mask_radius_px=mask_radius_px,
                                  mask_edge_px=mask_edge_px)
        return InplaneReferences(images, self.pad), dvp

    def with_images(self, images) -> "InplaneReferences":
        return InplaneReferences(images, self.pad)

    def __getstate__(self):
        return {"images": backend_of(self.images).to_numpy(self.images), "pad": self.pad}

    def __setstate__(self, state):
        self.__init__(state["images"], state["pad"])


class InplaneSampling:
    """ψ and shift grid for 2D classification, with RELION's adaptive oversampling (order 1).

    Coarse ψ: 0, step, … (``psi_step`` degrees, RELION default 6°); coarse
    shifts: the square ``offset_step`` grid inside a disc of ``offset_range``
    (pixels, RELION defaults 5 and 1).  Each coarse ψ has ``2**oversampling``
    children ψ − step/2 + (j + ½)·step/2ᵒ, each coarse shift ``4**oversampling``
    children likewise in x and y (see :mod:`spa.geometry.sampling`).
    """

    def __init__(self, psi_step: float = 6.0, offset_range: float = 5.0, offset_step: float = 1.0,
                 oversampling: int = 1):
        from spa.geometry.sampling import oversampled_translations, translation_grid

        if not 0 < psi_step <= 360:
            raise ValueError(f"psi step must be in (0, 360] degrees, got {psi_step!r}")
        n = max(1, int(round(360.0 / psi_step)))
        self.psi_step = 360.0 / n
        self.offset_step = float(offset_step)
        self.offset_range = float(offset_range)
        self.oversampling = int(oversampling)
        o = self.oversampling
        self.coarse_rotations = np.arange(n) * self.psi_step
        k = 2**o
        sub = -0.5 * self.psi_step + (np.arange(k) + 0.5) * self.psi_step / k
        self.rotation_children = k
        self.fine_rotations = (self.coarse_rotations[:, None] + sub[None, :]).reshape(-1) % 360.0
        self.coarse_translations = translation_grid(offset_range, offset_step)
        fine = oversampled_translations(self.coarse_translations, offset_step, o)  # (S0, 4^o, 2)
        self.translation_children = fine.shape[1]
        self.fine_translations = fine.reshape(-1, 2)

    @property
    def fine_psi_step(self) -> float:
        return self.psi_step / self.rotation_children
