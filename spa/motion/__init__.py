"""Preprocessing of movies: import (optics groups, gain), motion correction (global and local alignment,
dose weighting) and the resumable batch run over a movie table; see docs/stages.md (import, motion)."""
