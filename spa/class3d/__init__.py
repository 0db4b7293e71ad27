"""3D classification (RELION's Class3D) on the shared EM engine."""
