"""Gold-standard 3D auto-refinement (Scheres 2012; Scheres & Chen 2012; RELION's Refine3D).

The particles are split into two random halves (rlnRandomSubset, kept if
present); each half is refined against its own reference, which starts as
the given map low-passed to ``ini_high``.  Every iteration runs the shared
E-step on each half (global HEALPix searches with adaptive oversampling and
shifts around the current origins; from HEALPix order
``auto_local_healpix_order`` on, local searches around each particle's pose
with a Gaussian prior of twice the fine step), reconstructs each half by the MAP update
with τ² from the previous iteration's half-map FSC (SSNR = T·FSC/(1 − FSC)),
averages the halves below ``low_resol_join_halves`` Å so they stay in one
frame, and measures the gold-standard FSC between them (resolution at 0.143).
The window of Fourier shells used grows with that resolution; the sampling
gets finer when the resolution stalls (:mod:`spa.refine3d.schedule`); at
convergence a last iteration uses both halves to Nyquist for the final map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from spa.backend import get_backend
from spa.em import driver3d as d3
from spa.em.engine import random_halves
from spa.em.fsc import fsc as fsc_curve
from spa.em.fsc import resolution_at, ssnr_from_fsc
from spa.em.model import MlModel
from spa.em.mstep import maximize
from spa.em.noise import update_sigma2
from spa.em.sampling3d import LocalSampling, Sampling3D
from spa.em.volume_refs import VolumeReferences
from spa.fourier import shell_of, shells_to, soft_spherical_mask
from spa.refine3d.schedule import Schedule, mean_angle_change


@dataclass(kw_only=True)
class Refine3DOptions(d3.Options3D):
    """Auto-refinement's options (RELION's meaning; the shared ones in :class:`spa.em.options.EMOptions`)."""

    max_healpix_order: int = 6
    auto_local_healpix_order: int = 4
    max_iter: int = 25
    low_resol_join_halves: float = 40.0
    max_significant: int = 512  # a cap of 64 truncated broad low-SNR posteriors (final map 8.1 vs 5.8 Å)
    solvent_mask: str | None = None

    CONTINUABLE: ClassVar[tuple] = ("max_iter",)

    def check_stage(self) -> None:
        from spa.em.options import at_least

        super().check_stage()
        at_least(self, "max_iter", 1)
        at_least(self, "max_healpix_order", int(self.healpix_order))
        at_least(self, "low_resol_join_halves", 1e-6, " Å")


class Refine3D(d3.Run3D):
    """One auto-refinement run (see module docstring); the state between iterations is (the two halves'
    models, their references)."""

    stage = "refine3d"
    converges = True

    def __init__(self, table, source, reference, opts: Refine3DOptions, output_dir, *, optics=None, client=None,
                 provenance=None, log=print, progress=None):
        super().__init__(table, source, reference, opts, output_dir, optics=optics, client=client,
                         provenance=provenance, log=log, progress=progress)
        self.diameter = 2 * self.radius * self.pixel_size
        self.halves = self._split_halves()
        self.chunks = [self.chunks_of(h) for h in self.halves]
        self.solvent_mask = None
        if opts.solvent_mask:
            from spa.io.mrc import read_mrc

            self.solvent_mask, _ = read_mrc(opts.solvent_mask)
            if self.solvent_mask.shape != (self.box,) * 3:
                from spa.errors import SpaInputError

                raise SpaInputError(opts.solvent_mask, f"mask shape {self.solvent_mask.shape} != particle box {self.box}")
        self.sphere = soft_spherical_mask(self.box, self.radius, 5.0)

    def extra_inputs(self) -> dict:
        mask = {} if self.solvent_mask is None else {"solvent_mask": d3.array_digest(self.solvent_mask)}
        return {**super().extra_inputs(), **mask}

    # -- set-up ------------------------------------------------------------------------------
    def _split_halves(self):
        subset = random_halves(self.table, self.opts.seed)
        self.table["rlnRandomSubset"] = subset
        return [np.nonzero(subset == h)[0] for h in (1, 2)]

    def initialise(self):
        o = self.opts
        all_chunks = self.chunks[0] + self.chunks[1]
        stats = d3.data_statistics(self.source, self.particles, all_chunks, self.box, self.pixel_size, self.n_groups,
                                   self.radius, o.do_ctf, self.client, self.backend, lanes=o.reduction_lanes,
                                   progress=self.pass_progress("image statistics"))
        ref = d3.prepare_reference(self.reference, self.pixel_size, o.ini_high, self.radius)
        scale = d3.grey_scale(ref, stats, self.pixel_size, low_res=max(2 * o.ini_high, 60.0), high_res=o.ini_high)
        ref = ref * scale
        self.log(f"refine3d: reference grey scale ×{scale:.3g}")
        window = min(self.box // 2 + 1, max(8, shells_to(o.ini_high, self.box, self.pixel_size)))
        models, refs = [], []
        for _ in range(2):
            m = MlModel.initial(self.box, self.pixel_size, 1, stats.sigma2,
                                max(o.offset_range / 2.0, o.offset_step), window)
            models.append(m)
            refs.append(VolumeReferences(ref[None], symmetry=self.sym))
        self.schedule = Schedule(o.healpix_order, o.offset_range, o.offset_step, o.max_healpix_order)
        self.fsc = None
        self.angles = np.zeros((len(self.table), 3))
        self.prev_angles = None
        self.have_poses = False  # local searches need a pose per particle first
        angle_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
        if o.healpix_order >= o.auto_local_healpix_order and all(c in self.table for c in angle_cols):
            # RELION: starting at (or past) the local-search order means local searches from the
            # input poses from the first iteration (a refinement continued after polishing, say)
            self.angles = np.array(self.table[angle_cols].to_numpy(np.float64))  # writable copy
            self.have_poses = True
            self.log("refine3d: local searches around the input poses from the first iteration")
        return models, refs

    # -- one iteration -----------------------------------------------------------------------
    def sampling(self):
        """Global HEALPix search below ``auto_local_healpix_order``, local searches from there on (RELION)."""
        s, o = self.schedule, self.opts
        if s.healpix_order >= o.auto_local_healpix_order and self.have_poses:
            return LocalSampling(s.healpix_order, s.offset_range, s.offset_step, o.oversampling, o.symmetry)
        return Sampling3D(s.healpix_order, s.offset_range, s.offset_step, o.oversampling, o.symmetry)

    def estep_half(self, h, model, refs, sampling):
        self.particles["angles"] = self.angles  # the priors of local searches
        coarse = d3.coarse_shells_for(sampling.angular_step, self.radius, self.box)
        return self.estep(model, refs, sampling, self.chunks[h], coarse)

    def _reconstruct(self, model, refs, wsum, max_shell):
        """MAP update of one half: τ² from the previous FSC when there is one (gold standard)."""
        o = self.opts
        if self.fsc is None:
            new_model, new_refs = maximize(model, wsum, refs, tau2_fudge=o.tau2_fudge, mask_radius_px=self.radius)
            return new_model, new_refs
        ssnr = ssnr_from_fsc(self.fsc, o.tau2_fudge)[None, :]
        new_refs, _ = refs.reconstruct(wsum.sums, None, o.tau2_fudge, mask_radius_px=self.radius,
                                       max_shell=max_shell, ssnr=ssnr)
        from dataclasses import replace

        sigma2 = update_sigma2(wsum.sigma2, wsum.sigma2_count, model.sigma2_noise)
        n = max(int(wsum.n_images), 1)
        new_model = replace(model, sigma2_noise=sigma2, sigma_offset_px=float(np.sqrt(max(wsum.offset2, 0) / (2 * n))),
                            loglike=float(wsum.loglike), data_vs_prior=ssnr.copy())
        return new_model, new_refs

    def _unregularised(self, refs, wsum, max_shell: int) -> np.ndarray:
        """A half map as plain data ÷ weight, no τ² (RELION's unregularised half reconstruction).

        The FSC is measured on these, not on the MAP references: where τ² is small the MAP map's
        shells are damped towards zero, and what the spherical mask then leaks into them from the
        strong low-resolution shells is the same in both halves — an FSC of ~0.3 out to Nyquist
        after a first iteration at 20 Å (measured), i.e. a resolution that is not there.
        """
        r, _ = refs.reconstruct(wsum.sums, None, self.opts.tau2_fudge, mask_radius_px=self.radius,
                                max_shell=max_shell)
        return np.asarray(get_backend(self.backend).to_numpy(r.images[0]), np.float32)

    def _finish_halves(self, refs, unregularised, max_shell: int):
        """Join the halves below ~40 Å, apply the solvent mask, and measure the gold-standard FSC
        (on the ``unregularised`` half maps, treated the same way)."""
        h1 = np.asarray(get_backend(self.backend).to_numpy(refs[0].images[0]), np.float32)
        h2 = np.asarray(get_backend(self.backend).to_numpy(refs[1].images[0]), np.float32)
        h1, h2 = d3.join_low_resolution(h1, h2, self.pixel_size, self.opts.low_resol_join_halves)
        u1, u2 = d3.join_low_resolution(*unregularised, self.pixel_size, self.opts.low_resol_join_halves)
        if self.solvent_mask is not None:
            h1, h2 = h1 * self.solvent_mask, h2 * self.solvent_mask
            # a solvent mask correlates the halves by itself (the tighter, the more): the masked FSC is
            # corrected by phase randomisation (Chen et al. 2013), as postprocess does
            from spa.postprocess.phase_randomisation import corrected_fsc

            fsc = corrected_fsc(u1, u2, self.solvent_mask, seed=self.opts.seed).corrected
        else:
            fsc = fsc_curve(u1, u2, self.sphere)
        # beyond the window the halves hold no data, only what masking leaked there from below
        fsc[max_shell + 1:] = 0.0
        self.fsc = fsc
        return [VolumeReferences(h1[None], symmetry=self.sym), VolumeReferences(h2[None], symmetry=self.sym)]

    def iterate(self, state):
        models, refs = state
        o = self.opts
        sampling = self.sampling()
        max_shell = models[0].current_shells - 1
        new_models, new_refs, unregularised, results = [], [], [], []
        for h in (0, 1):
            # each half's M-step right after its E-step, so only one half's sums (padded volumes) exist
            wsum, res = self.estep_half(h, models[h], refs[h], sampling)
            results.append(res)
            m, r = self._reconstruct(models[h], refs[h], wsum, max_shell)
            new_models.append(m)
            new_refs.append(r)
            unregularised.append(self._unregularised(refs[h], wsum, max_shell))
            del wsum
        new_refs = self._finish_halves(new_refs, unregularised, max_shell)
        # per-particle poses
        self.prev_angles = self.angles.copy()
        self.have_poses = True
        offsets_change = []
        for h in (0, 1):
            rows = self.halves[h]
            offsets_change.append(np.linalg.norm(results[h]["offset"] - self.particles["centres"][rows], axis=1))
            self.particles["centres"][rows] = results[h]["offset"].astype(np.float64)
            self.angles[rows] = results[h]["angles"]
            self.table = d3.particles_table_3d(
                self.table, rows, results[h]["angles"], results[h]["offset"], self.pixel_size,
                max_prob=results[h]["max_prob"], n_significant=results[h]["n_significant"],
                loglike=results[h]["loglike"])
        res_a = resolution_at(self.fsc, 0.143, self.box, self.pixel_size)
        res_shell = shell_of(res_a, self.box, self.pixel_size) if np.isfinite(res_a) else 1
        for m in new_models:
            m.resolution_shell = np.array([res_shell])
            m.current_shells = int(min(self.box // 2 + 1, max(8, res_shell + 1 + o.incr_shells)))
            m.iteration = models[0].iteration + 1
        first = models[0].iteration == 0
        angle_change = 180.0 if first else mean_angle_change(self.prev_angles, self.angles, self.opts.symmetry)
        offset_change = float(np.mean(np.concatenate(offsets_change)))
        decision = self.schedule.update(res_shell, angle_change, offset_change, sampling.fine_angular_step,
                                        sampling.fine_offset_step, res_a, self.diameter)
        self._sampling = sampling
        self._summary = (f"resolution {res_a:.2f} Å (FSC 0.143), mean pose change {angle_change:.2f}°, "
                         f"offsets {offset_change:.2f} px; {decision}")
        return new_models, new_refs

    # -- final iteration: both halves to Nyquist ---------------------------------------------
    def final(self, models, refs):
        """E-step of both halves at the converged sampling, then the full map from all data to Nyquist."""
        o = self.opts
        for m in models:
            m.current_shells = self.box // 2 + 1
        sampling = self.sampling()
        nyq = self.box // 2
        total, halves = None, []
        for h in (0, 1):
            wsum, res = self.estep_half(h, models[h], refs[h], sampling)
            # the "unfil" half maps, as RELION writes them: unregularised, so that their FSC (here and in
            # postprocessing) measures the data, not the previous iteration's τ²
            halves.append(self._unregularised(refs[h], wsum, nyq))
            if total is None:
                total = wsum
            else:
                total += wsum  # in place: the two halves' sums, and no third volume
            del wsum
            rows = self.halves[h]
            self.particles["centres"][rows] = res["offset"].astype(np.float64)
            self.angles[rows] = res["angles"]
            self.table = d3.particles_table_3d(self.table, rows, res["angles"], res["offset"], self.pixel_size,
                                               max_prob=res["max_prob"], n_significant=res["n_significant"],
                                               loglike=res["loglike"])
        half_fsc = fsc_curve(halves[0], halves[1], self.sphere)
        ssnr_full = ssnr_from_fsc(half_fsc, o.tau2_fudge, whole=True)[None, :]
        full, _ = refs[0].reconstruct(total.sums, None, o.tau2_fudge, mask_radius_px=self.radius, max_shell=nyq,
                                      ssnr=ssnr_full)
        full = np.asarray(get_backend(self.backend).to_numpy(full.images[0]), np.float32)
        self.fsc = half_fsc
        for m in models:
            m.iteration += 1
        return models, halves, full

    # -- state --------------------------------------------------------------------------------
    # -- the loop's hooks (spa.em.run.EMRun) ----------------------------------------------------
    def iteration_of(self, state) -> int:
        return state[0][0].iteration

    def finished(self, state) -> bool:
        return self.schedule.converged or state[0][0].iteration >= self.opts.max_iter - 1

    def iterations_left(self, state) -> int:
        return max(0, self.opts.max_iter - 1 - state[0][0].iteration)

    def describe(self, state) -> str:
        return self._summary

    def write_iteration(self, state) -> None:
        from spa.refine3d import outputs

        outputs.write_iteration(self, *state, self._sampling)

    def finish(self, state):
        """The last iteration (both halves to Nyquist) and the final files → (map, half maps, particle table,
        gold-standard resolution Å)."""
        from spa.refine3d import outputs

        models, halves, full = self.final(*state)
        res = resolution_at(self.fsc, 0.143, self.box, self.pixel_size)
        self.log(f"refine3d: final iteration {models[0].iteration}: gold-standard resolution {res:.2f} Å")
        outputs.write_final(self, models, halves, full, self.sampling())
        return full, halves, self.table, res

    def checkpoint_arrays(self, state) -> dict:
        models, refs = state
        arr = {}
        for h in (0, 1):
            arr.update(models[h].to_arrays(prefix=f"half{h + 1}_"))
            arr[f"half{h + 1}_map"] = np.asarray(get_backend(self.backend).to_numpy(refs[h].images[0]), np.float32)
        arr["centres"] = self.particles["centres"]
        arr["angles"] = self.angles
        arr["fsc"] = np.zeros(0) if self.fsc is None else np.asarray(self.fsc)
        arr["schedule"] = self.schedule.to_array()
        arr["table_extra"] = self.table[[c for c in ("rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples",
                                                     "rlnLogLikeliContribution") if c in self.table]].to_numpy(float)
        return arr

    def restore(self, arrays):
        models = [MlModel.from_arrays(arrays, prefix=f"half{h + 1}_") for h in (0, 1)]
        refs = [VolumeReferences(arrays[f"half{h + 1}_map"][None], symmetry=self.sym) for h in (0, 1)]
        self.particles["centres"] = np.array(arrays["centres"])
        self.angles = np.array(arrays["angles"])
        self.have_poses = True
        self.fsc = np.array(arrays["fsc"]) if arrays["fsc"].size else None
        self.schedule = Schedule.from_array(arrays["schedule"])
        self.table = d3.particles_table_3d(self.table, np.arange(len(self.table)), self.angles,
                                           self.particles["centres"], self.pixel_size)
        extra = arrays["table_extra"]
        for j, c in enumerate(("rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples",
                               "rlnLogLikeliContribution")[: extra.shape[1] if extra.ndim == 2 else 0]):
            self.table[c] = extra[:, j].astype(np.int64 if c == "rlnNrOfSignificantSamples" else float)
        return models, refs
