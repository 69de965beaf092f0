"""End to end: the quick loop on a handful of prompts with tiny models, checked against DESIGN.md."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from debias3d.config import load_config
from debias3d.demo import DemoConfig, run_demo

DIMS = ("alignment", "geometry", "texture", "overall")


def _overrides(weights, ranker: str, n_prompts: int = 8) -> list[str]:
    w = str(weights)
    return [
        "prompts_per_category=1", "replay_corpus=4", "heatmap_prompts=2", "thumbnail_size=32",
        "thumbnail_samples=1", "num_threads=1",
        f"audit.generator_weights={w}", "audit.samples=2", "audit.attribution.batch_size=8",
        "augment.contexts=2", f"augment.visual.ranker={ranker}", "augment.progress=false",
        "augment.visual.margin=-1000000000.0",  # the stand-in ranker's duel is meaningless: keep every x_nc
        "augment.num_threads=1", "augment.thumbnail_size=16", "augment.report_examples=2",
        f"finetune.generator_weights={w}", "finetune.train.max_train_steps=2", "finetune.train.train_batch_size=2",
        "finetune.train.lr_warmup_steps=0", "finetune.train.checkpointing_steps=1", "finetune.train.num_threads=1",
        f"eval.generator_weights={w}", "eval.per_category=1", f"eval.max_prompts={n_prompts}", "eval.samples=2",
        "eval.bootstrap=50", f"eval.ranker={ranker}", "eval.save_meshes=2", "eval.diversity_points=64",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_models):
    from eval_helpers import STANDIN

    out = tmp_path_factory.mktemp("demo")
    cfg = load_config(
        DemoConfig, "configs/shapeworld/demo_quick.yaml", _overrides(tiny_models["weights"], STANDIN)
    )
    summary = run_demo(
        out, quick=True, config=cfg, evaluator=tiny_models["evaluator"], ranker=tiny_models["ranker"]
    )
    return out, summary


def test_audit_folder_contract(demo):
    out, _ = demo
    a = out / "audit"
    for name in ("summary.json", "prompts.parquet", "words.parquet", "samples.parquet", "report.html"):
        assert (a / name).is_file(), name
    p = pd.read_parquet(a / "prompts.parquet")
    assert {"prompt", "category", "w_h", "w_l", *(f"q_l_{d}" for d in DIMS)} <= set(p.columns)
    assert len(p) == 8 and set(p["category"]) == {"basic", "refined", "complex", "fantastical", "grouped",
                                                  "spatial", "action", "imaginative"}  # fmt: skip
    w = pd.read_parquet(a / "words.parquet")
    assert {"prompt_id", "word", "word_index", "is_stop", "attr_grad"} <= set(w.columns)
    s = pd.read_parquet(a / "samples.parquet")
    assert {"prompt_id", "seed", "mesh", *(f"score_{d}" for d in DIMS)} <= set(s.columns)
    assert all((a / m).is_file() for m in s["mesh"] if m)
    assert list((a / "meshes").glob("*.glb")) and (a / "heatmaps").is_dir()


def test_augment_folder_contract(demo):
    from datasets import load_from_disk

    out, summary = demo
    g = out / "aug"
    ds = load_from_disk(str(g / "pairs"))
    assert {"prompt", "source_prompt", "w_h", "w_l", "mesh", "ranker_score_new", "ranker_score_orig", "winner",
            "provenance"} <= set(ds.column_names)  # fmt: skip
    assert len(ds) == summary["budget"]["pairs"]["both"] > 0
    assert (g / "job").is_dir() and (g / "rejected.jsonl").is_file() and (g / "report.html").is_file()


def test_finetune_folder_contract(demo):
    out, _ = demo
    f = out / "finetune"
    assert (f / "adapter_config.json").is_file() and (f / "adapter_model.safetensors").is_file()
    assert (f / "train_log.jsonl").is_file() and list(f.glob("checkpoint-*"))
    assert not list(f.glob("*.bin")) and not list(f.glob("*.pt"))  # safetensors only


def test_eval_folder_contract(demo):
    out, _ = demo
    e = out / "eval"
    s = json.loads((e / "summary.json").read_text())
    assert s["models"] == ["base", "finetuned"] and s["samples_per_prompt"] == 2
    for name in ("mate3d", "t3bench", "fidelity_words", "fidelity_categories", "diversity", "samples"):
        assert (e / "tables" / f"{name}.csv").is_file(), name
    m3 = pd.read_csv(e / "tables" / "mate3d.csv")
    assert set(m3["dimension"]) == set(DIMS)
    assert {"base_mean", "base_lo", "base_hi", "finetuned_mean", "delta", "delta_lo", "delta_hi"} <= set(
        m3.columns
    )
    t3 = pd.read_csv(e / "tables" / "t3bench.csv")
    assert set(t3["metric"]) == {"quality", "alignment"} and t3["base_mean"].notna().all()
    words = pd.read_csv(e / "tables" / "fidelity_words.csv")
    assert set(s["neglected_words"]) == set(words.loc[words["neglected"], "word"])
    assert set(s["targets"]) == {
        "neglected_gain_points",
        "rest_change_points",
        "evaluator_overall_categories",
    }
    for t in ("neglected_gain_points", "rest_change_points"):  # decided on an interval
        lo, hi = s["targets"][t]["ci"]
        assert lo is None or lo <= s["targets"][t]["value"] <= hi
    assert (e / "report.html").is_file() and list((e / "meshes" / "finetuned").glob("*.glb"))


def test_demo_report_is_self_contained(demo):
    out, summary = demo
    html = (out / "report.html").read_text()
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # every image is inlined
    for section in ("Before / after per category", "Fidelity per word", "Word heatmaps", "Meshes before and after",
                    "Ablations", "time per stage"):  # fmt: skip
        assert section in html, section
    assert html.count("data:image/png;base64,") >= 3
    assert set(summary["timings_s"]) >= {"audit", "augment", "finetune", "eval", "total"}
    assert json.loads((out / "summary.json").read_text())["budget"]["audit_prompts"] == 8


def test_compare_prints_and_plots(demo, tmp_path, capsys):
    import shutil

    from debias3d.eval.compare import compare_command

    out, _ = demo
    b = tmp_path / "b"
    shutil.copytree(out / "eval", b)
    s = json.loads((b / "summary.json").read_text())
    s["fidelity"]["finetuned"]["neglected"] = (s["fidelity"]["finetuned"]["neglected"] or 0.0) + 0.5
    (b / "summary.json").write_text(json.dumps(s))
    tables = compare_command(out / "eval", b, out=tmp_path / "cmp")
    head = tables["headline"].set_index("metric")
    assert head.loc["fidelity.neglected", "delta"] == pytest.approx(0.5)
    assert head.loc["fidelity.rest", "delta"] == 0.0
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare_words.csv").is_file()
    assert "B − A" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="summary.json"):
        compare_command(tmp_path, b)
    (b / "summary.json").write_text('{"fidelity": ')  # a run folder with a damaged summary
    with pytest.raises(ValueError, match=r"b/summary\.json: not valid JSON"):
        compare_command(out / "eval", b)


def test_base_run_is_reused_and_matches(demo, tiny_models, tmp_path):
    """run_eval with the saved base run gives the same base numbers as the demo's own eval."""
    from debias3d.eval.pipeline import ModelRun, run_eval

    out, _ = demo
    cfg = load_config(DemoConfig, out / "demo_config.yaml").eval
    s = run_eval(cfg, tmp_path / "e", base_run=out / "eval" / "base", evaluator=tiny_models["evaluator"],
                 ranker=tiny_models["ranker"], progress=False)  # fmt: skip
    ref = json.loads((out / "eval" / "summary.json").read_text())
    assert s["models"] == ["base"] and "targets" not in s
    assert s["fidelity"]["base"] == ref["fidelity"]["base"]
    assert ModelRun.load(out / "eval" / "finetuned").samples["fidelity"].notna().all()
    assert (tmp_path / "e" / "report.html").is_file()


def test_eval_command_rejects_bad_input(tmp_path):
    from debias3d.config import ConfigError
    from debias3d.eval.pipeline import eval_command

    with pytest.raises(ConfigError, match="no_such_key"):
        eval_command(None, ["no_such_key=1"], None, tmp_path)
    with pytest.raises(ConfigError, match="samples"):
        eval_command("configs/shapeworld/eval.yaml", ["samples=0"], None, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter"):
        eval_command("configs/shapeworld/eval.yaml", [], tmp_path, tmp_path / "o")


def test_report_template_escapes():
    from debias3d.eval.report import render_template

    html = render_template("{{ x }}", x="<script>alert(1)</script>")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_audit_after_scores_the_finetuned_meshes(demo):
    """audit_after/ (fine-tuned model) is scored on its own meshes, never on the base model's views."""
    out, _ = demo
    a = pd.read_parquet(out / "audit" / "samples.parquet")
    b = pd.read_parquet(out / "audit_after" / "samples.parquet")
    m = a.merge(b, on=["prompt_id", "sample"], suffixes=("_base", "_ft"))
    assert len(m) == len(b) > 0
    cols = [f"score_{d}" for d in DIMS]
    same_mesh = [
        (out / "audit" / r.mesh_base).read_bytes() == (out / "audit_after" / r.mesh_ft).read_bytes()
        for r in m.itertuples()
    ]
    assert not all(same_mesh)  # two LoRA steps already change the meshes here
    for r, same in zip(m.to_dict("records"), same_mesh, strict=True):
        diff = max(abs(r[f"{c}_base"] - r[f"{c}_ft"]) for c in cols)
        if same:
            assert diff < 1e-5, r["prompt_id"]
        else:
            assert diff > 1e-6, r["prompt_id"]


def test_demo_summary_names_the_audit_words(demo):
    out, summary = demo
    audit = json.loads((out / "audit" / "summary.json").read_text())
    assert summary["audit"]["select"] == audit["select"] == "contrastive"
    assert summary["audit"]["global_w_l"] == audit["w_l"] is not None
