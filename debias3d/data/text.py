"""One word splitter for every stage: the audit (which words w_h / w_l are), augment (whether a
new prompt kept them) and the ShapeWorld parser read a prompt's words the same way.

A word is a run of letters or digits, with inner hyphens or apostrophes (``upside-down``,
``café's``, ``don't``); punctuation and underscores are not words.

>>> words("A café's 3 red-ish vases, don't")
['a', "café's", '3', 'red-ish', 'vases', "don't"]
>>> word_spans("a vase, upside-down!")
[('a', 0, 1), ('vase', 2, 6), ('upside-down', 8, 19)]
"""

from __future__ import annotations

import re

__all__ = ["WORD_RE", "word_spans", "words"]

#: A word: letters/digits, with inner hyphens or apostrophes ("upside-down", "it's").
WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for every word of ``text``, as written (case kept)."""
    return [(m.group(0), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (see the module docstring for what a word is)."""
    return [m.group(0) for m in WORD_RE.finditer(text.lower())]
