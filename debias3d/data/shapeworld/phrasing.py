"""ShapeWorld phrasing: writes the prompt text of a scene spec (the inverse of :mod:`.parser`).

Both the grammar (sampled prompts) and the builder (an asset's default prompt) write prompts
through this module, which depends only on the vocabulary and the spec types.

>>> from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec
>>> canonical_prompt(SceneSpec((ObjectSpec("vase", colour="red"),)))
'a red vase'
"""

from __future__ import annotations

import numpy as np

from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec

__all__ = ["canonical_prompt", "write_prompt"]


def _article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def _part_phrase(obj: ObjectSpec, plural: bool, rng: np.random.Generator | None) -> str:
    """'with a long, narrow neck and a wide base' (empty when the object has no part words)."""
    thin = [m for m in obj.modifiers if m in ("long", "short", "narrow", "thick")]
    chunks = []
    if thin:
        part = vocab.THIN_PART[obj.noun]
        sep = ", " if rng is None or rng.random() < 0.5 else " "
        adjs = sep.join(thin)
        if part == "legs":
            chunks.append(f"{adjs} legs")
        elif plural:
            chunks.append(f"{adjs} {part}s")
        else:
            chunks.append(f"{_article(adjs)} {adjs} {part}")
    if "wide" in obj.modifiers:
        chunks.append("wide bases" if plural else "a wide base")
    if not chunks:
        return ""
    if rng is not None and len(chunks) == 2 and rng.random() < 0.5:
        chunks = chunks[::-1]
    return "with " + " and ".join(chunks)


def _noun_phrase(obj: ObjectSpec, count: int, rng: np.random.Generator | None, stacked: bool = False) -> str:
    """Object phrase with determiner, adjectives, noun, part phrase and action phrase."""
    adjs = []
    if stacked:
        adjs.append("stacked")
    if obj.size:
        adjs.append(obj.size)
    adjs += [m for m in obj.modifiers if m not in vocab.PART_MODIFIERS]
    if obj.colour:
        adjs.append(obj.colour)
    if obj.material:
        adjs.append(obj.material)
    noun = vocab.PLURALS[obj.noun] if count > 1 else obj.noun
    core = " ".join([*adjs, noun])
    parts = _part_phrase(obj, count > 1, rng)
    if parts:
        core = f"{core} {parts}"
    if obj.action is None:
        det = vocab.COUNT_WORDS[count] if count > 1 else _article(core)
        return f"{det} {core}"
    forms = vocab.ACTION_PHRASES[obj.action]
    form = forms[0] if rng is None else forms[int(rng.integers(len(forms)))]
    if form.startswith("{np}"):
        return f"{_article(core)} {core}" + form[len("{np}") :]
    pre = form.replace(" {np}", "")
    return f"{_article(pre)} {pre} {core}"


def write_prompt(spec: SceneSpec, rng: np.random.Generator | int | None = None) -> str:
    """Write a prompt for ``spec``; ``rng`` picks among equivalent phrasings (None = canonical)."""
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    if spec.relation in ("on top of", "next to"):
        a, b = spec.objects
        text = f"{_noun_phrase(a, 1, rng)} {spec.relation} {_noun_phrase(b, 1, rng)}"
    elif spec.relation == "stacked":
        obj = spec.objects[0]
        if rng is not None and rng.random() < 0.5:
            text = "a stack of " + _noun_phrase(obj, spec.count, rng)
        else:
            text = _noun_phrase(obj, spec.count, rng, stacked=True)
    else:
        text = _noun_phrase(spec.objects[0], spec.count, rng)
    if rng is not None and rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text


def canonical_prompt(spec: SceneSpec) -> str:
    """The jitter-free phrasing of ``spec``."""
    return write_prompt(spec, None)
