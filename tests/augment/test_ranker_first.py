"""Augment loads (or fails to load) its ranker before the LLM is touched, so a missing ranker
never costs a paid call."""

from __future__ import annotations

import pytest


def test_augment_loads_the_ranker_before_any_llm_call(audit_dir, tmp_path):
    from debias3d.augment.config import AugmentConfig
    from debias3d.augment.pipeline import Components, run_augment
    from debias3d.config import from_dict

    class NoLLM:
        name = "no-llm"

        def __getattr__(self, item):
            raise AssertionError(f"LLM used ({item}) before the ranker was loaded")

    cfg = from_dict(
        AugmentConfig, {"visual": {"ranker": "imagereward", "ranker_path": str(tmp_path / "none")}}
    )
    comps = Components(cfg, writer=NoLLM())
    with pytest.raises(FileNotFoundError, match="ImageReward folder .* not found"):
        run_augment(audit_dir, cfg, tmp_path / "out", components=comps)
