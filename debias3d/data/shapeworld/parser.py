"""ShapeWorld parser: prompt text -> :class:`SceneSpec`.

Keyword-based and forgiving: case, commas and unknown filler words are ignored, so it reads the
grammar's prompts exactly and most hand-written ones ("A ceramic vase with a long, narrow neck").
A relation phrase ("on top of", "next to") splits the prompt into two object segments; every
attribute word belongs to the segment it appears in.

>>> parse("A ceramic vase with a long, narrow neck").objects[0].modifiers
('long', 'narrow')
>>> parse("two red cups").count
2
"""

from __future__ import annotations

from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec
from debias3d.data.text import words


class ParseError(ValueError):
    """The prompt does not describe a ShapeWorld scene (no noun, too many nouns, ...)."""


_PHRASES = {"upside down": "upside-down", "on top of": "on_top_of", "next to": "next_to"}


def tokenize(text: str) -> list[str]:
    """Lower-case words (:func:`debias3d.data.text.words`; ``upside-down`` is one word)."""
    return words(text)


def prompt_words(text: str) -> list[str]:
    """Whitespace words of a prompt as attribution code should see them (lower case, no commas)."""
    return tokenize(text)


def _join_phrases(tokens: list[str]) -> list[str]:
    s = " " + " ".join(tokens) + " "
    for phrase, tok in _PHRASES.items():
        s = s.replace(f" {phrase} ", f" {tok} ")
    return s.split()


def _noun_of(tok: str) -> str | None:
    if tok in vocab.NOUNS:
        return tok
    return vocab.SINGULARS.get(tok)


def _object(tokens: list[str], text: str) -> tuple[ObjectSpec, bool]:
    """Parse one object segment; returns the spec and whether the noun was plural."""
    nouns = [(i, _noun_of(t)) for i, t in enumerate(tokens) if _noun_of(t) is not None]
    if not nouns:
        part = " ".join(tokens)
        where = repr(text) if part == " ".join(tokenize(text)) else f"{part!r} (part of {text!r})"
        raise ParseError(f"no ShapeWorld noun in {where} (known: {', '.join(vocab.NOUNS)})")
    if len({n for _i, n in nouns}) > 1:
        raise ParseError(f"more than one noun without a relation in {text!r}: {[n for _i, n in nouns]}")
    noun = nouns[0][1]
    assert noun is not None
    plural = tokens[nouns[0][0]] != noun
    colours = [t for t in tokens if t in vocab.COLOURS]
    sizes = [t for t in tokens if t in vocab.SIZES]
    actions = [t for t in tokens if t in vocab.ACTIONS]
    materials = [t for t in tokens if t in vocab.MATERIALS]
    mods = [t for t in tokens if t in vocab.MODIFIERS]
    for kind, found in (("colour", colours), ("size", sizes), ("action", actions), ("material", materials)):
        if len(set(found)) > 1:
            raise ParseError(f"several {kind} words for one {noun} in {text!r}: {found}")
    try:
        obj = ObjectSpec(
            noun,
            colour=colours[0] if colours else None,
            size=sizes[0] if sizes else None,
            modifiers=tuple(dict.fromkeys(mods)),
            action=actions[0] if actions else None,
            material=materials[0] if materials else None,
        )
    except ValueError as err:
        raise ParseError(f"{err} in {text!r}") from err
    return obj, plural


def parse(text: str) -> SceneSpec:
    """Parse a prompt into a :class:`SceneSpec`.

    Raises:
        ParseError: (a ``ValueError``) when no noun is found, several nouns appear without a
            relation, or attribute words contradict each other.
    """
    tokens = _join_phrases(tokenize(text))
    counts = [vocab.COUNTS[t] for t in tokens if t in vocab.COUNTS]
    for rel_tok, rel in (("on_top_of", "on top of"), ("next_to", "next to")):
        if rel_tok in tokens:
            i = tokens.index(rel_tok)
            a, _pa = _object(tokens[:i], text)
            b, _pb = _object(tokens[i + 1 :], text)
            if counts:
                raise ParseError(f"counts with {rel!r} are not supported: {text!r}")
            return SceneSpec((a, b), relation=rel)
    obj, plural = _object(tokens, text)
    stacked = "stacked" in tokens or "stack" in tokens
    count = counts[0] if counts else (2 if plural else 1)
    if stacked and count < 2:
        raise ParseError(f"'stacked' needs two or three objects: {text!r}")
    return SceneSpec((obj,), relation="stacked" if stacked else None, count=count)
