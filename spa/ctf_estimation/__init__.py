"""CTF estimation from micrographs (RELION's CtfFind job), by two estimators built on different mathematics:

* :mod:`spa.ctf_estimation.fit2d` — CTFFIND4-like: the background-subtracted amplitude spectrum's
  correlation with a CTF² model, exhaustive defocus search then 2D refinement of U, V and the angle;
* :mod:`spa.ctf_estimation.zeros` — Thon-ring zeros: per angular sector, the defocus whose CTF zeros
  fall on the minima of the sector's radial profile; an ellipse through the sectors' defoci.

Shared: :mod:`spa.ctf_estimation.spectrum` (tiled spectra, background) and RELION's CTF (:mod:`spa.ctf`).
"""
