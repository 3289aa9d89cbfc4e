"""Small statistics shared by the figure jobs: means with 95% t confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 15: 2.13, 20: 2.09, 30: 2.04}


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (table, rounded
    down to the nearest tabulated df: a conservative interval)."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two samples")
    if df > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]


def mean_ci(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval (0 for a single sample)."""
    a = np.asarray(xs, dtype=float)
    if len(a) < 2:
        return float(a.mean()), 0.0
    return float(a.mean()), float(t95(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
