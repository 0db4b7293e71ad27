"""2D classification by regularised likelihood (RELION's Class2D, Scheres 2012).

K classes start as averages of K random subsets of the particles, each image
at a random in-plane angle (as RELION).  Every iteration runs the shared EM
engine (:mod:`spa.em.engine`): an E-step over ψ (coarse ``psi_step`` with
oversampled children) and shifts (``offset_range``/``offset_step`` pixels
around each particle's current offset) on a Fourier window that grows with
the estimated resolution, then the M-step (Wiener/MAP with T =
``tau2_fudge``, CTF correction, σ² per optics group), class averages masked
with a soft circle of ``particle_diameter`` Å and re-centred on their centre
of mass (RELION's --center_classes).  State is written after every iteration
and a run continues from its last checkpoint.  The last iteration also gives
each particle a noise p-value against the other random half's averages
(:meth:`Class2D._noise_scores`, :mod:`spa.em.decoys`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from spa.backend import get_backend
from spa.em.decoys import DecoySource, decoy_rows, noise_pvalue
from spa.em.engine import particle_ctfs, random_halves, run_chunks, run_estep, take
from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.inplane import InplaneReferences, InplaneSampling
from spa.em.model import MlModel, WsumModel
from spa.em.mstep import maximize, next_window
from spa.em.noise import group_power, initial_sigma2
from spa.em.options import EMOptions
from spa.em.run import EMRun, coarse_shells_for, mask_radius_px
from spa.fourier import irfft_centered, lowpass, shells_2d, shells_to, shift_image, soft_circular_mask
from spa.class2d import outputs
from spa.parallel import make_chunks


@dataclass(kw_only=True)
class Class2DOptions(EMOptions):
    """2D classification's options (RELION's meaning; the shared ones in :class:`EMOptions`)."""

    n_classes: int
    n_iter: int = 25
    tau2_fudge: float = 2.0
    highres_limit: float | None = None  # Å; default Nyquist
    ini_high: float = 30.0  # Å: resolution of the initial references / first window
    ctf_premultiplied: bool = False
    psi_step: float = 6.0
    center_classes: bool = True
    # RELION 4's --class_inactivity_threshold: in the first half of the run a class holding fewer
    # than this fraction of an average class's particles is re-seeded by splitting the largest class
    class_inactivity_threshold: float = 0.1
    # noise decoys scored in the last iteration (spa.em.decoys): each particle's
    # rlnSpaNoisePValue, the chance that pure noise matches the class averages as well; 0 = off
    noise_decoys: int = 1000

    CONTINUABLE: ClassVar[tuple] = ("n_iter",)

    def check_stage(self) -> None:
        from spa.em.options import at_least

        at_least(self, "n_classes", 1)
        at_least(self, "n_iter", 1)
        at_least(self, "class_inactivity_threshold", 0)
        at_least(self, "noise_decoys", 0)
        if not 0 < self.psi_step <= 360:
            from spa.errors import SpaInputError

            raise SpaInputError(None, f"option psi_step must be in (0, 360] degrees, got {self.psi_step!r}")
        if self.highres_limit is not None:
            at_least(self, "highres_limit", 1e-6, " Å")


def center_of_mass_shift(images):
    """(K, 2) shift (px, x then y) that moves each image's positive mass to the box centre."""
    box = images.shape[-1]
    c = np.arange(box) - box // 2
    w = np.maximum(images, 0)
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-30)
    cx = (w.sum(axis=1) * c).sum(axis=1) / tot
    cy = (w.sum(axis=2) * c).sum(axis=1) / tot
    return -np.stack([cx, cy], axis=1)


# -- initial references -----------------------------------------------------------------------
@dataclass
class _InitShared:
    refs: object
    mask_radius_px: float
    n_groups: int
    backend: str


def _init_chunk(source, shared: _InitShared, idx, particles):
    """Unweighted sums of images at their random (class, ψ) and per-group image power."""
    be = get_backend(shared.backend)
    xp = be.xp
    refs = shared.refs.on(xp)
    box = refs.box
    images = xp.asarray(source.read(idx), dtype=xp.float32)
    n = images.shape[0]
    active = ActivePixels.make(box, box // 2 + 1, xp)
    ones = xp.ones((n, box, box // 2 + 1), xp.float32)
    sig = np.ones((shared.n_groups, box // 2 + 1))
    data = prepare_chunk(images, ones, particles["group"], particles["centres"], sig, active, shared.mask_radius_px)
    sums = refs.new_sums()
    cls = particles["init_class"]
    for k in np.unique(cls):
        sel = np.nonzero(cls == k)[0]
        refs.insert(sums, int(k), particles["init_psi"][sel], active, data.X[xp.asarray(sel)],
                    xp.ones((len(sel), active.size), xp.float32))
    power = group_power(data.power, data.group, shared.n_groups)
    counts = xp.bincount(data.group, minlength=shared.n_groups).astype(xp.float64)
    w = WsumModel(sums, power, counts, xp.zeros(refs.n_classes, xp.float64), 0.0, int(n), 0.0)
    return w.to_host(), None


def initial_references(source, particles, opts, box, pixel_size, n_groups, client=None, progress=None):
    """K random-subset averages (random ψ per image), low-passed to ``ini_high`` and masked; plus σ²."""
    rng = np.random.default_rng(opts.seed)
    n = len(particles["group"])
    parts = dict(particles)
    # every class gets particles even for tiny sets: a shuffled round-robin assignment
    parts["init_class"] = rng.permutation(np.arange(n) % opts.n_classes)
    parts["init_psi"] = rng.uniform(0.0, 360.0, n)
    radius = mask_radius_px(opts.particle_diameter, box, pixel_size)
    empty = InplaneReferences(np.zeros((opts.n_classes, box, box), np.float32))
    shared = _InitShared(empty, radius, n_groups, get_backend(opts.backend).name)
    wsum, _ = run_chunks(_init_chunk, source, parts, make_chunks(n, opts.chunk_size), shared, client,
                         lanes=opts.reduction_lanes, progress=progress)
    flat_tau = np.full((opts.n_classes, box // 2 + 1), 1e30)
    refs, _ = empty.reconstruct(wsum.sums, flat_tau, 1.0)
    images = lowpass(np.asarray(refs.images), pixel_size, opts.ini_high) * soft_circular_mask(box, radius, 5.0)
    sigma2 = initial_sigma2(wsum.sigma2, wsum.sigma2_count, box)
    return images.astype(np.float32), sigma2


# -- the run ------------------------------------------------------------------------------------
class Class2D(EMRun):
    """One 2D classification run over a particle table and its image source.

    The state between iterations is (model, references, per-particle results)."""

    stage = "class2d"

    def __init__(self, table, source, opts: Class2DOptions, output_dir, *, optics=None, client=None,
                 provenance=None, log=print, progress=None):
        super().__init__(table, source, opts, output_dir, optics=optics, client=client, provenance=provenance,
                         log=log, progress=progress)
        # chunks of each random half, summed per half (the same order every iteration, so a run
        # continued with more iterations repeats the sums of a shorter one): the last iteration's
        # half averages give cross-validated noise scores (_noise_scores)
        subset = random_halves(self.table, opts.seed) if len(self.table) > 1 else np.ones(len(self.table), np.int64)
        self.halves = [np.nonzero(subset == h)[0] for h in (1, 2) if (subset == h).any()]
        self.chunks = [c for rows in self.halves for c in make_chunks(rows, opts.chunk_size)]
        n_first = -(-len(self.halves[0]) // max(1, opts.chunk_size))
        self.chunk_groups = [range(n_first), range(n_first, len(self.chunks))] if len(self.halves) == 2 else None
        self.row_order = np.concatenate(self.chunks)
        self.sampling = InplaneSampling(opts.psi_step, opts.offset_range, opts.offset_step, opts.oversampling)
        self.max_shells = shells_to(opts.highres_limit, self.box, self.pixel_size, minimum=2)

    # state: (model (MlModel), refs (InplaneReferences), results (per particle)) --------------
    def initialise(self):
        images, sigma2 = initial_references(self.source, self.particles, self.opts, self.box, self.pixel_size,
                                            self.n_groups, self.client,
                                            progress=self.pass_progress("initial class averages"))
        window = min(self.max_shells, max(8, shells_to(self.opts.ini_high, self.box, self.pixel_size, minimum=2)))
        model = MlModel.initial(self.box, self.pixel_size, self.opts.n_classes, sigma2,
                                max(self.opts.offset_range / 2.0, self.opts.offset_step), window)
        return model, InplaneReferences(images), None

    def checkpoint_arrays(self, state) -> dict:
        model, refs, results = state
        arr = model.to_arrays()
        arr["refs_images"] = np.asarray(refs.images, np.float32)
        arr["centres"] = self.particles["centres"]
        for k, v in results.items():
            arr["result_" + k] = v
        return arr

    def restore(self, arrays):
        model = MlModel.from_arrays(arrays)
        refs = InplaneReferences(arrays["refs_images"])
        self.particles["centres"] = np.array(arrays["centres"])
        results = {k[len("result_"):]: np.array(v) for k, v in arrays.items() if k.startswith("result_")}
        return model, refs, results

    def iterate(self, state):
        """One EM iteration → (new model, new references, per-particle results)."""
        return self._iterate(*state[:2])

    def describe(self, state) -> str:
        model, _, results = state
        return (f"best resolution {model.resolution_angstrom().min():.1f} Å, window {model.current_shells} shells, "
                f"<Pmax> {results['max_prob'].mean():.3f}")

    def _iterate(self, model, refs):
        o = self.opts
        ctx = self.context(model, refs, self.sampling, coarse_shells_for(o.psi_step, self.radius, self.box),
                           ctf_premultiplied=o.ctf_premultiplied)
        wsum, results, half_sums = self._estep(ctx)
        scored = model.iteration + 1 == o.n_iter and o.noise_decoys > 0 and half_sums is not None
        new_model, new_refs = maximize(model, wsum, refs, tau2_fudge=o.tau2_fudge, mask_radius_px=self.radius)
        images = self._host_images(new_refs)
        # RELION's --center_classes: each average moved so its mass is centred (halves follow the full one)
        shifts = center_of_mass_shift(images) if o.center_classes else None
        images = self._centred(images, shifts)
        if scored:
            half_images = [self._centred(self._host_images(maximize(model, w, refs, tau2_fudge=o.tau2_fudge,
                                                                    mask_radius_px=self.radius)[1]), shifts)
                           for w in half_sums]
            results.update(self._noise_scores(ctx, half_images))
        images = self._reseed_inactive(images, new_model, results)
        new_refs = InplaneReferences(images)
        new_model.current_shells = next_window(new_model.resolution_shell, self.max_shells, o.incr_shells)
        new_model.iteration = model.iteration + 1
        self.particles["centres"] = results["offset"].astype(np.float64)
        return new_model, new_refs, results

    def _host_images(self, refs):
        return np.asarray(get_backend(self.backend).to_numpy(refs.images), np.float32)

    def _centred(self, images, shifts):
        """``images`` moved by ``shifts`` (K, 2) px and masked; as they are when ``shifts`` is None."""
        if shifts is None:
            return images
        images = shift_image(images, shifts[:, 0], shifts[:, 1]).astype(np.float32)
        return images * soft_circular_mask(self.box, self.radius, 5.0)

    def _estep(self, ctx):
        """The E-step → (total sums, results in row order, [sums of half 1, half 2] or None)."""
        sums, parts = run_estep(ctx, self.source, self.particles, self.chunks, self.client, self.chunk_groups,
                                lanes=self.opts.reduction_lanes)
        results = {}
        for k, v in parts.items():
            results[k] = np.empty_like(v)
            results[k][self.row_order] = v
        if self.chunk_groups is None:
            return sums[0], results, None
        return sums[0] + sums[1], results, sums

    def _noise_scores(self, ctx, half_images):
        """Cross-validated match scores and noise p-values (see :mod:`spa.em.decoys`).

        Each half's particles, and decoys standing in for them, are searched again against the
        other half's averages.  An average that contains the image itself matches it better than
        it matches any other image of noise, by about 2·(pixels in the window)/(particles in the
        class) in the cross term: small for classes of hundreds (the demo: noise images' median z
        5.31 → 5.27), large for the small classes of a run with many classes; decoys, never
        averaged, would understate what noise images reach.
        """
        o = self.opts
        n = len(self.table)
        decoys = decoy_rows(n, o.noise_decoys, o.seed)
        z = np.zeros(n)
        decoy_z = []
        for h, (rows, group) in enumerate(zip(self.halves, self.chunk_groups)):
            ctx_h = replace(ctx, refs=InplaneReferences(half_images[1 - h]))
            _, res = run_estep(ctx_h, self.source, self.particles, [self.chunks[c] for c in group], self.client,
                               lanes=o.reduction_lanes)
            z[rows] = res["signal_z"]
            d = decoys[np.isin(decoys, rows)]
            if len(d):
                source = DecoySource(d, self.particles["group"][d], ctx.sigma2, self.box, self.radius, o.seed,
                                     self.pixel_size)
                _, dres = run_estep(ctx_h, source, take(self.particles, d), make_chunks(len(d), o.chunk_size),
                                    self.client, lanes=o.reduction_lanes)
                decoy_z.append(dres["signal_z"])
        decoy_z = np.concatenate(decoy_z)
        p = noise_pvalue(z, decoy_z)
        self.log(f"class2d: {len(decoy_z)} noise decoys reach z {np.percentile(decoy_z, 95):.2f} (95th "
                 f"percentile) against the other half's averages; particles median z {np.median(z):.2f}, "
                 f"{int((p <= 0.05).sum())} of {n} with noise p ≤ 0.05")
        return {"signal_z": z, "noise_pvalue": p}

    def _reseed_inactive(self, images, model, results):
        """Give classes that have (nearly) emptied a view again (``class_inactivity_threshold``).

        ML classification feeds on itself: a class that loses particles gets a noisier, more damped
        average and loses more, so at high SNR half the classes can empty in two iterations (seen
        on independent data: 5 of 10).  In the first half of the run each inactive class becomes
        the largest class's average plus +δ, and the largest becomes its average −δ, with δ a draw
        of the noise that average carries (σ²/(½·N) per Fourier component, within the current
        window); the two share its prior.  The particles of the largest class then choose between
        two averages that differ only as much as their data allow, and views it had lumped together
        separate (the splitting step of LBG vector quantisation).  Seeded by (seed, iteration):
        same seed, same result; independent of the number of workers.
        """
        o = self.opts
        k_all = o.n_classes
        if o.class_inactivity_threshold <= 0 or k_all < 2 or model.iteration + 1 > o.n_iter // 2:
            return images
        n = len(results["class"])
        assigned = np.bincount(results["class"], minlength=k_all)
        counts = assigned.astype(np.float64)  # halved as classes are split
        floor = o.class_inactivity_threshold * n / k_all
        inactive = [int(k) for k in np.argsort(counts, kind="stable") if counts[k] < floor]
        if not inactive:
            return images
        rng = np.random.default_rng([o.seed, model.iteration + 1])
        sigma2 = np.asarray(model.sigma2_noise, np.float64).mean(axis=0)
        shells = shells_2d(self.box)
        inside = shells < model.current_shells
        sd = np.sqrt(sigma2[np.minimum(shells, len(sigma2) - 1)])
        mask = soft_circular_mask(self.box, self.radius, 5.0)
        images = images.copy()
        pdf = np.array(model.pdf_class, np.float64)
        for k in inactive:
            big = int(np.argmax(counts))
            if counts[big] < max(2 * floor, 20):  # nothing worth splitting
                break
            var_scale = 1.0 / (0.5 * counts[big])
            noise = (rng.standard_normal(shells.shape) + 1j * rng.standard_normal(shells.shape)) * sd
            delta = irfft_centered(np.where(inside, noise * np.sqrt(var_scale), 0), self.box) * mask
            images[k] = images[big] + delta
            images[big] = images[big] - delta
            counts[big] = counts[k] = counts[big] / 2
            pdf[big] = pdf[k] = (pdf[big] + pdf[k]) / 2
            self.log(f"class2d: class {k + 1} inactive ({assigned[k]} particles): "
                     f"re-seeded by splitting class {big + 1}")
        model.pdf_class = pdf / pdf.sum()
        return images.astype(np.float32)

    def write_iteration(self, state) -> None:
        model, refs, results = state
        outputs.write_iteration(
            self.output_dir, model.iteration, np.asarray(refs.images), model, self._table(results), self.optics,
            tau2_fudge=self.opts.tau2_fudge, acc_rot=self.sampling.fine_psi_step,
            acc_trans_angst=self.opts.offset_step / 2 * self.pixel_size, group_ids=self.group_ids,
            provenance=self.provenance,
        )

    def _table(self, results):
        return outputs.particles_table(self.table, results, self.sampling.fine_rotations[results["rot"]],
                                       self.pixel_size)

    def finish(self, state):
        """The final files (copies of the last iteration's) → (model, references, particle table)."""
        model, refs, results = state
        outputs.write_final(self.output_dir, model.iteration)
        return model, refs, self._table(results)


def run_class2d(table, source, opts: Class2DOptions, output_dir, *, optics=None, client=None, provenance=None,
                continue_: bool = False, restart: bool = False, resume: bool = False, log=print):
    """Convenience wrapper: ``Class2D(...).run(continue_, restart)`` → (MlModel, InplaneReferences, particle
    table)."""
    return Class2D(table, source, opts, output_dir, optics=optics, client=client, provenance=provenance,
                   log=log).run(continue_, restart, resume)


__all__ = ["Class2DOptions", "Class2D", "run_class2d", "particle_ctfs"]
