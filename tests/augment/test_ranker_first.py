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
        AugmentConfig, {"visual": {"ranker": "imagereward", "ranker_weights": str(tmp_path / "none")}}
    )
    comps = Components(cfg, writer=NoLLM())
    with pytest.raises(FileNotFoundError, match="ImageReward folder .* not found"):
        run_augment(audit_dir, cfg, tmp_path / "out", components=comps)


@pytest.mark.parametrize(
    ("ranker", "path", "names"),
    [
        ("imagereward", "/nonexistent/imagereward", ("ImageReward folder", "ranker_weights")),
        ("hpsv2", "/nonexistent/HPS_v2.1_compressed.pt", ("debias3d[hpsv2]", "HPS_v2.1_compressed.pt")),
    ],
)
def test_cli_missing_ranker_is_one_line_before_any_item(audit_dir, tmp_path, ranker, path, names):
    from typer.testing import CliRunner

    from debias3d.cli import app

    out = tmp_path / "aug"
    argv = ["augment", "--audit", str(audit_dir), "--out", str(out), f"visual.ranker={ranker}"]
    result = CliRunner().invoke(app, [*argv, f"visual.ranker_weights={path}"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and any(n in errors[0] for n in names), result.output
    records = list((out / "job").glob("*.jsonl")) if (out / "job").exists() else []
    assert not any(p.stat().st_size for p in records)  # no item (LLM or mesh) was run
