"""Statistics of the evaluation: bootstrap confidence intervals and the neglected-word split.

* :func:`bootstrap_ci` — mean and percentile bootstrap CI of a sample (MATE-3D-style table cells).
* :func:`bootstrap_diff_ci` — CI of ``mean(b) - mean(a)`` for paired or unpaired samples.
* :func:`neglected_split` — words split into *neglected* (bottom quartile of the BASE model's
  fidelity) and *the rest*. The split is fixed by the base model only, so the fine-tuned model is
  measured on the same two word sets and cannot move the boundary in its own favour.

>>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=200, seed=0)
>>> ci.mean, ci.lo <= ci.mean <= ci.hi, ci.n
(2.5, True, 4)
>>> neglected_split({"red": 0.9, "spiky": 0.1, "tall": 0.8, "flat": 0.3})
(['spiky'], ['flat', 'red', 'tall'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CI", "bootstrap_ci", "bootstrap_diff_ci", "neglected_split"]


@dataclass(frozen=True)
class CI:
    """A mean with its bootstrap interval (``n`` observations)."""

    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix+"mean", prefix+"lo", prefix+"hi", prefix+"n"}``."""
        return {
            f"{prefix}mean": self.mean,
            f"{prefix}lo": self.lo,
            f"{prefix}hi": self.hi,
            f"{prefix}n": self.n,
        }


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> CI:
    """Mean and percentile bootstrap CI of ``values`` (non-finite values are dropped).

    Args:
        values: ``(N,)`` observations (e.g. per-sample evaluator scores of one category).
        n_boot: bootstrap resamples.
        ci: coverage of the interval, in (0, 1).
        seed: seed of the resampling (fixed, so tables are reproducible).

    Returns:
        :class:`CI`; all-NaN for an empty sample, a zero-width interval for one observation.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return CI(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    # The percentile interval of a skewed sample can miss the sample mean by a rounding hair.
    return CI(mean, float(min(lo, mean)), float(max(hi, mean)), n)


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    paired: bool = True,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> CI:
    """CI of ``mean(b) - mean(a)`` (after minus before).

    Args:
        a, b: observations of the two runs. ``paired=True`` needs equal lengths (same prompts and
            seeds before and after) and resamples the pairs together; NaN pairs are dropped.
        paired: resample pairs (True) or each sample on its own (False).
        n_boot / ci / seed: as in :func:`bootstrap_ci`.
    """
    if paired:
        xa, xb = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if xa.shape != xb.shape:
            raise ValueError(f"paired samples need equal lengths, got {xa.size} and {xb.size}")
        keep = np.isfinite(xa) & np.isfinite(xb)
        return bootstrap_ci(xb[keep] - xa[keep], n_boot=n_boot, ci=ci, seed=seed)
    xa, xb = _clean(a), _clean(b)
    if xa.size == 0 or xb.size == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    mb = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(mb - ma, [alpha, 1.0 - alpha])
    d = float(xb.mean() - xa.mean())
    return CI(d, float(min(lo, d)), float(max(hi, d)), int(min(xa.size, xb.size)))


def neglected_split(
    base_fidelity: Mapping[str, float], quantile: float = 0.25, min_words: int = 1
) -> tuple[list[str], list[str]]:
    """Split words into *neglected* (bottom ``quantile`` of BASE fidelity) and *the rest*.

    The neglected set is the ``ceil(quantile * W)`` words of lowest base fidelity (at least
    ``min_words``); ties at the boundary are broken by the word itself, so the split is
    deterministic. Words with a NaN fidelity are left out of both sets.

    Args:
        base_fidelity: word → fidelity of the base (not fine-tuned) model.
        quantile: share of words called neglected (default: the bottom quartile, 0.25).
        min_words: at least this many neglected words when there are any words.

    Returns:
        ``(neglected, rest)``, each sorted alphabetically.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    items = [(float(v), w) for w, v in base_fidelity.items() if v is not None and math.isfinite(float(v))]
    if not items:
        return [], []
    items.sort()
    k = min(len(items), max(min_words, math.ceil(quantile * len(items))))
    neglected = sorted(w for _, w in items[:k])
    rest = sorted(w for _, w in items[k:])
    return neglected, rest
