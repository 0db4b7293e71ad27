"""Two-conformation data sets (the demo molecule and the same with its last domain turned 30°, 50/50)."""

from spa.cli import main


def simulate_two_states(tmp_path_factory, name: str, *, n: int, snr: float, seed: int):
    """Simulate ``n`` particles (box 48 at 2 Å/px) of two conformations; returns the folder."""
    d = tmp_path_factory.mktemp(name)
    assert main(["simulate", "--kind", "particles", "--preset", "demo", "--n-particles", str(n), "--box", "48",
                 "--snr", str(snr), "--conformations", "2", "--output-dir", str(d), "--seed", str(seed)]) == 0
    return d


def accuracy(estimated, truth) -> float:
    """Fraction correct under the best matching of the two arbitrary labels."""
    import numpy as np

    same = np.mean(estimated == truth)
    return max(same, 1 - same)
