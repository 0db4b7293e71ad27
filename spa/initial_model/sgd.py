"""Ab initio 3D maps by stochastic gradient descent on mini-batches (Punjani et al. 2017; RELION 4 SGD).

Start: each class is the reconstruction of a random subset of particles at
random poses, i.e. a featureless blob, low-passed to the initial resolution.
Then, for ``n_initial_iter`` iterations at the initial resolution (cheap, and
what lets a globally right low-resolution shape form before details are
fitted) and ``n_iter`` more iterations, a random mini-batch (``batch_start``
growing to ``batch_end`` images) is aligned against the current maps by the shared
E-step (:mod:`spa.em.estep`: global HEALPix search × ψ × shifts, coarse pass
then oversampled children, all as batched matrix products), and the maps take
one stochastic step:

    D ← (1 − η)·D + Σ_batch Γ·C·X/σ²,    W ← (1 − η)·W + Σ_batch Γ·C²/σ²
    V = D ÷ (W + 1/(T·τ²))

i.e. online (stochastic-approximation) EM with exponential forgetting: D and
W are the E-step's sufficient statistics summed over the last ≈ 1/η batches,
and the MAP map from them is a step of size η from the current map towards
the batch's own MAP map, V ← V + η·(V_batch − V), with numerator and
denominator averaged separately (so poorly sampled Fourier voxels move less,
as the diagonal-Hessian preconditioning of cryoSPARC's SGD does).  η (the
learning rate, default 0.4 at first) decays over the run, so early batches
are forgotten quickly and late ones average many images.  After
every step the real-space map is constrained: solvent (outside the
particle-diameter sphere) level set to 0 — this fixes the poorly measured DC
term, whose CTF weight is only Q² — non-negativity, soft spherical mask.
With ``centre`` (the default) each map is moved, whenever its positive mass
is more than ``centre_min_px`` from the box centre, so that the mass is
centred again, and the running sums D follow by the same phase ramp (RELION's
``--center_classes``, in 3D).  Nothing else fixes a map's position (the
likelihood is the same for a map moved by t and every particle moved by its
projection), and an unconstrained SGD map drifts, by 2–5 px on particles
picked from the demo's movies, until the molecule leaves the searched
offsets and the refinement's mask: refinements from such maps ended 18 Å
from the truth, from centred ones 9–10 Å.  Picks (LoG blobs, templates and
class averages centred on their mass) put the particle's mass at the box
centre, so that is the frame to keep.

Resolution rises from ``initial_resolution`` (35 Å) to ``final_resolution``
(12 Å) over the first 70 % of the ``n_iter`` iterations (linear in 1/d); the HEALPix
order follows it (order 1 = 30° coarse/15° fine, order 2 = 15°/7.5°).  K ≥ 1
classes are assigned softly (class fractions as priors).  The noise spectrum
σ² starts from the images' power spectrum and follows the batch residuals.

A final pass aligns every particle to the last maps and rebuilds them from
all particles (one full EM iteration), which also gives each particle's pose.
Randomness comes from one ``numpy.random.Generator``: same seed, same map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spa.backend import get_backend
from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.expectation import expectation
from spa.em.noise import initial_sigma2, sigma2_sums, update_sigma2
from spa.em.sampling3d import Sampling3D
from spa.fourier import phase_ramp_3d, real_radius, shells_to, soft_spherical_mask
from spa.geometry.sampling import angular_step, random_euler
from spa.initial_model.refs import AbInitioReferences, SliceGeometryCache

SOLVENT_EDGE_PX = 2.0


@dataclass
class SGDOptions:
    """Options of one SGD ab initio run (lengths in Å unless stated)."""

    n_classes: int = 1
    n_iter: int = 60
    n_initial_iter: int = 30  # iterations held at the initial resolution before the ramp (cheap: order 1)
    batch_start: int = 90
    batch_end: int = 300
    initial_resolution: float = 35.0
    final_resolution: float = 12.0
    particle_diameter: float | None = None  # default: 80 % of the box
    learning_rate: float = 0.4
    learning_rate_end: float = 0.05
    tau2_fudge: float = 4.0
    offset_range: float | None = None  # Å; default 8 % of the box
    offset_step_px: float = 1.5  # working-box pixels (fine pass: half of it)
    max_significant: int = 8
    init_particles: int = 300
    final_passes: int = 1
    max_order: int = 2
    centre: bool = True  # keep each map's centre of mass at the box centre (see the module docstring)
    centre_min_px: float = 1.0  # working-box px: the mass may wander this far before the map is moved
    seed: int = 0
    backend: str | None = None

    @property
    def total_iterations(self) -> int:
        return int(self.n_initial_iter) + int(self.n_iter)


@dataclass
class SGDResult:
    """Maps at the working box (K, b, b, b) float32 and the last full E-step's per-particle results.

    ``rotations`` (N, 3) Euler degrees, ``offsets_px`` (N, 2) working-box
    pixels (RELION sign: rlnOrigin), ``classes`` (N,) 0-based, ``max_prob``,
    ``n_significant``, ``loglike`` (N,); ``class_fractions`` (K,);
    ``history``: one dict per iteration (resolution, batch, η, order, time).
    """

    maps: np.ndarray
    pixel_size: float
    rotations: np.ndarray
    offsets_px: np.ndarray
    classes: np.ndarray
    max_prob: np.ndarray
    n_significant: np.ndarray
    loglike: np.ndarray
    class_fractions: np.ndarray
    history: list = field(default_factory=list)


# -- schedules ---------------------------------------------------------------------------
def resolution_schedule(t: int, n_iter: int, start: float, end: float, ramp: float = 0.7) -> float:
    """Resolution (Å) at iteration ``t``: linear in 1/d from ``start`` to ``end`` over ``ramp``·n_iter."""
    f = min(1.0, t / max(1.0, ramp * (n_iter - 1)))
    return 1.0 / ((1 - f) / start + f / end)


def batch_schedule(t: int, n_iter: int, start: int, end: int) -> int:
    f = min(1.0, t / max(1.0, 0.7 * (n_iter - 1)))
    return int(round(start + f * (end - start)))


def learning_rate_schedule(t: int, n_iter: int, start: float, end: float) -> float:
    """η decaying geometrically from ``start`` to ``end``."""
    f = t / max(1, n_iter - 1)
    return float(start * (end / start) ** f)


def healpix_order_for(resolution: float, diameter: float, max_order: int = 2) -> int:
    """Smallest HEALPix order whose oversampled step (½ coarse step) is ≤ the angle that blurs the
    particle's rim by ¾ of the resolution: degrees(1.5 · resolution / diameter)."""
    needed = math.degrees(1.5 * resolution / max(diameter, 1e-6))
    order = 1
    while order < max_order and angular_step(order) / 2 > needed:
        order += 1
    return order


# -- map constraints ----------------------------------------------------------------------
def constrain_map(vol, mask_radius_px: float, xp=np):
    """Solvent level to 0, non-negativity, soft spherical mask (real space, (b, b, b))."""
    box = vol.shape[-1]
    r = real_radius(box, 3, xp)
    solvent = r > mask_radius_px + SOLVENT_EDGE_PX
    level = vol[solvent].mean() if bool(solvent.any()) else 0.0
    out = xp.maximum(vol - level, 0)
    return (out * soft_spherical_mask(box, mask_radius_px, SOLVENT_EDGE_PX * 2, xp)).astype(xp.float32)


def _extend_tau2(tau2, reliable_shells: int):
    """τ² beyond the shells the current maps resolve: the last reliable value (maps are low-passed there)."""
    out = np.array(tau2, np.float64)
    s = max(2, min(int(reliable_shells), out.shape[1]))
    out[:, s - 1:] = out[:, s - 2:s - 1]
    return np.maximum(out, 1e-12 * max(out.max(), 1e-30))


# -- the run ----------------------------------------------------------------------------------
class SGDRun:
    """State of one SGD ab initio run on a :class:`~spa.initial_model.working.WorkingSet`."""

    def __init__(self, ws, opts: SGDOptions, log=None):
        self.ws = ws
        self.opts = opts
        self.log = log or (lambda m: None)
        self.be = get_backend(opts.backend)
        self.xp = self.be.xp
        self.rng = np.random.default_rng(opts.seed)
        b, px = ws.box, ws.pixel_size
        diameter = opts.particle_diameter or 0.8 * ws.original_box * ws.original_pixel_size
        self.diameter = float(diameter)
        self.mask_radius_px = min(0.5 * diameter / px, b / 2 - 1)
        offset_range = opts.offset_range if opts.offset_range is not None else 0.08 * b * px
        self.offset_range_px = float(offset_range) / px
        self.sigma_offset_px = max(self.offset_range_px, 1.0)
        self._samplings: dict[int, Sampling3D] = {}
        self.geometry = SliceGeometryCache()  # coarse-grid slice set-ups shared by every map of the run
        self.history: list[dict] = []

    def sampling(self, order: int) -> Sampling3D:
        if order not in self._samplings:
            self._samplings[order] = Sampling3D(order, self.offset_range_px, self.opts.offset_step_px, oversampling=1)
            self.geometry.register(self._samplings[order].coarse_rotations)
        return self._samplings[order]

    # -- start ---------------------------------------------------------------------------
    def _batch_data(self, idx, shells: int, rows: bool = False):
        """E-step data of held positions ``idx`` (mini-batches), or of table rows with ``rows`` (the final
        pass over every particle, read chunk by chunk)."""
        xp = self.xp
        ws = self.ws
        active = ActivePixels.make(ws.box, shells, xp)
        images, ctf, group = ws.rows_data(idx, xp) if rows else ws.held_data(idx, xp)
        centres = xp.zeros((len(idx), 2), xp.float32)
        return prepare_chunk(images, ctf, group, centres, self.sigma2, active, self.mask_radius_px)

    def initialise(self):
        """Noise spectrum from the images, then K random-pose reconstructions of random subsets."""
        self.init_noise()
        self.init_maps()

    def init_noise(self):
        """σ² per optics group and shell from the power spectrum of up to 1000 random particles."""
        ws = self.ws
        b = ws.box
        nsh = b // 2 + 1
        sample = np.sort(self.rng.choice(len(ws), size=min(len(ws), 1000), replace=False))
        self.sigma2 = np.ones((ws.n_groups, nsh))
        data = self._batch_data(sample, nsh)
        power = self.be.to_numpy(data.power)
        group = ws.group[ws.held[sample]]
        counts = np.bincount(group, minlength=ws.n_groups)
        psum = np.stack([power[group == g].sum(0) for g in range(ws.n_groups)])
        self.sigma2 = initial_sigma2(psum, counts, b)

    def init_maps(self):
        """Each class: a random subset inserted at random poses (a blob), low-passed to the initial resolution."""
        xp = self.xp
        ws, opts = self.ws, self.opts
        b, n, k = ws.box, len(ws), opts.n_classes
        self.refs = AbInitioReferences(xp.zeros((k, b, b, b), xp.float32), cache=self.geometry)
        shells = shells_to(opts.initial_resolution, b, ws.pixel_size)
        self.sums = self.refs.new_sums()
        for c in range(k):
            idx = np.sort(self.rng.choice(n, size=min(n, opts.init_particles), replace=False))
            rot, tilt, psi = random_euler(len(idx), self.rng)
            d = self._batch_data(idx, shells)
            values = d.X * d.ctf * d.inv_sigma2
            weights = d.ctf**2 * d.inv_sigma2
            self.refs.insert(self.sums, c, np.column_stack([rot, tilt, psi]), d.active, values, weights)
        self.class_weight = np.full(k, 1.0 / k)
        self._rebuild(shells, tau2=None)

    def start_from(self, volumes):
        """Use given maps (K, b, b, b) at the working box as the current references (e.g. a chosen candidate)."""
        xp = self.xp
        if not hasattr(self, "sigma2"):
            self.init_noise()
        vols = xp.asarray(np.asarray(volumes, np.float32).reshape((-1,) + (self.ws.box,) * 3))
        self.refs = AbInitioReferences(vols, cache=self.geometry)
        self.sums = self.refs.new_sums()
        self.class_weight = np.full(len(vols), 1.0 / len(vols))

    def _rebuild(self, shells: int, tau2, shifts=None):
        """Maps from the running sums (MAP with τ², or plain ratio when None), then constrained; with
        ``shifts`` ((K, 3) voxels, x y z), each map and its running data sum moved by its shift first."""
        if shifts is not None:
            for k, t in enumerate(shifts):
                if np.linalg.norm(t) > 0:
                    self.sums["data"][k] *= phase_ramp_3d(self.sums["data"].shape[1], t, self.xp)
        new, _ = self.refs.reconstruct(self.sums, tau2, self.opts.tau2_fudge, max_shell=shells - 1)
        vols = self.xp.stack([constrain_map(v, self.mask_radius_px, self.xp) for v in new.images])
        self.refs = self.refs.with_volumes(vols)

    def _recentre(self, shells: int, tau2):
        """Maps whose positive mass is off the box centre by more than ``centre_min_px`` are rebuilt from
        their sums moved to centre it."""
        from spa.initial_model.align import centre_of_mass_shift

        com = np.array([centre_of_mass_shift(self.be.to_numpy(v)) for v in self.refs.images])
        com[np.linalg.norm(com, axis=1) <= self.opts.centre_min_px] = 0
        if np.any(com):
            self._rebuild(shells, tau2, shifts=-com)

    def centre_maps(self):
        """Move the current maps' positive mass to the box centre (a candidate made in another frame, e.g.
        common lines from class averages centred on their mass)."""
        from spa.initial_model.align import centre_of_mass_shift, shift_volume

        xp = self.xp
        vols = []
        for v in self.refs.images:
            host = self.be.to_numpy(v)
            vols.append(constrain_map(xp.asarray(shift_volume(host, -centre_of_mass_shift(host))),
                                      self.mask_radius_px, xp))
        self.refs = self.refs.with_volumes(xp.stack(vols))

    # -- one step ---------------------------------------------------------------------------
    def _estep(self, idx, shells: int, order: int, max_significant: int, rows: bool = False):
        xp = self.xp
        sampling = self.sampling(order)
        data = self._batch_data(idx, shells, rows)
        log_prior = np.log(np.maximum(self.class_weight, 1e-8))
        sums = self.refs.new_sums()
        resid = xp.zeros((self.ws.n_groups, data.active.size), xp.float64)
        post, _ = expectation(data, self.refs, sampling, log_prior, self.sigma_offset_px, shells, 0.999,
                              max_significant, sums=sums, resid=resid)
        wsig, count = sigma2_sums(resid, data.active.shell, data.active.n_shells, data.power, data.group,
                                  self.ws.n_groups, self.ws.box)
        class_w = np.bincount(self.be.to_numpy(post.cls), weights=self.be.to_numpy(post.weight),
                              minlength=self.opts.n_classes)
        return post, sampling, sums, (self.be.to_numpy(wsig), self.be.to_numpy(count)), class_w

    def step(self, t: int) -> dict:
        """Iteration ``t`` (0-based) of ``total_iterations``: the first ``n_initial_iter`` stay at the
        initial resolution, batch size and learning rate; then the schedules run over ``n_iter``."""
        opts, ws = self.opts, self.ws
        u = max(0, t - opts.n_initial_iter)  # position in the ramp
        res = resolution_schedule(u, opts.n_iter, opts.initial_resolution, opts.final_resolution)
        res = max(res, 2.2 * ws.pixel_size)
        shells = shells_to(res, ws.box, ws.pixel_size)
        prev_shells = shells_to(resolution_schedule(max(u - 1, 0), opts.n_iter, opts.initial_resolution,
                                                     opts.final_resolution), ws.box, ws.pixel_size)
        order = healpix_order_for(res, self.diameter, opts.max_order)
        nb = min(len(ws), batch_schedule(u, opts.n_iter, opts.batch_start, opts.batch_end))
        eta = learning_rate_schedule(u, opts.n_iter, opts.learning_rate, opts.learning_rate_end)
        idx = np.sort(self.rng.choice(len(ws), size=nb, replace=False))
        tau2 = _extend_tau2(self.be.to_numpy(self.refs.power_spectrum()), prev_shells)
        post, _, sums, (wsig, count), class_w = self._estep(idx, shells, order, opts.max_significant)
        for key in self.sums:
            self.sums[key] *= 1.0 - eta
            self.sums[key] += sums[key]
        self.class_weight = (1 - eta) * self.class_weight + eta * class_w / max(class_w.sum(), 1e-12)
        batch_sigma2 = update_sigma2(wsig, count, self.sigma2)
        self.sigma2 = (1 - eta) * self.sigma2 + eta * batch_sigma2
        self._rebuild(shells, tau2)
        if opts.centre:
            self._recentre(shells, tau2)
        rec = {"iteration": t + 1, "resolution": res, "shells": shells, "batch": nb, "eta": eta, "order": order,
               "median_max_prob": _median_best_weight(post, nb, self.be)}
        self.history.append(rec)
        return rec

    # -- final full pass -------------------------------------------------------------------------
    def final_pass(self, chunk: int = 500, progress=None):
        """Align every particle to the current maps; rebuild the maps from all of them (one EM iteration)."""
        opts, ws = self.opts, self.ws
        xp = self.xp
        res = max(opts.final_resolution, 2.2 * ws.pixel_size)
        shells = shells_to(res, ws.box, ws.pixel_size)
        order = healpix_order_for(res, self.diameter, opts.max_order)
        n = ws.n_particles
        out = {"rot": np.zeros((n, 3)), "offset": np.zeros((n, 2)), "class": np.zeros(n, np.int64),
               "max_prob": np.zeros(n), "n_significant": np.zeros(n, np.int64), "loglike": np.zeros(n)}
        for p in range(max(1, opts.final_passes)):
            tau2 = _extend_tau2(self.be.to_numpy(self.refs.power_spectrum()), shells)
            total = self.refs.new_sums()
            class_w = np.zeros(opts.n_classes)
            wsig_t, count_t = 0.0, 0.0
            for s in range(0, n, chunk):
                idx = np.arange(s, min(n, s + chunk))
                post, sampling, sums, (wsig, count), cw = self._estep(idx, shells, order, opts.max_significant,
                                                                      rows=True)
                for key in total:
                    total[key] += sums[key]
                class_w += cw
                wsig_t, count_t = wsig_t + wsig, count_t + count
                best = _best_candidates(post, len(idx), xp)
                out["rot"][idx] = sampling.fine_rotations[self.be.to_numpy(post.rot[best])]
                out["offset"][idx] = self.be.to_numpy(
                    xp.asarray(sampling.fine_translations, dtype=xp.float32)[post.shift[best]])
                out["class"][idx] = self.be.to_numpy(post.cls[best])
                out["max_prob"][idx] = self.be.to_numpy(post.weight[best])
                out["n_significant"][idx] = self.be.to_numpy(post.n_significant)
                out["loglike"][idx] = self.be.to_numpy(post.log_evidence)
                if progress:
                    progress(int(idx[-1]) + 1, n)
            self.sums = total
            self.class_weight = class_w / max(class_w.sum(), 1e-12)
            self.sigma2 = update_sigma2(wsig_t, count_t, self.sigma2)
            self._rebuild(shells, tau2)  # not moved: the poses belong to the maps as they are
            self.log(f"initial-model: final pass {p + 1}: {n} particles aligned at {res:.1f} Å, order {order}")
        return out

    def run(self, progress=None) -> SGDResult:
        import time

        self.initialise()
        t0 = time.perf_counter()
        total = self.opts.total_iterations
        for t in range(total):
            rec = self.step(t)
            rec["time"] = time.perf_counter() - t0
            if t == 0 or (t + 1) % 10 == 0 or t + 1 == total:
                self.log(f"initial-model: SGD iteration {t + 1}/{total}: {rec['resolution']:.1f} Å, "
                         f"batch {rec['batch']}, η {rec['eta']:.2f}, HEALPix order {rec['order']}, "
                         f"{rec['time']:.0f} s")
        final = self.final_pass(progress=progress)
        maps = self.be.to_numpy(self.refs.images).astype(np.float32)
        return SGDResult(maps, self.ws.pixel_size, final["rot"], final["offset"], final["class"], final["max_prob"],
                         final["n_significant"], final["loglike"], np.asarray(self.class_weight), self.history)


def _median_best_weight(post, n: int, be) -> float:
    """Median over the batch of each image's largest posterior weight (how decided the poses are)."""
    best = np.zeros(n)
    np.maximum.at(best, be.to_numpy(post.img), be.to_numpy(post.weight))
    return float(np.median(best))


def _best_candidates(post, n: int, xp):
    """Index of each image's most probable candidate in the flat posterior arrays."""
    order = xp.lexsort(xp.stack([-post.weight, post.img]))
    first = xp.searchsorted(post.img[order], xp.arange(n))
    return order[first]


def run_sgd(ws, opts: SGDOptions, log=None, progress=None) -> SGDResult:
    """One SGD ab initio run on a working set (see the module docstring)."""
    return SGDRun(ws, opts, log).run(progress)
