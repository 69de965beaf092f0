"""From token attributions to words: merging, w_h / w_l, the global word table, checks.

* :func:`merge_tokens` — tokens → words through the tokenizer's character offsets. Sub-word pieces
  merge into their word (``sum`` or ``mean``); special tokens and punctuation are left out.
* :func:`extremes` — ``w_h`` (largest attribution) and ``w_l`` (smallest among content words, i.e.
  not in the configurable stop-word list), the paper's most / least significant words.
* :func:`global_word_table` — per vocabulary word across the set: mean attribution, prompt
  count, rank; joined with generator fidelity it shows over-relied and ignored words.
* :func:`deletion_masks` / :func:`faithfulness_summary` — the deletion test: remove the top-k vs
  the bottom-k attributed content words, re-score, compare the score changes.
* :func:`ground_truth_agreement` — ShapeWorld only: Spearman ρ between each attribute word's global
  attribution and its measured generator fidelity, and how many of the k lowest-fidelity words
  the audit flags as ``w_l`` somewhere.

Significance is ``|attr|``: ``grad`` attributions are non-negative already; ``grad_x_input`` and
integrated gradients are signed, and a large negative value is as significant as a large positive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from debias3d.data.text import WORD_RE, word_spans

logger = logging.getLogger(__name__)

__all__ = [
    "WORD_RE",
    "Word",
    "DEFAULT_STOP_WORDS",
    "split_words",
    "merge_tokens",
    "extremes",
    "global_word_table",
    "probe_word_table",
    "deletion_masks",
    "faithfulness_summary",
    "ground_truth_agreement",
    "spearman",
]


#: English function words used when no list is configured (ShapeWorld's list is added by config).
DEFAULT_STOP_WORDS: frozenset[str] = frozenset(
    "a an the of with and or in on at to for from by its it is are be as that this these those "
    "each has have his her their into onto over under next top side".split()
)


@dataclass(frozen=True)
class Word:
    """One word of a prompt with its merged attribution.

    Attributes:
        word: the text (lower-cased).
        index: position among the prompt's words (0-based).
        start / end: character span in the prompt.
        tokens: indices of its tokens in the tokenized sequence.
        attr: merged attribution (sum or mean over its tokens).
        is_stop: in the stop-word list.
    """

    word: str
    index: int
    start: int
    end: int
    tokens: tuple[int, ...]
    attr: float
    is_stop: bool


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for every word of ``text``; punctuation is not a word.

    >>> split_words("a vase, upside-down!")
    [('a', 0, 1), ('vase', 2, 6), ('upside-down', 8, 19)]
    """
    return word_spans(text)


def merge_tokens(
    text: str,
    offsets: np.ndarray,
    token_attr: np.ndarray,
    special: np.ndarray | None = None,
    aggregate: str = "sum",
    stop_words: Iterable[str] | None = None,
) -> list[Word]:
    """Merge token attributions into word attributions through character offsets.

    Args:
        text: the prompt.
        offsets: ``(T, 2)`` character spans of the tokens (HF ``offset_mapping``).
        token_attr: ``(T,)`` token attributions.
        special: ``(T,)`` bool, True for special tokens (excluded); default: tokens with an
            empty span.
        aggregate: ``sum`` or ``mean`` over a word's tokens.
        stop_words: words flagged ``is_stop`` (default :data:`DEFAULT_STOP_WORDS`).

    Returns:
        The words that have at least one token (words cut by truncation have none and are
        dropped), in order. Tokens that fall on no word (punctuation) are ignored.

    >>> import numpy as np
    >>> ws = merge_tokens("a spiky vase.", np.array([[0, 0], [0, 1], [2, 5], [5, 7], [8, 12], [12, 13], [0, 0]]),
    ...                   np.array([9.0, 1.0, 2.0, 3.0, 4.0, 7.0, 9.0]))
    >>> [(w.word, w.attr) for w in ws]
    [('a', 1.0), ('spiky', 5.0), ('vase', 4.0)]
    """
    if aggregate not in ("sum", "mean"):
        raise ValueError(f"aggregate must be sum or mean, got {aggregate!r}")
    stops = DEFAULT_STOP_WORDS if stop_words is None else frozenset(w.lower() for w in stop_words)
    offsets = np.asarray(offsets).reshape(-1, 2)
    attr = np.asarray(token_attr, dtype=np.float64).reshape(-1)
    if special is None:
        special = offsets[:, 1] <= offsets[:, 0]
    spans = split_words(text)
    members: list[list[int]] = [[] for _ in spans]
    starts = np.array([s for _, s, _ in spans]) if spans else np.zeros(0, int)
    for t, (a, b) in enumerate(offsets):
        if special[t] or b <= a:
            continue
        # the word whose span overlaps this token (tokens never straddle two words here)
        j = int(np.searchsorted(starts, b, side="left")) - 1
        if j >= 0 and spans[j][1] < b and a < spans[j][2]:
            members[j].append(t)
    out: list[Word] = []
    for (word, s, e), toks in zip(spans, members, strict=True):
        if not toks:
            continue
        vals = attr[toks]
        value = float(vals.sum() if aggregate == "sum" else vals.mean())
        w = word.lower()
        out.append(Word(w, len(out), s, e, tuple(toks), value, w in stops))
    return out


def extremes(words: Sequence[Any], signed: bool = False) -> tuple[Any | None, Any | None]:
    """``(w_h, w_l)``: the content words with the largest and the smallest significance.

    Args:
        words: a prompt's words (anything with ``word``, ``index``, ``attr``, ``is_stop``).
        signed: rank by ``attr`` itself (word probes: a negative drop is *less* shown than zero)
            instead of ``|attr|`` (gradients, whose sign is not "shown vs ignored").

    Stop words are never chosen (neither ``w_h`` nor ``w_l``), nor are words without a finite
    attribution (not probed). ``w_l`` is ``None`` when it would be ``w_h`` (one content word), so
    a word is never both over-relied on and ignored. Ties go to the earlier word.
    """

    def sig(w: Any) -> float:
        return float(w.attr) if signed else abs(float(w.attr))

    content = [w for w in words if not w.is_stop and np.isfinite(w.attr)]
    if not content:
        return None, None
    w_h = max(content, key=lambda w: (sig(w), -w.index))
    w_l = min(content, key=lambda w: (sig(w), w.index))
    return w_h, (None if w_l is w_h else w_l)


def global_word_table(words: Any, method: str, normalize: bool = True) -> Any:
    """The set-wide word table: every word's mean attribution, prompt count and rank.

    Args:
        words: the ``words.parquet`` frame (``prompt_id, word, attr_<method>, is_stop``).
        method: which ``attr_<method>`` column.
        normalize: divide each attribution by its prompt's total ``|attr|`` first, so long prompts
            (more words sharing the score) do not make every word look weak.

    Returns:
        DataFrame ``word, mean_attr, n_prompts, is_stop, rank`` sorted by ``mean_attr``
        descending (rank 1 = the most relied-on word of the set).
    """
    import pandas as pd

    col = f"attr_{method}"
    if words is None or len(words) == 0 or col not in words:
        return pd.DataFrame(columns=["word", "mean_attr", "n_prompts", "is_stop", "rank"])
    df = words[["prompt_id", "word", "is_stop", col]].copy()
    df["sig"] = df[col].abs()
    if normalize:
        tot = df.groupby("prompt_id")["sig"].transform("sum").replace(0.0, np.nan)
        df["sig"] = (df["sig"] / tot).fillna(0.0)
    g = df.groupby("word", sort=True).agg(
        mean_attr=("sig", "mean"), n_prompts=("prompt_id", "nunique"), is_stop=("is_stop", "first")
    )
    g = g.reset_index().sort_values(["mean_attr", "word"], ascending=[False, True], kind="mergesort")
    g["rank"] = np.arange(1, len(g) + 1)
    return g.reset_index(drop=True)


def probe_word_table(
    words: Any,
    method: str,
    n_boot: int = 200,
    ci: float = 0.9,
    threshold: float | None = 0.0,
    seed: int = 0,
) -> Any:
    """The set-wide table of a word probe: per word, its mean score over prompts with an interval.

    Args:
        words: the ``words.parquet`` frame with ``attr_<method>`` (per-prompt scores: drops, or
            ``choice`` probabilities) and, for ``threshold=None``, ``thr_<method>``.
        method: ``occlusion``, ``contrastive`` or ``choice``.
        n_boot / ci: bootstrap over the prompts that use the word.
        threshold: verdict threshold (see :func:`debias3d.bias_audit.probes.verdict`); ``None``:
            each word's own threshold from ``thr_<method>`` (``choice``: its chance, ``1 / (K + 1)``).

    Returns:
        DataFrame ``word, mean_attr, lo, hi, verdict, threshold, n_prompts, is_stop, rank`` sorted by
        ``mean_attr`` descending (rank 1 = the most clearly shown word); words never probed
        (stop words) are left out.
    """
    import pandas as pd

    from debias3d.bias_audit.probes import verdict

    cols = ["word", "mean_attr", "lo", "hi", "verdict", "threshold", "n_prompts", "is_stop", "rank"]
    col = f"attr_{method}"
    if words is None or len(words) == 0 or col not in words:
        return pd.DataFrame(columns=cols)
    own = [c for c in (f"lo_{method}", f"hi_{method}") if c in words]
    thr_col = f"thr_{method}" if threshold is None and f"thr_{method}" in words else None
    df = words[["prompt_id", "word", "is_stop", col, *own, *([thr_col] if thr_col else [])]].copy()
    df = df[np.isfinite(df[col].astype(float))]
    agg = {"v": (col, "mean"), "is_stop": ("is_stop", "first")}
    if thr_col:
        agg["thr"] = (thr_col, "mean")
    if len(own) == 2:
        agg.update(lo=(own[0], "min"), hi=(own[1], "max"))
    per = df.groupby(["word", "prompt_id"], sort=True).agg(**agg)
    rng = np.random.default_rng(seed)
    rows = []
    for word, g in per.groupby(level=0, sort=True):
        v = g["v"].to_numpy(dtype=float)
        if len(v) > 1:
            means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
            lo, hi = float(np.quantile(means, (1 - ci) / 2)), float(np.quantile(means, 1 - (1 - ci) / 2))
        elif "lo" in g:  # one prompt: its own interval (over samples and alternatives)
            lo, hi = float(g["lo"].iloc[0]), float(g["hi"].iloc[0])
        else:
            lo = hi = math.nan
        thr = float(g["thr"].mean()) if thr_col else (math.nan if threshold is None else float(threshold))
        vd = verdict(lo, hi, thr)
        rows.append([word, float(v.mean()), lo, hi, vd, thr, len(v), bool(g["is_stop"].iloc[0])])
    t = pd.DataFrame(rows, columns=cols[:-1])
    t = t.sort_values(["mean_attr", "word"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    t["rank"] = np.arange(1, len(t) + 1)
    return t


def deletion_masks(
    words: Sequence[Word], attention_mask: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Attention masks with the top-k / bottom-k content words removed (the deletion test).

    Args:
        words: a prompt's words (from :func:`merge_tokens`).
        attention_mask: ``(T,)`` the prompt's mask.
        k: words to delete on each side; reduced to ``n_content // 2`` so the two sets never
            overlap.

    Returns:
        ``(mask_top, mask_bottom, k_used)``; ``k_used = 0`` means the prompt is too short to test.
    """
    content = [w for w in words if not w.is_stop]
    k = min(int(k), len(content) // 2)
    top = np.asarray(attention_mask).copy()
    bottom = top.copy()
    if k <= 0:
        return top, bottom, 0
    ranked = sorted(content, key=lambda w: (-abs(w.attr), w.index))
    for w in ranked[:k]:
        top[list(w.tokens)] = 0
    for w in ranked[-k:]:
        bottom[list(w.tokens)] = 0
    return top, bottom, k


def faithfulness_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summarise per-prompt deletion results.

    Args:
        rows: per prompt ``{"q": q, "q_top": q without top-k, "q_bottom": q without bottom-k, "k": k}``.

    Returns:
        ``n_prompts``, ``mean_change_top`` / ``mean_change_bottom`` (mean ``|q_del - q|``),
        ``mean_signed_change_top`` / ``_bottom``, ``top_exceeds_bottom`` (share of prompts whose
        top-k deletion moved the score more) and ``passed`` (top change > bottom change).
    """
    rows = [r for r in rows if r.get("k", 0) > 0]
    if not rows:
        return {"n_prompts": 0, "passed": None}
    q = np.array([r["q"] for r in rows])
    top = np.array([r["q_top"] for r in rows]) - q
    bot = np.array([r["q_bottom"] for r in rows]) - q
    out = {
        "n_prompts": len(rows),
        "k": int(max(r["k"] for r in rows)),
        "mean_change_top": float(np.abs(top).mean()),
        "mean_change_bottom": float(np.abs(bot).mean()),
        "mean_signed_change_top": float(top.mean()),
        "mean_signed_change_bottom": float(bot.mean()),
        "top_exceeds_bottom": float((np.abs(top) > np.abs(bot)).mean()),
    }
    out["passed"] = bool(out["mean_change_top"] > out["mean_change_bottom"])
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if fewer than 3 points or constant."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 3:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # average ranks of ties
            idx = v == val
            r[idx] = r[idx].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def ground_truth_agreement(
    table: Any,
    fidelity: Mapping[str, float],
    w_l_words: Iterable[str],
    k: int = 5,
    words: Iterable[str] | None = None,
    min_prompts: int = 1,
) -> dict[str, Any]:
    """Does low attribution mean "ignored by the generator"? Measured against ShapeWorld ground truth.

    Args:
        table: :func:`global_word_table` output.
        fidelity: word → generator fidelity in [0, 1] (share of samples that show the word).
        w_l_words: every prompt's ``w_l``.
        k: how many lowest-fidelity words to check.
        words: restrict to these words (e.g. ShapeWorld's modifier words); default all in both.
        min_prompts: ignore words seen in fewer prompts.

    Returns:
        ``spearman`` (ρ between mean attribution and fidelity; the paper's claim predicts ρ > 0:
        low gradient ↔ low fidelity), ``n_words``, ``lowest_fidelity`` (the k words),
        ``flagged_as_w_l`` (which of them are some prompt's ``w_l``; words of fidelity 1 are never listed), ``hits`` = their count,
        and ``per_word`` rows.
    """
    sel = set(words) if words is not None else None
    rows = []
    for r in table.itertuples(index=False):
        if r.word not in fidelity or (sel is not None and r.word not in sel) or r.n_prompts < min_prompts:
            continue
        rows.append(
            {
                "word": r.word,
                "mean_attr": float(r.mean_attr),
                "n_prompts": int(r.n_prompts),
                "fidelity": float(fidelity[r.word]),
            }
        )
    rho = spearman([r["mean_attr"] for r in rows], [r["fidelity"] for r in rows])
    flagged = set(w_l_words)
    # a word the generator always shows is not "low fidelity", however few words fall below 1
    low = [r["word"] for r in sorted(rows, key=lambda r: (r["fidelity"], r["word"])) if r["fidelity"] < 1.0][
        :k
    ]
    hits = [w for w in low if w in flagged]
    return {
        "spearman": None if np.isnan(rho) else rho,
        "n_words": len(rows),
        "k": int(k),
        "lowest_fidelity": low,
        "flagged_as_w_l": hits,
        "hits": len(hits),
        "per_word": sorted(rows, key=lambda r: r["word"]),
    }
