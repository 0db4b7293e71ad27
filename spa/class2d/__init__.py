"""2D classification: the EM engine applied to in-plane poses, class selection, recentring."""
