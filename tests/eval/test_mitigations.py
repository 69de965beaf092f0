"""The mitigations comparison: the table's arithmetic on known verdicts, and one tiny end-to-end run
(audit → augment with losers → SFT + DPO → five evaluated models → table, plot, report)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from debias3d.demo_mitigations import MitigationSettings, goal_met, mitigation_table


class _Run:
    def __init__(self, shown):
        words = ["red", "tall", "vase", "cup"] * 25
        self.verdicts = pd.DataFrame(
            {"prompt_index": [i // 4 for i in range(100)], "sample": 0, "word": words, "shown": shown}
        )


def test_table_counts_points_against_base_and_sft():
    words = ["red", "tall", "vase", "cup"] * 25
    base = [w in ("vase", "cup") for w in words]  # neglected red/tall never shown, rest always
    sft = [w in ("vase", "cup") or (w == "red") for w in words]  # +50 % on neglected
    better = [True] * 100
    t = mitigation_table({"base": _Run(base), "sft": _Run(sft), "dpo": _Run(better)}, ["red", "tall"],
                         ["vase", "cup"], n_boot=200)  # fmt: skip
    r = t.set_index("mitigation")
    assert r.loc["base", "neglected"] == 0.0 and r.loc["base", "rest"] == 1.0
    assert r.loc["base", "neglected_gain"] == 0.0 and r.loc["base", "neglected_gain_lo"] == 0.0
    assert r.loc["sft", "neglected_gain"] == pytest.approx(50.0)
    assert r.loc["sft", "neglected_gain_lo"] < 50.0 < r.loc["sft", "neglected_gain_hi"]
    assert r.loc["dpo", "neglected_vs_sft"] == pytest.approx(50.0) and r.loc["dpo", "rest_change"] == 0.0
    assert r.loc["sft", "neglected_uses"] == 50
    assert goal_met(t) == ["dpo"]
    no_sft = mitigation_table({"base": _Run(base), "dpo": _Run(better)}, ["red"], ["vase"], n_boot=50)
    assert math.isnan(no_sft.set_index("mitigation").loc["dpo", "neglected_vs_sft"])


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="refocus_factor"):
        MitigationSettings(refocus_factor=0.0)
    with pytest.raises(ValueError, match="refocus_t_interval"):
        MitigationSettings(refocus_t_interval=(0.9, 0.1))


def test_mitigations_end_to_end(tmp_path, tiny_models):
    from eval_helpers import STANDIN
    from test_demo import _overrides

    from debias3d.config import load_config
    from debias3d.demo import DemoConfig
    from debias3d.demo_mitigations import run_mitigations

    cfg = load_config(
        DemoConfig,
        "configs/shapeworld/demo_quick.yaml",
        [
            *_overrides(tiny_models["weights"], STANDIN, n_prompts=6),
            "mitigations.refocus_factor=3.0",
            "finetune.dpo.beta=50",
        ],  # fmt: skip
    )
    s = run_mitigations(tmp_path, cfg, evaluator=tiny_models["evaluator"], ranker=tiny_models["ranker"])
    t = pd.read_csv(tmp_path / "mitigations.csv")
    assert t["mitigation"].tolist() == ["base", "sft", "dpo", "refocus", "sft_refocus"]
    assert (tmp_path / "finetune_dpo" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "finetune_sft" / "adapter_model.safetensors").is_file()
    log = [json.loads(x) for x in (tmp_path / "finetune_dpo" / "train_log.jsonl").read_text().splitlines()]
    assert abs(log[0]["loss_stage1"] - math.log(2)) < 1e-6  # DPO starts at log 2
    assert s["pair_budget"] > 0 and s["refocus_words"] and s["refocused_eval_prompts"] >= 0
    html = (tmp_path / "mitigations.html").read_text()
    assert (
        "<img" in html and "SFT + refocusing" in html and (tmp_path / "mitigations.png").stat().st_size > 1000
    )
    base = t.set_index("mitigation").loc["base"]
    assert base["neglected_gain"] == 0.0 and 0.0 <= base["neglected"] <= 1.0
