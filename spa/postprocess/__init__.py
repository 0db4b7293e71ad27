"""Postprocessing of a gold-standard refinement (RELION's MaskCreate, PostProcess and LocalRes jobs).

* :mod:`spa.postprocess.masks` — solvent masks from a map (threshold, extension, soft edge in Å);
* :mod:`spa.postprocess.phase_randomisation` — the masked FSC corrected for the mask's own
  correlation (Chen et al. 2013);
* :mod:`spa.postprocess.sharpen` — Guinier B-factor fit (Rosenthal & Henderson 2003), FSC weighting,
  MTF correction and low-pass;
* :mod:`spa.postprocess.postprocess` — the whole PostProcess job on two half maps;
* :mod:`spa.postprocess.locres` — local resolution from local FSCs in a sliding soft window.
"""
