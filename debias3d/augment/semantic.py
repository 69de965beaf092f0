"""Semantic augmentation (paper §3.3): which words to keep, and the context-writer requests.

For each audited prompt t_n with its most significant word w_h and least significant content word
w_l, a context writer produces C new prompts that keep the chosen words in new contexts (the
IRM-inspired context set C = {C_1, C_2, ...}). The strategies are the paper's ablations:

========================  ======================================================================
``both`` (default)        keep w_h and w_l ("Ours (Full)")
``only_wh``               keep w_h only
``only_wl``               keep w_l only
``random_words``          keep ``k`` content words drawn at random, seeded ("w/o grad guide")
========================  ======================================================================

>>> select_keep_words("a red vase with a long neck", "vase", "long", "both", seed=0)
('vase', 'long')
>>> select_keep_words("a red vase with a long neck", "vase", "long", "only_wl", seed=0)
('long',)
>>> len(select_keep_words("a red vase with a long neck", "vase", "long", "random_words", seed=0))
2
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from debias3d.data.text import words as tokens

__all__ = ["STOP_WORDS", "content_words", "select_keep_words", "stable_seed", "is_missing"]

# ShapeWorld's function words plus common English ones (the audit's is_stop column uses the same idea).
_ENGLISH_STOP = {
    "a", "an", "the", "with", "of", "on", "in", "at", "to", "and", "or", "its", "it", "is", "are", "that",
    "this", "has", "have", "each", "for", "by", "from", "into", "onto", "over", "under", "some", "very",
}  # fmt: skip


def _shapeworld_stop() -> set[str]:
    from debias3d.data.shapeworld import vocab

    return set(vocab.STOP_WORDS)


STOP_WORDS: frozenset[str] = frozenset(_ENGLISH_STOP | _shapeworld_stop())


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from any JSON-able parts, stable across processes and Python versions.

    >>> stable_seed(0, "p1") == stable_seed(0, "p1") != stable_seed(1, "p1")
    True
    """
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def is_missing(word: Any) -> bool:
    """True for ``None``, NaN and blank words (the audit may have no w_l for a one-word prompt)."""
    if word is None:
        return True
    if isinstance(word, float) and np.isnan(word):
        return True
    return not str(word).strip()


def content_words(prompt: str) -> list[str]:
    """Distinct non-stop words of ``prompt`` in order (lower case)."""
    return list(dict.fromkeys(t for t in tokens(prompt) if t not in STOP_WORDS and not t.isdigit()))


def select_keep_words(
    prompt: str, w_h: Any, w_l: Any, strategy: str, seed: int, k: int = 2, key: Any = ""
) -> tuple[str, ...]:
    """The words every new context must keep.

    Args:
        prompt: the source prompt t_n.
        w_h / w_l: the audit's most / least significant word (may be missing).
        strategy: ``both``, ``only_wh``, ``only_wl`` or ``random_words``.
        seed: global seed; ``random_words`` draws with ``stable_seed(seed, "random_words", key, prompt)``.
        k: words drawn by ``random_words``.
        key: an item key (e.g. the prompt id) mixed into the random draw.

    Returns:
        A tuple of distinct lower-case words (empty when nothing can be kept).
    """
    words: Sequence[Any]
    if strategy == "both":
        words = (w_h, w_l)
    elif strategy == "only_wh":
        words = (w_h,)
    elif strategy == "only_wl":
        words = (w_l,)
    elif strategy == "random_words":
        pool = content_words(prompt)
        rng = np.random.default_rng(stable_seed(seed, "random_words", key, prompt))
        take = min(k, len(pool))
        words = [pool[i] for i in sorted(rng.choice(len(pool), size=take, replace=False))] if take else []
    else:
        raise ValueError(f"strategy: unknown {strategy!r}")
    return tuple(dict.fromkeys(str(w).strip().lower() for w in words if not is_missing(w)))
