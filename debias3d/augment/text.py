"""Word helpers shared by the context writers and the filters: tokens, simple lemmas, word checks.

The lemmatiser is deliberately simple (English plural rules plus a few irregular forms): the
filter only has to recognise ``vases`` as ``vase`` or ``snowmen`` as ``snowman``, and a rule table
is reproducible, fast and dependency-free.

>>> lemma("Boxes"), lemma("snowmen"), lemma("cups"), lemma("glass"), lemma("leaning")
('box', 'snowman', 'cup', 'glass', 'leaning')
>>> contains_words("Two red VASES with long necks", ["vase", "neck", "red"])
[]
>>> contains_words("a cup next to a box", ["next to", "bowl"])
['bowl']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from debias3d.data.text import words

__all__ = ["tokens", "lemma", "lemmas", "contains_words", "missing_words"]

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


def tokens(text: str) -> list[str]:
    """Lower-case words (:func:`debias3d.data.text.words`: inner hyphens and apostrophes kept)."""
    return words(text)


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


def lemmas(text: str) -> list[str]:
    """``[lemma(t) for t in tokens(text)]``."""
    return [lemma(t) for t in tokens(text)]


def _phrase(word: str) -> tuple[str, ...]:
    return tuple(lemma(t) for t in tokens(word))


def missing_words(text: str, words: Iterable[str]) -> list[str]:
    """Words (single words or phrases such as ``on top of``) whose lemmas do not occur in ``text``."""
    seq = lemmas(text)
    out = []
    for w in words:
        ph = _phrase(w)
        if not ph:
            continue
        n = len(ph)
        if not any(tuple(seq[i : i + n]) == ph for i in range(len(seq) - n + 1)):
            out.append(w)
    return out


def contains_words(text: str, words: Sequence[str]) -> list[str]:
    """Alias of :func:`missing_words` returning the missing ones (empty list = all present)."""
    return missing_words(text, words)
