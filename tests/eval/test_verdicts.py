"""Eval targets are decided on intervals: a gain is met only when its lower bound clears the bar."""

from __future__ import annotations

import numpy as np
import pandas as pd

from debias3d.eval.pipeline import TARGETS, decide_targets

KW = {"n_boot": 500, "ci": 0.95, "seed": 0}


def _verdicts(shown: dict[str, list[bool]]) -> pd.DataFrame:
    rows = []
    for word, vals in shown.items():
        for i, v in enumerate(vals):
            rows.append(
                {
                    "prompt_index": i,
                    "sample": 0,
                    "object_index": 0,
                    "kind": "colour",
                    "word": word,
                    "shown": v,
                }
            )
    return pd.DataFrame(rows)


def _mate3d(deltas: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"category": c, "dimension": "overall", "delta": d, "delta_lo": lo, "delta_hi": hi} for c, (d, lo, hi) in deltas.items()]
    )  # fmt: skip


def test_small_sample_gain_above_the_bar_is_not_met():
    """4 more correct uses out of 21 is +19 points, but its interval reaches far below 15."""
    before = _verdicts({"spiky": [False] * 21, "red": [True] * 20})
    after = _verdicts({"spiky": [True] * 4 + [False] * 17, "red": [True] * 20})
    t = decide_targets(before, after, ["spiky"], ["red"], _mate3d({}), KW)
    g = t["neglected_gain_points"]
    assert g["value"] > TARGETS["neglected_gain_points"] and g["n"] == 21
    assert g["ci"][0] < TARGETS["neglected_gain_points"] and not g["met"]


def test_large_clear_gain_is_met_and_signs_follow_the_label():
    rng = np.random.default_rng(0)
    n = 400
    before = _verdicts({"spiky": list(rng.random(n) < 0.2), "red": [True] * n})
    after_spiky = [True] * n
    after = _verdicts({"spiky": after_spiky, "red": [True] * (n - 20) + [False] * 20})
    t = decide_targets(before, after, ["spiky"], ["red"], _mate3d({}), KW)
    assert t["neglected_gain_points"]["met"] and t["neglected_gain_points"]["ci"][0] > 15
    r = t["rest_change_points"]
    assert r["value"] == -5.0  # the rest dropped by 5 points: a negative change
    assert not r["met"]  # a drop of more than 2 points is not ruled out
    better = _verdicts({"spiky": after_spiky, "red": [True] * n})
    worse_before = _verdicts({"spiky": list(rng.random(n) < 0.2), "red": [True] * (n - 20) + [False] * 20})
    r2 = decide_targets(worse_before, better, ["spiky"], ["red"], _mate3d({}), KW)["rest_change_points"]
    assert r2["value"] == 5.0 and r2["met"]  # the rest improved: positive, and met


def test_categories_count_only_intervals_above_zero():
    m = _mate3d({"basic": (0.02, 0.01, 0.03), "refined": (0.02, -0.01, 0.05), "all": (0.1, 0.05, 0.2)})
    t = decide_targets(_verdicts({}), _verdicts({}), [], [], m, KW)["evaluator_overall_categories"]
    assert t["value"] == 1 and t["of"] == 2 and not t["met"]


def test_eval_size_settings_have_upper_bounds():
    import pytest

    from debias3d.config import ConfigError, load_config
    from debias3d.eval.config import EvalConfig

    for override, bound in [("samples=100000000", "must be <= 1024"), ("ranking.level=99", "[0, 4]"),
                            ("per_category=10000000", "must be <= 10000")]:  # fmt: skip
        with pytest.raises(ConfigError) as err:
            load_config(EvalConfig, overrides=[override])
        assert bound in str(err.value) and "\n" not in str(err.value)


def test_truncated_adapter_is_refused_before_any_model_runs(tmp_path):
    import json

    import pytest

    from debias3d.eval.pipeline import check_adapter

    d = tmp_path / "ad"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 4, "target_modules": ["to_q"]')
    (d / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="adapter_config.json: not valid JSON"):
        check_adapter(d)
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["to_q"]}))
    with pytest.raises(ValueError, match="adapter_model.safetensors: not a readable safetensors file"):
        check_adapter(d)


def test_second_eval_on_the_same_out_is_refused(tmp_path):
    import pytest

    from debias3d.eval.pipeline import run_eval
    from debias3d.runs import RunLock, RunLockedError

    with RunLock(tmp_path), pytest.raises(RunLockedError, match="in use by another run"):
        run_eval(out_dir=tmp_path)


def test_resume_reuses_a_finished_model_run_and_refuses_other_settings(tiny_models, tmp_path):
    import dataclasses
    import json

    import pytest

    from debias3d.eval.config import EvalConfig
    from debias3d.eval.pipeline import run_eval
    from debias3d.runs import FingerprintError

    cfg = EvalConfig(generator_weights=str(tiny_models["weights"]), per_category=1, max_prompts=4, samples=1,
                     t3bench=False, diversity=False, report=False, bootstrap=50, save_meshes=0)  # fmt: skip
    kw = {"evaluator": tiny_models["evaluator"], "ranker": tiny_models["ranker"], "progress": False}
    first = run_eval(cfg, tmp_path, **kw)
    assert (tmp_path / "base" / "fingerprint.json").is_file()

    class NoGenerator:
        """Any generation here would mean the finished base run was not reused."""

        text_encoder = None

        def generate(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
            raise AssertionError("generated again")

    again = run_eval(cfg, tmp_path, generator=NoGenerator(), resume=True, **kw)
    assert json.dumps(again["fidelity"], sort_keys=True) == json.dumps(first["fidelity"], sort_keys=True)
    with pytest.raises(FingerprintError, match="samples: 2 here, 1 in the folder") as err:
        run_eval(dataclasses.replace(cfg, samples=2), tmp_path, generator=NoGenerator(), resume=True, **kw)
    assert "run without --resume" in str(err.value) and "\n" not in str(err.value)
