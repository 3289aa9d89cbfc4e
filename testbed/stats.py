"""Small statistics shared by the figure jobs: means with 95% t confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (scipy.stats; the
    rounded-down table used before made intervals up to 7.6% too wide at df 11-29)."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two samples")
    from scipy.stats import t  # lazily: scipy.stats takes ~0.3 s to import

    return float(t.ppf(0.975, df))


def mean_ci(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval (0 for a single sample)."""
    a = np.asarray(xs, dtype=float)
    if len(a) < 2:
        return float(a.mean()), 0.0
    return float(a.mean()), float(t95(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def paired_diff(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, bool]:
    """Mean of the paired differences a_i - b_i, the half-width of its 95% t interval,
    and whether that interval excludes zero (the difference is significant)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    mu, ci = mean_ci([x - y for x, y in zip(a, b, strict=True)])
    return mu, ci, len(a) > 1 and abs(mu) > ci
