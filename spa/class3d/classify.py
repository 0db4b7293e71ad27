"""3D classification by regularised likelihood (Scheres 2012; RELION's Class3D).

K classes start from one reference low-passed to ``ini_high``: in the first
iteration the particles are split into K random subsets, each aligned to the
reference and reconstructed on its own, which breaks the symmetry between
classes as RELION does.  Given K references instead (one per class, e.g. the
classes of a multi-class ab initio or of an earlier run), each class starts
from its own map (low-passed likewise) and the first iteration is an ordinary
one over all of them.  Every later iteration runs the shared E-step over
classes × orientations (global HEALPix search with oversampled children,
local searches around each particle's input pose with ``sigma_ang`` (a
Gaussian prior of that width, degrees, as RELION's --sigma_ang; the prior
stays on the input poses, or on rlnAngle*Prior when given), or no
alignment at all with ``skip_align``: poses fixed at the input values) ×
shifts, then the MAP update with τ² = T × the class's power (T = 4 by
default), class fractions and noise spectra.  An optional reference mask
focuses the classification on a region.  From one reference the first half of
the iterations split the particles evenly over the classes (``balance_iter``;
Sinkhorn-balanced class posteriors per chunk): otherwise the class that grows
first, having the better-determined map, takes particles of every state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from spa.backend import get_backend
from spa.em import driver3d as d3
from spa.em.model import MlModel
from spa.em.mstep import maximize, next_window
from spa.em.sampling3d import FixedPoses, LocalSampling, Sampling3D
from spa.em.volume_refs import VolumeReferences
from spa.fourier import shells_to


@dataclass(kw_only=True)
class Class3DOptions(d3.Options3D):
    """3D classification's options (RELION's meaning; the shared ones in :class:`spa.em.options.EMOptions`)."""

    n_classes: int
    n_iter: int = 25
    tau2_fudge: float = 4.0
    highres_limit: float | None = None
    skip_align: bool = False
    sigma_ang: float | None = None
    reference_mask: str | None = None
    balance_iter: int | None = None
    significance_per_class: bool = True
    init_classes: str = "variability"
    variability_resolution: float = 8.0
    consensus_iter: int = 8

    CONTINUABLE: ClassVar[tuple] = ("n_iter",)

    def check_stage(self) -> None:
        from spa.em.options import at_least
        from spa.errors import SpaInputError

        super().check_stage()
        at_least(self, "n_classes", 1)
        at_least(self, "n_iter", 1)
        at_least(self, "consensus_iter", 0)
        at_least(self, "variability_resolution", 1e-6, " Å")
        if self.sigma_ang is not None:
            at_least(self, "sigma_ang", 1e-6, "°")
        if self.highres_limit is not None:
            at_least(self, "highres_limit", 1e-6, " Å")
        if self.init_classes not in ("variability", "random"):
            raise SpaInputError(None, f"option init_classes must be 'variability' or 'random', not "
                                      f"{self.init_classes!r}")


class Class3D(d3.Run3D):
    """One 3D classification run; the state between iterations is (model, references)."""

    stage = "class3d"

    def __init__(self, table, source, reference, opts: Class3DOptions, output_dir, *, optics=None, client=None,
                 provenance=None, log=print, progress=None):
        super().__init__(table, source, reference, opts, output_dir, optics=optics, client=client,
                         provenance=provenance, log=log, progress=progress)
        if opts.skip_align or opts.sigma_ang:
            from spa.errors import SpaInputError

            missing = [c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") if c not in self.table]
            if missing:
                what = "--skip-align" if opts.skip_align else "local searches (--sigma-ang)"
                raise SpaInputError(None, f"{what} needs poses in the particle STAR (missing {missing})")
            # local searches stay centred on the input poses (a consensus refinement's, or RELION's
            # rlnAngle*Prior columns when present): re-centring on each iteration's poses, found
            # against still-mixed class maps, lets them drift (two conformations, 8 iterations from the
            # true poses: 97 % correct with the prior kept, 90 % re-centred)
            prior_cols = ["rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior"]
            cols = prior_cols if opts.sigma_ang and all(c in self.table for c in prior_cols) \
                else ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
            self.particles["angles"] = self.table[cols].to_numpy(float)
        self.chunks = self.chunks_of(np.arange(len(self.table)))
        # how the classes start: K maps given, K maps from the 3D variability of posed particles, or
        # K random subsets aligned to the one reference (RELION's way, the only one without poses)
        self.starts_from = "references" if np.ndim(reference) == 4 else \
            "variability" if (opts.init_classes == "variability" and opts.n_classes > 1) else "random"
        self.mask = None
        if opts.reference_mask:
            from spa.io.mrc import read_mrc

            self.mask, _ = read_mrc(opts.reference_mask)
        self.max_shells = shells_to(opts.highres_limit, self.box, self.pixel_size)

    def sampling(self):
        o = self.opts
        if o.skip_align:
            return FixedPoses()
        if o.sigma_ang:  # local searches around each particle's input pose (RELION's --sigma_ang)
            return LocalSampling(o.healpix_order, o.offset_range, o.offset_step, o.oversampling, o.symmetry,
                                 sigma_deg=o.sigma_ang)
        return Sampling3D(o.healpix_order, o.offset_range, o.offset_step, o.oversampling, o.symmetry)

    def balanced(self, previous_iteration: int, n_classes: int) -> bool:
        """Whether the E-step after ``previous_iteration`` splits the particles evenly over the classes.

        Default: the first half of the run when all classes start from one reference (where the
        first class to grow otherwise takes every state); never with one reference per class."""
        o = self.opts
        n = o.balance_iter if o.balance_iter is not None else o.n_iter // 2 if self.starts_from == "random" else 0
        return n_classes > 1 and previous_iteration < int(n)

    def _estep(self, model, refs, chunks):
        o = self.opts
        sampling = self.sampling()
        coarse = d3.coarse_shells_for(max(sampling.angular_step, 1e-3), self.radius, self.box) if not o.skip_align \
            else model.current_shells
        wsum, results = self.estep(model, refs, sampling, chunks, coarse,
                                   balance_classes=self.balanced(model.iteration, refs.n_classes),
                                   significance_per_class=o.significance_per_class)
        return wsum, results, sampling

    def _post(self, refs):
        """Masks applied to new references: the spherical particle mask (in reconstruct) and the focus mask."""
        if self.mask is None:
            return refs
        vols = np.asarray(get_backend(self.backend).to_numpy(refs.images)) * self.mask[None]
        return VolumeReferences(vols, symmetry=self.sym)

    def initialise(self):
        """Iteration 1: K random subsets aligned to the one reference, each reconstructed as a class
        (or, with K references, one ordinary iteration over them)."""
        o = self.opts
        stats = d3.data_statistics(self.source, self.particles, self.chunks, self.box, self.pixel_size,
                                   self.n_groups, self.radius, o.do_ctf, self.client, self.backend,
                                   lanes=o.reduction_lanes, progress=self.pass_progress("image statistics"))
        if np.ndim(self.reference) == 4:
            return self._initialise_from_references(stats, self.reference, o.ini_high)
        if self.starts_from == "variability":
            if not self._has_poses():
                self._consensus_alignment(stats)
            maps, resolution = self._variability_maps()
            return self._initialise_from_references(stats, maps, resolution)
        model1, single = self._one_class_start(stats)
        window = model1.current_shells
        rng = np.random.default_rng(o.seed)
        label = rng.permutation(np.arange(len(self.table)) % o.n_classes)
        vols, results = [], {}
        wsum_all = None
        for k in range(o.n_classes):
            rows = np.nonzero(label == k)[0]
            chunks = self.chunks_of(rows)
            wsum, res, _ = self._estep(model1, single, chunks)
            res.pop("class_posterior", None)  # one-class posteriors say nothing about the K classes
            new_model, new_ref = maximize(model1, wsum, single, tau2_fudge=o.tau2_fudge, mask_radius_px=self.radius)
            vols.append(np.asarray(get_backend(self.backend).to_numpy(new_ref.images[0])))
            for key, v in res.items():
                results.setdefault(key, np.zeros((len(self.table),) + v.shape[1:], v.dtype))[rows] = v
            results.setdefault("class", np.zeros(len(self.table), np.int64))[rows] = k
            wsum_all = wsum if wsum_all is None else _add_noise_sums(wsum_all, wsum)
        from spa.em.noise import update_sigma2

        model = MlModel.initial(self.box, self.pixel_size, o.n_classes,
                                update_sigma2(wsum_all.sigma2, wsum_all.sigma2_count, stats.sigma2),
                                max(o.offset_range / 2, o.offset_step), window)
        model.iteration = 1
        refs = self._post(VolumeReferences(np.stack(vols), symmetry=self.sym))
        self._apply(results)
        return model, refs, results

    def _one_class_start(self, stats):
        """(one-class model, reference) from the one reference: low-passed to ``ini_high``, masked, on
        the data's grey scale, with a Fourier window to match."""
        o = self.opts
        ref = self._starting_map(self.reference, stats, o.ini_high)
        model = MlModel.initial(self.box, self.pixel_size, 1, stats.sigma2, max(o.offset_range / 2, o.offset_step),
                                self._window(o.ini_high))
        return model, VolumeReferences(ref[None], symmetry=self.sym)

    def _starting_map(self, volume, stats, resolution: float):
        """A starting map: low-passed to ``resolution`` Å, masked, on the data's grey scale."""
        ref = d3.prepare_reference(volume, self.pixel_size, resolution, self.radius)
        ref = ref * d3.grey_scale(ref, stats, self.pixel_size, low_res=max(2 * resolution, 60.0), high_res=resolution)
        return ref if self.mask is None else ref * self.mask

    def _window(self, resolution: float) -> int:
        """Fourier window (shells) for maps limited to ``resolution`` Å."""
        return min(self.max_shells, max(8, shells_to(resolution, self.box, self.pixel_size)))

    def _has_poses(self) -> bool:
        """Whether the STAR holds 3D poses (a 2D classification's in-plane angles alone, or placeholder
        zeros, are not: their tilts do not vary)."""
        cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
        return all(c in self.table for c in cols) and float(np.std(self.table["rlnAngleTilt"].to_numpy(float))) > 1.0

    def _consensus_alignment(self, stats):
        """Poses for particles that have none: ``consensus_iter`` iterations of one class from the
        reference (the same E- and M-steps, nothing written), as a consensus refinement would give."""
        o = self.opts
        model, refs = self._one_class_start(stats)
        n_iter = max(1, o.consensus_iter)
        for i in range(n_iter):
            model, refs, results, _ = self._iterate(model, refs)
            self.log(f"class3d: consensus alignment {i + 1}/{n_iter} (poses for the "
                     f"3D variability analysis): resolution {model.resolution_angstrom().min():.1f} Å, "
                     f"<Pmax> {results['max_prob'].mean():.3f}")

    def _variability_maps(self):
        """K starting maps from the 3D variability of the particles at their input poses
        (:mod:`spa.class3d.variability`): k-means on the coordinates along the top K−1 components,
        each cluster reconstructed at the analysis' resolution."""
        from spa.class3d import variability

        o = self.opts
        rows = variability.analysis_rows(len(self.table), o.seed)
        if len(rows) < len(self.table):
            self.log(f"class3d: 3D variability on a random subset of {len(rows)} of {len(self.table)} particles")
        angles = self.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)[rows]
        resolution = max(o.variability_resolution, 3.0 * self.pixel_size)
        data = variability.window_data(self.source, self.particles, rows, angles, self.particles["centres"][rows],
                                       self.box, self.pixel_size, resolution, self.radius, do_ctf=o.do_ctf,
                                       chunk_size=o.chunk_size,
                                       progress=self.pass_progress("3D variability: particles read"))
        # with a reference mask (focused classification) the components are confined to it
        mask = None if self.mask is None else variability.small_mask(self.mask, data)
        label, _, _ = variability.seed_labels(data, o.n_classes, seed=o.seed, mask=mask)
        sizes = ", ".join(str(int(c)) for c in np.bincount(label, minlength=o.n_classes))
        self.log(f"class3d: classes seeded by 3D variability at {resolution:.1f} Å (sizes {sizes})")
        return variability.class_maps(data, label, o.n_classes, self.box), resolution

    def _initialise_from_references(self, stats, references, ini_high: float):
        o = self.opts
        refs = np.asarray(references, np.float32)
        if refs.shape[0] != o.n_classes:
            from spa.errors import SpaInputError

            raise SpaInputError(None, f"{refs.shape[0]} references given for {o.n_classes} classes")
        vols = [self._starting_map(ref, stats, ini_high) for ref in refs]
        model0 = MlModel.initial(self.box, self.pixel_size, o.n_classes, stats.sigma2,
                                 max(o.offset_range / 2, o.offset_step), self._window(ini_high))
        model0.iteration = 0
        model, refs, results, _ = self._iterate(model0, VolumeReferences(np.stack(vols), symmetry=self.sym))
        return model, refs, results

    def _apply(self, results):
        if "offset" in results and not self.opts.skip_align:
            self.particles["centres"] = results["offset"].astype(np.float64)
        self.table = d3.particles_table_3d(
            self.table, np.arange(len(self.table)), results["angles"], results["offset"], self.pixel_size,
            classes=results["class"] + 1, max_prob=results.get("max_prob"),
            n_significant=results.get("n_significant"), loglike=results.get("loglike"),
            class_posterior=_assigned_class_posterior(results))

    def _iterate(self, model, refs):
        o = self.opts
        wsum, results, sampling = self._estep(model, refs, self.chunks)
        new_model, new_refs = maximize(model, wsum, refs, tau2_fudge=o.tau2_fudge, mask_radius_px=self.radius)
        new_refs = self._post(VolumeReferences(np.asarray(get_backend(self.backend).to_numpy(new_refs.images)),
                                               symmetry=self.sym))
        new_model.current_shells = next_window(new_model.resolution_shell, self.max_shells, o.incr_shells)
        new_model.iteration = model.iteration + 1
        self._apply(results)
        return new_model, new_refs, results, sampling

    # -- the loop's hooks (spa.em.run.EMRun) ----------------------------------------------------
    def start(self):
        """Iteration 1 (see :meth:`initialise`), written and checkpointed like every later one."""
        model, refs, _ = self.initialise()
        self._sampling = self.sampling()
        self.write_iteration((model, refs))
        self.save((model, refs))
        start = {"references": "one reference per class", "variability": "their 3D-variability clusters",
                 "random": "random subsets"}[self.starts_from]
        self.log(f"class3d: iteration 1/{self.opts.n_iter}: {self.opts.n_classes} classes from {start}")
        return model, refs

    def iterate(self, state):
        model, refs, self._results, self._sampling = self._iterate(*state)
        return model, refs

    def describe(self, state) -> str:
        model = state[0]
        frac = ", ".join(f"{p:.2f}" for p in model.pdf_class)
        balanced = " (sizes balanced)" if self.balanced(model.iteration - 1, model.n_classes) else ""
        return (f"class fractions {frac}{balanced}, resolution {model.resolution_angstrom().min():.1f} Å, "
                f"<Pmax> {self._results['max_prob'].mean():.3f}")

    def write_iteration(self, state) -> None:
        from spa.class3d import outputs

        outputs.write_iteration(self, *state, self._sampling)

    def finish(self, state):
        """The final files (copies of the last iteration's) → (model, references, particle table)."""
        from spa.class3d import outputs

        outputs.write_final(self, state[0].iteration)
        return state[0], state[1], self.table

    def extra_inputs(self) -> dict:
        mask = {} if self.mask is None else {"reference_mask": d3.array_digest(self.mask)}
        return {**super().extra_inputs(), **mask}

    def checkpoint_arrays(self, state) -> dict:
        model, refs = state
        arr = model.to_arrays()
        arr["refs"] = np.asarray(get_backend(self.backend).to_numpy(refs.images), np.float32)
        arr["centres"] = self.particles["centres"]
        cols = [c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnClassNumber",
                            "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples", "rlnLogLikeliContribution",
                            "rlnSpaClassPosterior")
                if c in self.table]
        arr["table_cols"] = np.array(cols)
        arr["table_vals"] = self.table[cols].to_numpy(float)
        return arr

    def restore(self, arrays):
        model = MlModel.from_arrays(arrays)
        refs = VolumeReferences(arrays["refs"], symmetry=self.sym)
        self.particles["centres"] = np.array(arrays["centres"])
        self.table = d3.particles_table_3d(self.table, np.arange(len(self.table)), np.zeros((len(self.table), 3)),
                                           self.particles["centres"], self.pixel_size)
        for j, c in enumerate(arrays["table_cols"]):
            vals = arrays["table_vals"][:, j]
            self.table[str(c)] = vals.astype(np.int64) if c in ("rlnClassNumber", "rlnNrOfSignificantSamples") else vals
        return model, refs


def _add_noise_sums(a, b):
    """Add the σ² sums of two single-class WsumModels (their class sums are kept apart by the caller)."""
    from spa.em.model import WsumModel

    return WsumModel({}, a.sigma2 + b.sigma2, a.sigma2_count + b.sigma2_count, a.class_weight + b.class_weight,
                     a.offset2 + b.offset2, a.n_images + b.n_images, a.loglike + b.loglike)


def _assigned_class_posterior(results):
    """Each particle's posterior probability of the class it is assigned, summed over its poses
    (None when the E-step did not report class posteriors)."""
    post = results.get("class_posterior")
    if post is None:
        return None
    return post[np.arange(post.shape[0]), results["class"]]
