"""Evaluator scores are shown on the evaluator's documented range, and the clamped samples are counted."""

from __future__ import annotations

import json

import numpy as np


def test_each_evaluator_declares_its_documented_range():
    from debias3d.models.evaluator.clip import CLIPHyperScore
    from debias3d.models.evaluator.model import ShapeWorldHyperScore
    from debias3d.registry import find

    # ShapeWorld ratings are built in [0, 1]; HyperScore regresses MATE-3D opinion scores (0 to 10).
    assert ShapeWorldHyperScore.score_range == (0.0, 1.0)
    assert CLIPHyperScore.score_range == (0.0, 10.0)
    assert find("evaluator", "hyperscore-clip").score_range == (0.0, 10.0)


class _Overshooting:
    """The tiny evaluator with some scores pushed above and below [0, 1]; keeps every raw score."""

    def __init__(self, ev) -> None:  # noqa: ANN001
        self.ev = ev
        self.dimensions = ev.dimensions
        self.score_range = ev.score_range
        self.text_encoder = ev.text_encoder
        self.raw: list[np.ndarray] = []

    def evaluate(self, assets, prompts, batch_size=32):  # noqa: ANN001, ANN201
        res = self.ev.evaluate(assets, prompts, batch_size=batch_size)
        res.scores = res.scores.clone()
        res.scores[0::3] += 5.0
        res.scores[1::3, 0] -= 5.0
        self.raw.append(res.scores.numpy().copy())
        return res


def test_eval_clamps_scores_to_the_range_and_says_how_many(tiny_models, tmp_path):
    import pandas as pd

    from debias3d.eval.config import EvalConfig
    from debias3d.eval.pipeline import run_eval

    cfg = EvalConfig(generator_weights=str(tiny_models["weights"]), per_category=1, max_prompts=5, samples=1,
                     t3bench=False, diversity=False, report=True, bootstrap=50, save_meshes=0)  # fmt: skip
    ev = _Overshooting(tiny_models["evaluator"])
    summary = run_eval(cfg, tmp_path, evaluator=ev, ranker=tiny_models["ranker"], progress=False)

    raw = np.concatenate(ev.raw)
    expected = int(((raw < 0) | (raw > 1)).any(axis=1).sum())
    assert expected >= 3  # the shifted rows are out of range whatever the tiny model says
    samples = pd.read_parquet(tmp_path / "base" / "samples.parquet")
    dims = [f"score_{d}" for d in ev.dimensions]
    assert samples[dims].to_numpy().min() >= 0.0 and samples[dims].to_numpy().max() <= 1.0
    assert int((samples["score_clamped"] > 0).sum()) == expected

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for s in (summary, on_disk):
        assert s["evaluator_score_range"]["base"] == [0.0, 1.0]
        assert s["evaluator_clamped"]["base"] == expected
        assert all(0.0 <= v <= 1.0 for v in s["evaluator"]["base"].values())
    html = (tmp_path / "report.html").read_text()
    assert "documented range [0, 1]" in html
    assert f"Samples clamped: base {expected} of {len(samples)}" in html
