"""ShapeWorld fidelity tables: built shapes score ~1, the frequent/rare split follows corpus counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from debias3d.data.assets import Asset, VoxelGrid
from debias3d.data.shapeworld.corpus import corpus_word_counts
from debias3d.eval.fidelity import run_fidelity


class BuilderGenerator:
    """A 'generator' that returns ShapeWorld's own builds (ground truth), or empty-ish shapes."""

    def __init__(self, broken_words=()):
        self.broken_words = set(broken_words)

    def generate(self, prompts, seeds, num_samples=1):
        from debias3d.data.shapeworld.builder import build_voxels
        from debias3d.data.shapeworld.parser import parse

        out = []
        for p, s in zip(prompts, seeds, strict=True):
            spec = parse(p)
            for w in self.broken_words & set(spec.words()):
                spec = spec.without(w)  # ignore this word, as a biased model would
            for d in range(num_samples):
                grid = build_voxels(spec, rng=s + d)
                out.append(Asset(prompt=p, mesh=None, voxels=grid, seed=s, metadata={"sample": d}))
        return out


PROMPTS = [
    "a red vase",
    "a tall blue tower",
    "a flat green vase",
    "a yellow cup",
    "a red cup",
    "a tall red vase",
]


def test_fidelity_tables_and_split(tmp_path):
    counts = corpus_word_counts(["a red vase"] * 50 + ["a tall vase"] * 50 + ["a blue cup"] * 30 + ["a green cup"] * 30
                                + ["a flat vase", "a yellow cup"])  # fmt: skip
    assert counts["n_prompts"] == 162 and counts["counts"]["red"] == 50
    res = run_fidelity(BuilderGenerator(broken_words={"flat", "yellow"}), PROMPTS, D=2, out_dir=tmp_path,
                       word_counts=counts)  # fmt: skip
    s = res.summary
    assert s["frequent_words"] == ["blue", "green", "red", "tall"] and s["rare_words"] == ["flat", "yellow"]
    assert s["frequent_fidelity"] >= 0.9 and s["rare_fidelity"] <= 0.1
    assert s["gap_points"] >= 80
    for name in ("words", "categories", "samples"):
        assert (tmp_path / f"{name}.csv").is_file() and (tmp_path / f"{name}.json").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["D"] == 2
    words = res.words.set_index("word")
    assert words.loc["red", "n"] == 6 and words.loc["red", "fidelity"] == pytest.approx(1.0)
    assert np.isclose(res.samples["fidelity"].mean(), s["fidelity"])


def test_wrong_asset_count_is_an_error():
    class Bad:
        def generate(self, prompts, seeds, num_samples=1):
            return [Asset(prompt="x", mesh=None, voxels=VoxelGrid.empty())]

    with pytest.raises(ValueError, match="assets"):
        run_fidelity(Bad(), ["a red vase", "a cup"], D=2)
