"""Tokens → words, w_h / w_l, word table, deletion masks, ground-truth agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from debias3d.bias_audit.words import (
    Word,
    deletion_masks,
    extremes,
    faithfulness_summary,
    global_word_table,
    ground_truth_agreement,
    merge_tokens,
    spearman,
    split_words,
)


@pytest.fixture(scope="module")
def tokenizer(text_encoder):
    return text_encoder.tokenizer


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a red vase", ["a", "red", "vase"]),
        ("a vase, upside-down!", ["a", "vase", "upside-down"]),
        ("two stacked snowmen.", ["two", "stacked", "snowmen"]),
        ("  ", []),
    ],
)
def test_split_words(text, words):
    assert [w for w, _, _ in split_words(text)] == words


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_subwords_merge_and_specials_punctuation_excluded(tokenizer, aggregate):
    text = "a spiky snowman, upside-down."
    enc = tokenizer(text, return_offsets_mapping=True)
    offsets = np.array(enc["offset_mapping"])
    toks = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    attr = np.arange(len(toks), dtype=float) + 1.0
    special = np.array([t in ("[CLS]", "[SEP]") for t in toks])
    words = merge_tokens(text, offsets, attr, special, aggregate, stop_words={"a"})
    assert [w.word for w in words] == ["a", "spiky", "snowman", "upside-down"]
    for w in words:
        pieces = attr[list(w.tokens)]
        assert w.attr == pytest.approx(pieces.sum() if aggregate == "sum" else pieces.mean())
        assert not any(special[list(w.tokens)])
        assert all(toks[t] not in (",", ".") for t in w.tokens)
    assert len(words[3].tokens) == 3  # upside - down
    assert words[0].is_stop and not words[1].is_stop
    # every non-special, non-punctuation token belongs to a word
    used = {t for w in words for t in w.tokens}
    rest = [toks[t] for t in range(len(toks)) if t not in used]
    assert sorted(rest) == sorted(["[CLS]", "[SEP]", ",", "."])


def test_truncated_words_are_dropped():
    words = merge_tokens(
        "a red vase", np.array([[0, 0], [0, 1], [2, 5], [0, 0]]), np.array([0.0, 1.0, 2.0, 0.0])
    )
    assert [w.word for w in words] == ["a", "red"]


def _w(word, attr, i, stop=False):
    return Word(word, i, 0, 0, (i,), attr, stop)


def test_extremes_uses_stop_words_and_magnitude():
    ws = [
        _w("a", 0.01, 0, True),
        _w("red", -0.9, 1),
        _w("vase", 0.5, 2),
        _w("with", 0.001, 3, True),
        _w("neck", 0.1, 4),
    ]
    w_h, w_l = extremes(ws)
    assert w_h.word == "red"  # |−0.9| is the largest
    assert w_l.word == "neck"  # the smallest content word, not the stop word "with"
    assert extremes([_w("a", 1.0, 0, True)]) == (None, None)  # a stop word is never w_h
    assert extremes([_w("a", 9.0, 0, True), _w("red", 0.5, 1)]) == (_w("red", 0.5, 1), None)  # never both
    assert extremes([]) == (None, None)
    signed = [_w("red", -0.9, 0), _w("vase", 0.5, 1), _w("tall", float("nan"), 2)]
    assert [w.word for w in extremes(signed, signed=True)] == ["vase", "red"]  # probes: lowest drop = w_l


def test_global_word_table():
    df = pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2", "p2"],
            "word": ["red", "vase", "red", "cup", "a"],
            "attr_grad": [3.0, 1.0, 1.0, 1.5, 1.0],
            "is_stop": [False, False, False, False, True],
        }
    )
    t = global_word_table(df, "grad")
    assert list(t.columns) == ["word", "mean_attr", "n_prompts", "is_stop", "rank"]
    row = t.set_index("word").loc["red"]
    assert row.n_prompts == 2
    assert row.mean_attr == pytest.approx((3 / 4 + 1 / 3.5) / 2)
    assert t["rank"].tolist() == list(range(1, 5))
    assert t.iloc[0]["word"] == "red"
    raw = global_word_table(df, "grad", normalize=False).set_index("word")
    assert raw.loc["red"].mean_attr == pytest.approx(2.0)


def test_deletion_masks_top_vs_bottom():
    ws = [_w("a", 0.0, 0, True), _w("red", 0.9, 1), _w("vase", 0.5, 2), _w("neck", 0.1, 3)]
    mask = np.ones(5, dtype=np.int64)
    top, bottom, k = deletion_masks(ws, mask, 1)
    assert k == 1
    assert top.tolist() == [1, 0, 1, 1, 1]
    assert bottom.tolist() == [1, 1, 1, 0, 1]
    _, _, k0 = deletion_masks(ws[:2], mask, 1)
    assert k0 == 0  # one content word: nothing to compare


def test_faithfulness_summary():
    rows = [
        {"q": 1.0, "q_top": 0.5, "q_bottom": 0.9, "k": 1},
        {"q": 1.0, "q_top": 0.8, "q_bottom": 0.95, "k": 1},
    ]
    s = faithfulness_summary(rows)
    assert s["mean_change_top"] == pytest.approx(0.35)
    assert s["mean_change_bottom"] == pytest.approx(0.075)
    assert s["passed"] and s["top_exceeds_bottom"] == 1.0
    assert faithfulness_summary([{"k": 0}])["passed"] is None


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    b[3] = b[4]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert np.isnan(spearman([1, 2], [1, 2]))


def test_ground_truth_agreement():
    table = pd.DataFrame(
        {
            "word": ["red", "tall", "spiky", "a"],
            "mean_attr": [0.5, 0.3, 0.1, 0.05],
            "n_prompts": [3, 2, 2, 5],
            "is_stop": [False, False, False, True],
            "rank": [1, 2, 3, 4],
        }
    )
    fid = {"red": 0.9, "tall": 0.6, "spiky": 0.1}
    gt = ground_truth_agreement(table, fid, w_l_words=["spiky", "vase"], k=2)
    assert gt["spearman"] == pytest.approx(1.0)
    assert gt["lowest_fidelity"] == ["spiky", "tall"]
    assert gt["flagged_as_w_l"] == ["spiky"] and gt["hits"] == 1
    assert gt["n_words"] == 3
