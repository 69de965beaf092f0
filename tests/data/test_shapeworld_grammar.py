"""ShapeWorld vocabulary, specs, grammar and parser."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.grammar import evaluation_prompts, sample_prompts, sample_spec
from debias3d.data.shapeworld.parser import ParseError, parse, prompt_words
from debias3d.data.shapeworld.phrasing import canonical_prompt, write_prompt
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec


def test_vocabulary_sizes():
    assert len(vocab.NOUNS) >= 12
    assert len(vocab.MODIFIERS) >= 8
    assert len(vocab.COLOURS) >= 6
    assert set(vocab.SIZES) == {"small", "large"}
    assert {"on top of", "next to", "stacked"} <= set(vocab.RELATIONS)
    assert {"a", "an", "the", "with", "of", "on", "top"} <= vocab.STOP_WORDS
    # every attribute word has exactly one kind and is never a stop word
    assert not set(vocab.WORD_KIND) & vocab.STOP_WORDS
    for m, nouns in vocab.MODIFIERS.items():
        assert nouns, m
        assert set(nouns) <= set(vocab.NOUNS)
    # noun defaults are never prompt colours, so an ignored colour word is measurable
    assert not set(vocab.DEFAULT_COLOUR.values()) & set(vocab.COLOURS)


@pytest.mark.parametrize("category", vocab.CATEGORIES)
def test_round_trip_every_category(category):
    for p in sample_prompts(60, category=category, rng=11):
        assert p.category == category
        assert parse(p.text) == p.spec, p.text


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), category=st.sampled_from(vocab.CATEGORIES))
def test_round_trip_hypothesis(seed, category):
    rng = np.random.default_rng(seed)
    spec = sample_spec(category, rng)
    for _ in range(3):  # every phrasing of the same spec parses back to it
        assert parse(write_prompt(spec, rng)) == spec
    assert parse(canonical_prompt(spec)) == spec


def test_sampling_is_deterministic_and_seed_dependent():
    a = [p.text for p in sample_prompts(40, rng=5)]
    b = [p.text for p in sample_prompts(40, rng=5)]
    c = [p.text for p in sample_prompts(40, rng=6)]
    assert a == b
    assert a != c


def test_category_shapes():
    for p in sample_prompts(30, category="basic", rng=0):
        assert len(p.spec.words()) <= 1
    for p in sample_prompts(30, category="complex", rng=0):
        assert len(p.spec.objects[0].words()) >= 3 and len(p.spec.objects[0].modifiers) >= 2
    for p in sample_prompts(30, category="grouped", rng=0):
        assert p.spec.count in (2, 3) and p.spec.relation is None
    for p in sample_prompts(30, category="spatial", rng=0):
        assert p.spec.relation in vocab.RELATIONS
    for p in sample_prompts(30, category="action", rng=0):
        assert p.spec.objects[0].action in vocab.ACTIONS
    for p in sample_prompts(30, category="fantastical", rng=0):
        o = p.spec.objects[0]
        assert "spiky" in o.modifiers or (
            o.colour is not None and o.colour not in vocab.NATURAL_COLOURS[o.noun]
        )


def test_word_weights_skew_sampling():
    rare = sum("red" in p.spec.words() for p in sample_prompts(300, rng=1, word_weights={"red": 1e-4}))
    common = sum("red" in p.spec.words() for p in sample_prompts(300, rng=1, word_weights={"red": 20.0}))
    assert rare <= 2
    assert common > 40


def test_paper_example_and_variants():
    spec = parse("A ceramic vase with a long, narrow neck")
    assert spec.objects[0] == ObjectSpec("vase", modifiers=("long", "narrow"), material="ceramic")
    assert parse("two red cups") == SceneSpec((ObjectSpec("cup", colour="red"),), count=2)
    assert parse("a stack of three bowls").relation == "stacked"
    s = parse("a small red cup on top of a blue table")
    assert s.relation == "on top of" and [o.noun for o in s.objects] == ["cup", "table"]
    assert parse("a vase turned upside down").objects[0].action == "upside-down"
    assert prompt_words("A red vase, tall.") == ["a", "red", "vase", "tall"]


@pytest.mark.parametrize(
    "text",
    [
        "a purple elephant",
        "",
        "a vase and a cup",
        "a red blue vase",
        "a stacked vase",
        "two cups on top of a table",
    ],
)
def test_parser_rejects(text):
    with pytest.raises(ParseError):
        parse(text)


def test_spec_validation_and_json():
    with pytest.raises(ValueError, match="noun"):
        ObjectSpec("elephant")
    with pytest.raises(ValueError, match="exclude"):
        ObjectSpec("vase", modifiers=("tall", "flat"))
    with pytest.raises(ValueError, match="relation"):
        SceneSpec((ObjectSpec("vase"),), relation="on top of")
    s = SceneSpec(
        (ObjectSpec("vase", colour="red", modifiers=("narrow", "long")), ObjectSpec("table")), "on top of"
    )
    assert s.objects[0].modifiers == ("long", "narrow")
    assert SceneSpec.from_json(s.to_json()) == s
    assert s.without("red").objects[0].colour is None


def test_evaluation_prompts_cover_every_word():
    ev = evaluation_prompts(n_per_category=6, seed=0, min_word_count=3)
    assert ev == evaluation_prompts(n_per_category=6, seed=0, min_word_count=3)
    assert {p.category for p in ev} == set(vocab.CATEGORIES)
    counts = {}
    for p in ev:
        for w in set(p.spec.words()):
            counts[w] = counts.get(w, 0) + 1
    for w in [*vocab.COLOURS, *vocab.MODIFIERS, *vocab.SIZES, *vocab.ACTIONS]:
        assert counts.get(w, 0) >= 3, w
    for p in ev:
        assert parse(p.text) == p.spec
