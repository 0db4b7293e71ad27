"""Consensus across repeated runs: keep what independent estimates agree on, report how much they disagree.

- :mod:`spa.consensus.classes`: class membership across classification runs
  (Hungarian class matching, intersection, stability against chance, ARI).
- :mod:`spa.consensus.poses`: poses of two refinements (global frame
  alignment, angular difference modulo symmetry, shift difference).
- :mod:`spa.consensus.report`: reading runs matched by rlnImageName, writing
  the STAR / JSON / PNG outputs.
"""

from spa.consensus.classes import ClassConsensus, adjusted_rand_index, class_consensus, contingency_table, match_labels
from spa.consensus.poses import PoseConsensus, estimate_frame, pose_consensus

__all__ = [
    "ClassConsensus",
    "PoseConsensus",
    "adjusted_rand_index",
    "class_consensus",
    "contingency_table",
    "estimate_frame",
    "match_labels",
    "pose_consensus",
]
