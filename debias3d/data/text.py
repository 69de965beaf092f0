"""One word splitter for every stage: the audit (which words w_h / w_l are), augment (whether a
new prompt kept them) and the ShapeWorld parser read a prompt's words the same way.

A word is a run of letters or digits, with inner hyphens or apostrophes (``upside-down``,
``café's``, ``don't``); punctuation and underscores are not words.

>>> words("A café's 3 red-ish vases, don't")
['a', "café's", '3', 'red-ish', 'vases', "don't"]
>>> word_spans("a vase, upside-down!")
[('a', 0, 1), ('vase', 2, 6), ('upside-down', 8, 19)]

Beside the splitter, simple lemmas for checking that a rewritten prompt kept given words. The
lemmatiser is deliberately simple (English plural rules plus a few irregular forms): the check
only has to recognise ``vases`` as ``vase`` or ``snowmen`` as ``snowman``, and a rule table is
reproducible, fast and dependency-free.

>>> lemma("Boxes"), lemma("snowmen"), lemma("cups"), lemma("glass"), lemma("leaning")
('box', 'snowman', 'cup', 'glass', 'leaning')
>>> missing_words("Two red VASES with long necks", ["vase", "neck", "red"])
[]
>>> missing_words("a cup next to a box", ["next to", "bowl"])
['bowl']
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["WORD_RE", "lemma", "missing_words", "word_spans", "words"]

#: A word: letters/digits, with inner hyphens or apostrophes ("upside-down", "it's").
WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for every word of ``text``, as written (case kept)."""
    return [(m.group(0), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (see the module docstring for what a word is)."""
    return [m.group(0) for m in WORD_RE.finditer(text.lower())]


_IRREGULAR = {
    "men": "man",
    "women": "woman",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "leaves": "leaf",
}
# Words ending in "s" that are not plurals (lemma keeps them).
_KEEP_S = {
    "glass",
    "grass",
    "moss",
    "bus",
    "gas",
    "its",
    "is",
    "was",
    "has",
    "this",
    "lens",
    "chess",
    "dress",
    "cross",
}


def lemma(word: str) -> str:
    """Lower-cased singular form of ``word`` by simple rules (see module docstring)."""
    w = word.lower().strip(".,;:!?\"'()[]")
    if w in _KEEP_S or len(w) <= 3:
        return w
    for plural, single in _IRREGULAR.items():
        if w.endswith(plural) and (w == plural or len(w) > len(plural) + 2):
            return w[: -len(plural)] + single
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "ches", "shes", "zes")):
        return w[:-2]
    if w.endswith("ss") or w.endswith("us") or w.endswith("is"):
        return w
    if w.endswith("s"):
        return w[:-1]
    return w


def missing_words(text: str, wanted: Iterable[str]) -> list[str]:
    """Words (single words or phrases such as ``on top of``) whose lemmas do not occur in ``text``."""
    seq = [lemma(t) for t in words(text)]
    out = []
    for w in wanted:
        ph = tuple(lemma(t) for t in words(w))
        if not ph:
            continue
        n = len(ph)
        if not any(tuple(seq[i : i + n]) == ph for i in range(len(seq) - n + 1)):
            out.append(w)
    return out
