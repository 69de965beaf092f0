"""Automatic filtering of candidate prompts (replaces the paper's manual step, §3.3).

A candidate t_nc is rejected, with a reason, when it

====================  ===========================================================================
``empty``             is blank
``too_short``         has fewer than ``min_words`` words
``too_long``          has more than ``max_words`` words or ``max_chars`` characters
``missing_w_h``       lacks w_h (after lower-casing and simple lemmatisation)
``missing_w_l``       lacks w_l
``missing_word``      lacks another kept word (``random_words`` strategy)
``off_vocabulary``    (world = shapeworld) uses words the ShapeWorld grammar does not know, or does
                      not parse as a ShapeWorld scene
``unbuildable``       (world = shapeworld) describes a scene the builder cannot show faithfully
``duplicate_exact``   repeats the source prompt or an accepted prompt (case/space-insensitive)
``duplicate_near``    has sentence-embedding cosine > ``near_duplicate_threshold`` (0.95) with the
                      source prompt or an accepted prompt (MiniLM, mean pooling over real tokens)
====================  ===========================================================================

Diversity of a source prompt's accepted set is the mean pairwise embedding distance
``1 - cos(e_i, e_j)`` over its accepted prompts (``None`` with fewer than two).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from debias3d.augment.config import FilterConfig
from debias3d.data.text import missing_words
from debias3d.data.text import words as tokens

__all__ = [
    "Rejection",
    "FilterResult",
    "PromptFilter",
    "SentenceEmbedder",
    "diversity",
    "shapeworld_vocabulary",
]

logger = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass
class Rejection:
    """One rejected candidate: the prompt, a reason code and a one-line detail."""

    prompt: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "reason": self.reason, "detail": self.detail}


@dataclass
class FilterResult:
    """Accepted prompts (in candidate order), rejections and the diversity of the accepted set."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    diversity: float | None = None


@lru_cache(maxsize=1)
def shapeworld_vocabulary() -> frozenset[str]:
    """Every word the ShapeWorld grammar can write (the parser's and the builder's vocabulary)."""
    from debias3d.data.shapeworld import vocab

    words: set[str] = set(vocab.NOUNS) | set(vocab.PLURALS.values()) | set(vocab.COLOURS) | set(vocab.SIZES)
    words |= set(vocab.MODIFIERS) | set(vocab.ACTIONS) | set(vocab.COUNTS) | set(vocab.MATERIALS)
    words |= (
        set(vocab.PART_WORDS)
        | {p + "s" for p in vocab.PART_WORDS}
        | {"bases", "stacked", "stack", "upside", "down"}
    )
    words |= (
        set(vocab.STOP_WORDS) | set(vocab.THIN_PART.values()) | {p + "s" for p in vocab.THIN_PART.values()}
    )
    for phrase in [*vocab.RELATIONS, *(p for ps in vocab.ACTION_PHRASES.values() for p in ps)]:
        words |= set(tokens(phrase.replace("{np}", " ")))
    return frozenset(words)


def diversity(embeddings: np.ndarray) -> float | None:
    """Mean pairwise ``1 - cos`` of unit vectors ``(N, D)``; ``None`` for ``N < 2``.

    >>> diversity(np.eye(3))
    1.0
    """
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(e)
    if n < 2:
        return None
    sim = e @ e.T
    iu = np.triu_indices(n, 1)
    return float(np.mean(1.0 - sim[iu]))


@lru_cache(maxsize=4)
def _shared_encoder(name: str) -> Any:
    """One frozen text encoder per name and process (loading MiniLM takes seconds)."""
    from debias3d.registry import build

    return build("text_encoder", name)


class SentenceEmbedder:
    """Sentence embeddings from a registered text encoder: mean over real tokens, L2-normalised.

    Args:
        encoder: a text encoder name (registry kind ``text_encoder``, default ``minilm``) or an
            object with ``encode_one_by_one(texts) -> [(T_i, D)]``; built on first use.
    """

    def __init__(self, encoder: Any = "minilm") -> None:
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    @property
    def encoder(self) -> Any:
        if isinstance(self._encoder, str):
            self._encoder = _shared_encoder(self._encoder)
        return self._encoder

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` float32 unit vectors."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            feats = self.encoder.encode_one_by_one(missing)
            for t, f in zip(missing, feats, strict=True):
                v = f.float().mean(0).numpy() if hasattr(f, "numpy") else np.asarray(f).mean(0)
                self._cache[t] = (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
        if not texts:
            return np.zeros((0, 1), np.float32)
        return np.stack([self._cache[t] for t in texts])


def _norm_text(text: str) -> str:
    return " ".join(tokens(text))


class PromptFilter:
    """The automatic filter (see the module docstring for the reasons, checked in that order).

    Args:
        config: thresholds and switches.
        world: ``shapeworld`` turns the vocabulary and buildability checks on; ``open`` turns them off.
        embed: texts -> unit vectors ``(N, D)``; default :class:`SentenceEmbedder` over ``config.text_encoder``.
    """

    def __init__(
        self, config: FilterConfig | None = None, world: str = "shapeworld", embed: Embed | None = None
    ):
        self.config = config or FilterConfig()
        self.world = world
        self.embed: Embed = embed if embed is not None else SentenceEmbedder(self.config.text_encoder)

    def check(
        self, prompt: str, keep_words: Sequence[str], w_h: str | None = None, w_l: str | None = None
    ) -> Rejection | None:
        """Checks that need no other prompt: length, kept words, vocabulary, buildability."""
        c = self.config
        words = prompt.split()
        if not prompt.strip():
            return Rejection(prompt, "empty", "blank prompt")
        if len(words) < c.min_words:
            return Rejection(prompt, "too_short", f"{len(words)} words < min_words={c.min_words}")
        if len(words) > c.max_words:
            return Rejection(prompt, "too_long", f"{len(words)} words > max_words={c.max_words}")
        if len(prompt) > c.max_chars:
            return Rejection(prompt, "too_long", f"{len(prompt)} chars > max_chars={c.max_chars}")
        if c.require_words and keep_words:
            missing = missing_words(prompt, keep_words)
            if missing:
                if w_h is not None and w_h in missing:
                    reason = "missing_w_h"
                elif w_l is not None and w_l in missing:
                    reason = "missing_w_l"
                else:
                    reason = "missing_word"
                return Rejection(prompt, reason, f"lacks {', '.join(repr(m) for m in missing)}")
        if self.world == "shapeworld":
            return self._check_shapeworld(prompt)
        return None

    def _check_shapeworld(self, prompt: str) -> Rejection | None:
        from debias3d.data.shapeworld.builder import scene_problems
        from debias3d.data.shapeworld.parser import ParseError, parse

        c = self.config
        if c.check_vocabulary:
            vocab = shapeworld_vocabulary()
            unknown = list(dict.fromkeys(t for t in tokens(prompt) if t not in vocab))
            if unknown:
                return Rejection(prompt, "off_vocabulary", f"unknown words {unknown[:6]}")
        if c.check_vocabulary or c.check_buildable:
            try:
                spec = parse(prompt)
            except ParseError as err:
                return Rejection(prompt, "off_vocabulary", f"not a ShapeWorld scene: {err}")
            if c.check_buildable:
                problems = scene_problems(spec)
                if problems:
                    return Rejection(prompt, "unbuildable", "; ".join(problems[:3]))
        return None

    def filter(
        self,
        source_prompt: str,
        candidates: Sequence[str],
        keep_words: Sequence[str],
        w_h: str | None = None,
        w_l: str | None = None,
    ) -> FilterResult:
        """Filter one source prompt's candidates; near duplicates are checked against the source
        prompt and the candidates accepted before them."""
        out = FilterResult()
        seen = {_norm_text(source_prompt): "the source prompt"}
        survivors: list[str] = []
        for cand in candidates:
            cand = " ".join(str(cand).split())
            rej = self.check(cand, keep_words, w_h, w_l)
            if rej is None and _norm_text(cand) in seen:
                rej = Rejection(cand, "duplicate_exact", f"same as {seen[_norm_text(cand)]}")
            if rej is not None:
                out.rejected.append(rej)
                continue
            seen[_norm_text(cand)] = f"candidate {cand!r}"
            survivors.append(cand)
        if not survivors:
            return out
        emb = self.embed([source_prompt, *survivors])
        thr = self.config.near_duplicate_threshold
        kept_idx: list[int] = [0]  # the source prompt
        for i, cand in enumerate(survivors, start=1):
            sims = emb[kept_idx] @ emb[i]
            j = int(np.argmax(sims))
            if float(sims[j]) > thr:
                other = "the source prompt" if kept_idx[j] == 0 else repr(survivors[kept_idx[j] - 1])
                out.rejected.append(
                    Rejection(cand, "duplicate_near", f"cosine {float(sims[j]):.3f} > {thr:g} with {other}")
                )
                continue
            kept_idx.append(i)
            out.accepted.append(cand)
        out.diversity = diversity(emb[kept_idx[1:]]) if len(kept_idx) > 2 else None
        return out
