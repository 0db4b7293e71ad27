"""Gold-standard 3D auto-refinement (RELION's Refine3D) on the shared EM engine."""
