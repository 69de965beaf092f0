"""Automatic filter: one row per rejection reason, plus word selection and the grammar writer."""

from __future__ import annotations

import numpy as np
import pytest

from debias3d.augment.config import FilterConfig
from debias3d.augment.filters import PromptFilter, SentenceEmbedder, diversity
from debias3d.augment.semantic import select_keep_words
from debias3d.data.text import lemma, missing_words


def _bag_embed(texts):
    """Bag-of-words unit vectors: a cheap, exact stand-in for the sentence encoder."""
    vocab = sorted({w for t in texts for w in t.lower().split()})
    e = np.array([[t.lower().split().count(w) for w in vocab] for t in texts], float)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


SOURCE = "a red vase with a long neck"
CHECK_CASES = [
    # candidate, world, expected reason (None = accepted)
    ("a blue vase with a long neck", "shapeworld", None),
    ("two blue VASES with long necks", "shapeworld", None),
    ("a blue bottle with a long neck", "shapeworld", "missing_w_h"),
    ("a blue vase with a short neck", "shapeworld", "missing_w_l"),
    ("vase", "shapeworld", "too_short"),
    ("a " + "very " * 40 + "long vase", "open", "too_long"),
    ("a long vase in a sunny garden", "shapeworld", "off_vocabulary"),
    ("a long vase in a sunny garden", "open", None),
    ("a vase with a long neck and a lamp", "shapeworld", "off_vocabulary"),
    ("a spiky vase with a long neck lying on its side", "shapeworld", "unbuildable"),
    ("", "open", "empty"),
]


@pytest.mark.parametrize(("candidate", "world", "reason"), CHECK_CASES)
def test_single_prompt_checks(candidate, world, reason):
    f = PromptFilter(FilterConfig(), world=world, embed=_bag_embed)
    rej = f.check(candidate, ["vase", "long"], "vase", "long")
    assert (rej.reason if rej else None) == reason, rej


def test_random_words_reason_and_phrases():
    f = PromptFilter(FilterConfig(), world="open", embed=_bag_embed)
    assert f.check("a vase on a box", ["vase", "on top of"]).reason == "missing_word"
    assert f.check("a vase on top of a box", ["vase", "on top of"]) is None


def test_duplicates_and_diversity():
    f = PromptFilter(FilterConfig(near_duplicate_threshold=0.95), world="shapeworld", embed=_bag_embed)
    cands = [
        "A red vase with a long neck",  # exact duplicate of the source (case-insensitive)
        "a blue vase with a long neck",
        "a blue vase with a long neck",  # exact duplicate of an accepted one
        "a blue vase with long a neck",  # same words: bag cosine 1.0 -> near duplicate
        "two tall vases with long necks",
    ]
    res = f.filter(SOURCE, cands, ["vase", "long"], "vase", "long")
    assert res.accepted == ["a blue vase with a long neck", "two tall vases with long necks"]
    assert [r.reason for r in res.rejected] == ["duplicate_exact", "duplicate_exact", "duplicate_near"]
    emb = _bag_embed(res.accepted)
    assert res.diversity == pytest.approx(1 - float(emb[0] @ emb[1]))


def test_minilm_near_duplicates_and_diversity():
    """The real sentence encoder: a one-word paraphrase is a near duplicate (cos 0.99); others are not."""
    f = PromptFilter(FilterConfig(), world="open", embed=SentenceEmbedder("minilm"))
    res = f.filter(
        SOURCE,
        ["a red vase having a long neck", "a long green vase on a table", "a blue vase with a long neck"],
        ["vase", "long"],
    )
    assert [r.reason for r in res.rejected] == ["duplicate_near"]
    assert len(res.accepted) == 2 and 0 < res.diversity < 1


def test_diversity_edge_cases():
    assert diversity(np.ones((1, 3))) is None
    assert diversity(np.eye(2)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("word", "lem"),
    [("vases", "vase"), ("boxes", "box"), ("snowmen", "snowman"), ("glass", "glass"), ("Cups", "cup")],
)
def test_lemma(word, lem):
    assert lemma(word) == lem


def test_missing_words_phrase():
    assert missing_words("a cup on top of a box", ["on top of", "cups"]) == []
    assert missing_words("a cup on a box", ["on top of"]) == ["on top of"]


STRATEGY_CASES = [
    ("both", ("vase", "long")),
    ("only_wh", ("vase",)),
    ("only_wl", ("long",)),
]


@pytest.mark.parametrize(("strategy", "expected"), STRATEGY_CASES)
def test_strategies(strategy, expected):
    assert select_keep_words(SOURCE, "vase", "long", strategy, seed=0) == expected


def test_random_words_seeded_and_content_only():
    picks = {select_keep_words(SOURCE, "vase", "long", "random_words", seed=s, key="p0") for s in range(20)}
    assert len(picks) > 1
    for p in picks:
        assert len(p) == 2 and set(p) <= {"red", "vase", "long", "neck"}
    assert select_keep_words(SOURCE, None, None, "random_words", 3) == select_keep_words(
        SOURCE, None, None, "random_words", 3
    )
    assert select_keep_words(SOURCE, "vase", float("nan"), "both", 0) == ("vase",)


def test_template_writer_keeps_words_and_builds():
    from debias3d.data.shapeworld.builder import scene_problems
    from debias3d.data.shapeworld.parser import parse
    from debias3d.models.llm.template import TemplateContextWriter

    w = TemplateContextWriter()
    for prompt, keep in [("a red vase with a long neck", ["vase", "long"]), ("two blue cups", ["cups", "two"]),
                         ("a small bowl on top of a wooden table", ["bowl", "on top of"])]:  # fmt: skip
        r = w.write(prompt, keep, n=5, seed=3)
        assert r.ok and len(r.prompts) == 5 and len(set(r.prompts)) == 5
        assert r.prompts == w.write(prompt, keep, n=5, seed=3).prompts
        for p in r.prompts:
            assert missing_words(p, keep) == [] and not scene_problems(parse(p))
    assert not w.write("a majestic dragon", ["dragon"], 2, 0).ok
