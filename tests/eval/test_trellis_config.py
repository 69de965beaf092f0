"""configs/trellis/eval.yaml: a valid real-backend eval config whose missing weights are one-line
errors before any model loads; the T3Bench ranker runs on the run's device."""

from __future__ import annotations

from pathlib import Path

import pytest

from debias3d.config import load_config
from debias3d.eval.config import EvalConfig

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "trellis" / "eval.yaml"


def _never(what: str):
    def fail(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(f"{what} was loaded before the weights were known to be there")

    return fail


def test_trellis_eval_config_loads_as_documented():
    cfg = load_config(EvalConfig, SHIPPED, [])
    assert (cfg.generator, cfg.evaluator, cfg.ranker) == ("trellis", "hyperscore-clip", "imagereward")
    assert cfg.ranking.preset == "t3bench" and cfg.ranking.level == 2 and len(cfg.ranking.fovs) == 5
    assert cfg.ranking.image_size == 512 and cfg.ranking.background == "black" and cfg.device == "cuda"
    assert cfg.evaluator_weights is None and cfg.ranker_weights is None and cfg.t3bench
    from debias3d.models.ranker.t3bench import t3bench_label

    assert "comparable with published T3Bench" in t3bench_label(cfg.ranker, cfg.ranking)
    for key in ("generator_weights", "evaluator_weights", "ranker_weights", "preset", "device"):
        line = next(ln for ln in SHIPPED.read_text().splitlines() if ln.strip().startswith(f"{key}:"))
        assert "#" in line or key.endswith("_weights"), f"{key} is not explained"


def test_trellis_eval_missing_weights_are_one_line_before_any_model_loads(monkeypatch, tmp_path):
    from debias3d.eval import pipeline
    from debias3d.eval.pipeline import run_eval
    from debias3d.models.evaluator.clip import CLIPHyperScore
    from debias3d.models.ranker.imagereward import ImageRewardRanker

    monkeypatch.setattr(pipeline, "load_generator", _never("the generator"))
    monkeypatch.setattr(CLIPHyperScore, "from_pretrained", classmethod(_never("the evaluator")))
    monkeypatch.setattr(ImageRewardRanker, "from_pretrained", classmethod(_never("the ranker")))
    cfg = load_config(EvalConfig, SHIPPED, [])
    with pytest.raises(ValueError, match="set ranker_weights") as e:
        run_eval(cfg, tmp_path / "e", progress=False)
    assert "\n" not in str(e.value)

    # the ranker folder in place, the evaluator weights unset: the evaluator's line, still before loading
    rw = tmp_path / "imagereward"
    rw.mkdir()
    for name, text in (("ImageReward.pt", "x"), ("med_config.json", "{}"), ("vocab.txt", "[PAD]\n")):
        (rw / name).write_text(text)
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "load_generator", _never("the generator"))
    monkeypatch.setattr(ImageRewardRanker, "from_pretrained", classmethod(_never("the ranker")))
    cfg = load_config(EvalConfig, SHIPPED, [f"ranker_weights={rw}"])
    with pytest.raises(FileNotFoundError, match="evaluator_weights is not set") as e:
        run_eval(cfg, tmp_path / "e2", progress=False)
    assert "\n" not in str(e.value)


def test_the_t3bench_ranker_is_built_on_the_run_device(monkeypatch):
    from debias3d.eval.pipeline import build_scorers
    from debias3d.models.ranker.imagereward import ImageRewardRanker

    seen = {}

    def record(path=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(kwargs, path=path)
        return object()

    monkeypatch.setattr(ImageRewardRanker, "check", staticmethod(lambda path: Path(path)))
    monkeypatch.setattr(ImageRewardRanker, "from_pretrained", staticmethod(record))
    cfg = load_config(EvalConfig, SHIPPED, ["ranker_weights=/models/ImageReward", "device=cuda:1"])
    _, ranker = build_scorers(cfg, evaluator=object())
    assert seen == {"device": "cuda:1", "path": "/models/ImageReward"}
