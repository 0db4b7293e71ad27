"""Ab-initio initial models: SGD from random blobs, common lines from class averages, and a chooser.

Public entry points:

* :func:`spa.initial_model.sgd.run_sgd` — one SGD ab initio run on a working set;
* :func:`spa.initial_model.commonlines.commonlines_model` — a map from class averages;
* :func:`spa.initial_model.choose.score_candidates` / :func:`~spa.initial_model.choose.choose_candidate`
  — projection matching against class averages or particles;
* :func:`spa.initial_model.align.align_symmetry_axes` / :func:`~spa.initial_model.align.symmetrise_aligned`
  — symmetry imposed at the end; :func:`~spa.initial_model.align.mirror_volume` — the other hand;
* :func:`spa.initial_model.driver.run_initial_model` — the ``spa initial-model`` stage.
"""
