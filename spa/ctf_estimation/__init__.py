"""CTF estimation from micrographs (RELION's CtfFind job), by two estimators built on different mathematics:

* :mod:`spa.ctf_estimation.fit2d` — CTFFIND4-like: the background-subtracted amplitude spectrum's
  correlation with a CTF² model; exhaustive defocus (and phase-shift) scan, a 2D astigmatism grid, then
  bounded refinement of U, V, the angle; CTFFIND4's fit resolution;
* :mod:`spa.ctf_estimation.zeros` — Ctfplotter/Xmipp-like: per angular sector, the defocus whose CTF
  zeros fall on the minima of the sector's radial profile; an ellipse through the sectors' defoci; a
  ring-amplitude significance test for the fit resolution and an envelope B-factor.

Shared: :mod:`spa.ctf_estimation.spectrum` (tiled spectra, background) and RELION's CTF (:mod:`spa.ctf`,
:class:`spa.ctf.PhaseTerms`).  :mod:`spa.ctf_estimation.run` runs either over a micrograph table (Dask
batches, resumable per micrograph), :mod:`spa.ctf_estimation.figures` draws the diagnostics.
"""
