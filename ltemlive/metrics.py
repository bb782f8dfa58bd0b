"""How good a phase is: the figures the benchmarks and reports use."""

from __future__ import annotations

import numpy as np


def phase_accuracy(phase: np.ndarray, truth: np.ndarray) -> float:
    """Normalised cross-correlation of the mean-subtracted phase with the truth ("accuracy", in [-1, 1])."""
    a = np.asarray(phase, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def phase_rmse(phase: np.ndarray, truth: np.ndarray) -> float:
    """RMS difference in rad after removing the (meaningless) mean of each."""
    a = np.asarray(phase, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    return float(np.sqrt((((a - a.mean()) - (b - b.mean())) ** 2).mean()))
