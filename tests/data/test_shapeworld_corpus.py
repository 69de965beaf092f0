"""ShapeWorld corpus: columns, skewed coverage, save/load, config validation."""

import json
import time

import numpy as np
import pytest

from debias3d.data.shapeworld.corpus import (
    DEFAULT_WORD_FREQUENCY,
    RARE_WORDS,
    CorpusConfig,
    make_corpus,
    row_to_grid,
    row_to_prompt,
    word_frequencies,
    write_corpus,
)
from debias3d.data.shapeworld.measurer import fidelity


@pytest.fixture(scope="module")
def corpus():
    t = time.perf_counter()
    ds = make_corpus(600, seed=3, calibration_rounds=3, calibration_samples=600)
    return ds, time.perf_counter() - t


def test_columns_and_types(corpus):
    ds, _ = corpus
    assert set(ds.column_names) == {"prompt", "category", "spec", "occupancy", "colors", "seed"}
    row = ds[0]
    assert len(row["occupancy"]) == 16**3 and len(row["colors"]) == 16**3 * 3
    grid = row_to_grid(row)
    assert grid.occupancy.any()
    assert fidelity(row_to_prompt(row).spec, grid) == pytest.approx(1.0, abs=0.34)


def test_rows_are_their_prompts(corpus):
    ds, _ = corpus
    fids = [fidelity(row_to_prompt(ds[i]).spec, row_to_grid(ds[i])) for i in range(0, 600, 15)]
    assert np.mean(fids) >= 0.95


def test_skewed_coverage(corpus):
    ds, seconds = corpus
    freq = word_frequencies(list(ds["spec"]))
    for w in RARE_WORDS:
        assert freq.get(w, 0.0) <= 0.035, (w, freq.get(w))
    for w in ("red", "blue", "tall"):
        assert freq[w] >= 0.09, (w, freq[w])
    assert seconds < 60


def test_custom_frequency_is_followed():
    ds = make_corpus(
        400, seed=1, word_frequency={"yellow": 0.3, "red": 0.0}, calibration_rounds=3, calibration_samples=500
    )
    freq = word_frequencies(list(ds["spec"]))
    assert freq.get("red", 0.0) <= 0.01
    assert 0.2 <= freq["yellow"] <= 0.4


def test_same_seed_same_corpus():
    a = make_corpus(20, seed=7, calibration_rounds=1, calibration_samples=200)
    b = make_corpus(20, seed=7, calibration_rounds=1, calibration_samples=200)
    assert a["prompt"] == b["prompt"] and a["occupancy"] == b["occupancy"]


def test_write_and_reload(tmp_path):
    import datasets

    cfg = CorpusConfig(n=30, seed=0, calibration_rounds=1, calibration_samples=200)
    write_corpus(cfg, tmp_path / "world")
    ds = datasets.load_from_disk(str(tmp_path / "world"))
    assert len(ds) == 30
    stats = json.loads((tmp_path / "world" / "word_frequency.json").read_text())
    assert set(stats) == {"target", "realised"}


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"n": 0}, "n"),
        ({"word_frequency": {"sparkly": 0.1}}, "word_frequency"),
        ({"word_frequency": {"red": 2.0}}, "word_frequency"),
        ({"category_weights": {"weird": 1.0}}, "category_weights"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CorpusConfig(**kwargs)


def test_config_fields_have_help():
    from dataclasses import fields

    for f in fields(CorpusConfig):
        assert f.metadata.get("help"), f.name
    assert CorpusConfig().word_frequency == DEFAULT_WORD_FREQUENCY
