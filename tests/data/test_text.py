"""One word splitter: the audit, augment and the ShapeWorld parser read a prompt's words alike."""

from __future__ import annotations

import pytest

from debias3d.augment import filters, pipeline, semantic
from debias3d.bias_audit.words import split_words
from debias3d.data.shapeworld.parser import parse, tokenize
from debias3d.data.text import missing_words, words

CASES = [
    ("A café's 3 red-ish vases, don't", ["a", "café's", "3", "red-ish", "vases", "don't"]),
    ("an upside-down   lamp; next to a box!", ["an", "upside-down", "lamp", "next", "to", "a", "box"]),
    ("snake_case -dash- it’s", ["snake", "case", "dash", "it’s"]),
]


@pytest.mark.parametrize("text, want", CASES)
def test_audit_augment_and_parser_split_alike(text, want):
    assert words(text) == want
    assert filters.tokens is semantic.tokens is pipeline.tokens is words  # augment splits with it
    assert tokenize(text) == want
    assert [w.lower() for w, _, _ in split_words(text)] == want


def test_a_kept_word_is_found_however_it_is_written():
    # the audit may name w_l "café's" or "don't"; augment must find it in a rewritten prompt
    assert missing_words("Two cups beside a café's red-ish lamp", ["café's", "red-ish", "lamp"]) == []
    assert missing_words("a cafe lamp", ["café's"]) == ["café's"]


def test_parser_reads_every_grammar_prompt_back():
    from debias3d.data.shapeworld.grammar import evaluation_prompts

    prompts = evaluation_prompts(2, seed=0)
    assert prompts and all(parse(p.text) == p.spec for p in prompts)
