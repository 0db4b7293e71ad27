"""The EM engine shared by 2D/3D classification, refinement and ab initio: projector, backprojector, E-step, M-step, FSC."""
