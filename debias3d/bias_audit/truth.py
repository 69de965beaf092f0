"""Attribution methods checked against ShapeWorld ground truth (every ShapeWorld audit runs this).

For each method the audit reports three numbers, measured on its own samples:

* ``auc`` — does the word score predict the measurer's per-sample verdict "the shape shows the
  word"? Area under the ROC curve over (prompt, word, sample) uses of measurable attribute words,
  with a bootstrap interval over prompts. Probes score each sample; gradient methods give the
  prompt's ``|attr|`` to all of its samples. 0.5 is chance; below 0.5 the score points the wrong way.
* ``spearman`` — rank correlation between the method's set-level word table (mean score per
  word) and each word's fidelity (share of its uses the measurer finds shown).
* ``w_l_hit_rate`` — per prompt with at least two measurable words of unequal fidelity: is the
  method's lowest-scored measurable word one of the prompt's worst-shown words? ``chance`` is the
  same rate for a word picked at random (mean of ``#worst / #words``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["auc", "method_truth"]


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """``P(score of a positive > score of a negative)`` (ties count ½); NaN if a class is empty.

    >>> auc([0.9, 0.8, 0.1], [True, True, False]), auc([1, 1], [True, False])
    (1.0, 0.5)
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1, dtype=float)
    for v in np.unique(s):  # average ranks of ties
        idx = s == v
        ranks[idx] = ranks[idx].mean()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _hit_rate(rows: Any, col: str) -> tuple[float, float, int]:
    hits, chance, n = 0, 0.0, 0
    for _, g in rows.groupby("prompt_id", sort=False):
        per = g.groupby("word", sort=False).agg(fid=("shown", "mean"), score=(col, "mean"))
        per = per[np.isfinite(per["score"])]
        if len(per) < 2 or per["fid"].nunique() < 2:
            continue
        worst = set(per.index[per["fid"] == per["fid"].min()])
        low = per["score"].idxmin()
        hits += int(low in worst)
        chance += len(worst) / len(per)
        n += 1
    return (hits / n if n else math.nan), (chance / n if n else math.nan), n


def method_truth(
    rows: Any,
    methods: Sequence[str],
    tables: Mapping[str, Any],
    fidelity: Mapping[str, float],
    n_boot: int = 200,
    ci: float = 0.9,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """AUC (with interval), Spearman and w_l hit rate for each method.

    Args:
        rows: DataFrame ``prompt_id, word, sample, shown, score_<method>...`` — one row per use of
            a measurable word in a sample.
        methods: which ``score_<method>`` columns.
        tables: method → its set-level word table (``word``, ``mean_attr``).
        fidelity: word → fidelity.
        n_boot / ci / seed: bootstrap over prompts for the AUC interval.
    """
    from debias3d.bias_audit.words import spearman

    out: dict[str, dict[str, Any]] = {}
    prompts = rows["prompt_id"].unique() if len(rows) else np.array([])
    groups = {p: i for i, p in enumerate(prompts)}
    pid = rows["prompt_id"].map(groups).to_numpy() if len(rows) else np.zeros(0, int)
    rng = np.random.default_rng(seed)
    boot = [rng.integers(0, len(prompts), len(prompts)) for _ in range(n_boot)] if len(prompts) else []
    members = [np.flatnonzero(pid == i) for i in range(len(prompts))]
    for m in methods:
        col = f"score_{m}"
        if col not in rows or not len(rows):
            out[m] = {"auc": None, "n_uses": 0}
            continue
        s = rows[col].to_numpy(dtype=float)
        y = rows["shown"].to_numpy(dtype=bool)
        a = auc(s, y)
        vals = []
        for b in boot:
            idx = np.concatenate([members[i] for i in b])
            v = auc(s[idx], y[idx])
            if math.isfinite(v):
                vals.append(v)
        lo = float(np.quantile(vals, (1 - ci) / 2)) if vals else math.nan
        hi = float(np.quantile(vals, 1 - (1 - ci) / 2)) if vals else math.nan
        t = tables.get(m)
        words = []
        if t is not None and len(t):
            words = [(w, float(v)) for w, v in zip(t["word"], t["mean_attr"], strict=True) if w in fidelity]
        words = [(w, v) for w, v in words if math.isfinite(v)]
        rho = spearman([v for _, v in words], [fidelity[w] for w, _ in words])
        hit, chance, n_p = _hit_rate(rows, col)
        out[m] = {
            "auc": a,
            "auc_ci": [lo, hi],
            "n_uses": int(np.isfinite(s).sum()),
            "n_shown": int(y[np.isfinite(s)].sum()),
            "spearman": rho,
            "n_words": len(words),
            "w_l_hit_rate": hit,
            "w_l_chance": chance,
            "n_prompts": n_p,
        }
    return out
