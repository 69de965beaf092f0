"""End to end: output contract, bad inputs, resume, determinism, HTML escaping, heatmap re-export."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from audit_helpers import BoxGenerator

from debias3d.bias_audit.config import AttributionConfig, AuditConfig
from debias3d.bias_audit.pipeline import run_audit

PROMPTS = [
    "a red vase with a long neck",
    "two small blue cups",
    "a spiky tree <script>alert(1)</script>",
    "a broken lamp",  # every sample has an empty mesh
    "explode now",  # the generator raises
]
DIMS = ("alignment", "geometry", "texture", "overall")


def _cfg(**kw):
    att = AttributionConfig(
        methods=("grad", "integrated_gradients", "occlusion", "contrastive"), n_steps=4, batch_size=2
    )
    return AuditConfig(samples=2, attribution=att, **kw)


@pytest.fixture(scope="module")
def audit(tmp_path_factory, evaluator):
    out = tmp_path_factory.mktemp("audit")
    f = out.parent / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n\n" + PROMPTS[0] + "\n")  # a blank line and a duplicate
    summary = run_audit(f, _cfg(), out, generator=BoxGenerator(), evaluator=evaluator)
    return out, summary, f


def test_output_contract(audit):
    out, summary, _ = audit
    for name in (
        "summary.json",
        "timings.json",
        "prompts.parquet",
        "words.parquet",
        "samples.parquet",
        "report.html",
    ):
        assert (out / name).is_file(), name
    p = pd.read_parquet(out / "prompts.parquet")
    expected = [
        "prompt_id",
        "prompt",
        "category",
        *[f"q_l_{d}" for d in DIMS],
        *[f"spread_{d}" for d in DIMS],
        "w_h",
        "w_l",
        "truncated",
        *[f"w_{s}_{m}" for m in ("grad", "integrated_gradients", "occlusion", "contrastive") for s in "hl"],
    ]
    assert list(p.columns) == expected
    assert len(p) == 3
    w = pd.read_parquet(out / "words.parquet")
    assert list(w.columns) == [
        "prompt_id",
        "word",
        "word_index",
        "attr_grad",
        "attr_integrated_gradients",
        "attr_occlusion",
        "attr_contrastive",
        "is_stop",
        *[f"{c}_{m}" for m in ("occlusion", "contrastive") for c in ("lo", "hi", "verdict", "thr")],
    ]
    assert set(w["prompt_id"]) == set(p["prompt_id"])
    assert "<script>" not in set(w["word"]) and "script" in set(w["word"])
    s = pd.read_parquet(out / "samples.parquet")
    assert list(s.columns)[:4] == ["prompt_id", "sample", "seed", "mesh"]
    assert s["sample"].dtype == "int64" and len(s) == 6
    for mesh in s["mesh"]:
        assert mesh.endswith(".glb") and (out / mesh).is_file()
    assert (out / "heatmaps" / "heatmaps.json").is_file()
    for pid in p["prompt_id"]:
        assert (out / "heatmaps" / f"{pid}.png").is_file() and (out / "heatmaps" / f"{pid}.svg").is_file()
    assert set(summary["q_g"]) == set(DIMS)
    assert summary["faithfulness"]["grad"]["n_prompts"] >= 1
    assert "timings" not in summary
    # select defaults to the contrastive probe; w_h / w_l are never stop words and never the same
    assert summary["select"] == "contrastive"
    for r in p.itertuples():
        ws = w[(w.prompt_id == r.prompt_id) & ~w.is_stop]
        assert r.w_h == r.w_h_contrastive == ws.loc[ws["attr_contrastive"].idxmax(), "word"]
        assert r.w_l == ws.loc[ws["attr_contrastive"].idxmin(), "word"] != r.w_h
        assert r.w_h_grad == ws.loc[ws["attr_grad"].abs().idxmax(), "word"]  # the gradient's pick, beside it
    probed = w[~w.is_stop & w.attr_contrastive.notna()]
    assert len(probed) and (probed.lo_contrastive <= probed.attr_contrastive + 1e-12).all()
    assert (probed.attr_contrastive <= probed.hi_contrastive + 1e-12).all()
    assert set(probed.verdict_contrastive) <= {"shown", "ignored", "unclear"}
    assert w[w.is_stop].attr_contrastive.isna().all()  # stop words are not probed
    # "script" and "now" have no ShapeWorld class: one line each, naming prompt and word
    assert any("word 'script'" in i and "no substitutes" in i for i in summary["issues"])


def test_bad_inputs_are_one_line_issues(audit):
    _, summary, _ = audit
    issues = summary["issues"]
    assert all("\n" not in i for i in issues)
    text = " | ".join(issues)
    assert "blank" in text and "duplicate" in text
    assert "cannot generate this prompt" in text
    assert "a broken lamp" in text and "no faces" in text


def test_report_escapes_prompts(audit):
    out, _, _ = audit
    html = (out / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "data:image/png;base64," in html
    for section in ("Per category", "Faithfulness", "Ground truth", "View contradictions"):
        assert section in html
    assert "<th>score drop</th>" in html  # contrastive is selected: its number is a drop


def test_resume_skips_done_and_same_config_gives_identical_summary(audit, evaluator, tmp_path):
    out, _, f = audit
    before = (out / "summary.json").read_text()
    gen = BoxGenerator()
    run_audit(f, _cfg(), out, resume=True, generator=gen, evaluator=evaluator)
    # only the two prompts that never finish are tried again
    assert gen.calls <= 3
    assert (out / "summary.json").read_text() == before
    # from scratch in another folder: identical summary too
    run_audit(f, _cfg(), tmp_path, generator=BoxGenerator(), evaluator=evaluator)
    a, b = json.loads(before), json.loads((tmp_path / "summary.json").read_text())
    assert a == b


def test_heatmap_command_reexports(audit, tmp_path):
    from debias3d.bias_audit.cli import heatmap_command

    out, _, _ = audit
    for fmt in ("png", "svg", "html", "json"):
        files = heatmap_command(out, fmt, out=tmp_path / fmt)
        assert files and all(p.is_file() for p in files)
    assert "&lt;script&gt;" in (tmp_path / "html" / "heatmaps.html").read_text()
    with pytest.raises(ValueError, match="format"):
        heatmap_command(out, "gif")
    with pytest.raises(FileNotFoundError):
        heatmap_command(tmp_path, "png")


def test_ground_truth_and_view_contradictions(evaluator, tmp_path):
    from audit_helpers import VIEW_VOCAB, tiny_masked_lm

    from debias3d.bias_audit.prompt_debias import ViewContradictionAuditor

    mlm, tok = tiny_masked_lm(VIEW_VOCAB, tmp_path / "mlm")
    prompts = ["a red vase", "a tall blue vase", "a spiky green tree", "a small yellow cup"]
    cfg = _cfg(heatmaps=False)
    cfg.attribution = AttributionConfig(
        methods=("grad", "contrastive", "choice"), select="choice", batch_size=2
    )
    out = tmp_path / "gt"
    s = run_audit(
        prompts,
        cfg,
        out,
        generator=BoxGenerator(use_shapeworld=True),
        evaluator=evaluator,
        view_auditor=ViewContradictionAuditor(mlm, tok),
    )
    gt = s["ground_truth"]
    assert gt is not None and gt["n_words"] >= 4
    assert set(gt["lowest_fidelity"]) <= {r["word"] for r in gt["per_word"] if r["fidelity"] < 1.0}
    assert set(gt["methods"]) == {"grad", "contrastive", "choice"} and gt["method"] == s["select"]
    for r in gt["methods"].values():
        assert r["n_uses"] >= 4 and r["auc"] is None or 0.0 <= r["auc"] <= 1.0
    uses = pd.read_parquet(out / "word_samples.parquet")
    assert {"prompt_id", "word", "sample", "shown", "score_grad", "score_contrastive"} <= set(uses.columns)
    assert uses["score_choice"].between(0.0, 1.0).all()  # a probability, not a drop
    words = pd.read_parquet(out / "words.parquet")
    probed = words[words["attr_choice"].notna()]
    # each word's chance is its verdict line, 1 / (K + 1): K = 4, or 1 for "small" (its class has two words)
    assert len(probed) and probed["thr_choice"].isin([0.2, 0.5]).all()
    # the selected probe's table and the report say what its number is: a probability against chance
    assert all(r["threshold"] in (0.2, 0.5) and 0.0 <= r["mean_attr"] <= 1.0 for r in s["word_table"])
    html = (out / "report.html").read_text()
    assert "<th>choice probability</th>" in html and "chance, 1/(K+1)" in html and "score drop" not in html
    # built by the ShapeWorld builder itself: every colour word is shown
    assert all(
        r["fidelity"] == 1.0 for r in gt["per_word"] if r["word"] in ("red", "blue", "green", "yellow")
    )
    vc = json.loads((out / "view_contradictions.json").read_text())
    assert len(vc) == 4 and vc[0]["views"] == ["front", "back", "side", "top"]
    assert s["view_contradictions"]["n_prompts"] == 4


class _OtherBoxGenerator(BoxGenerator):
    """Another generator: same prompts and seeds, different meshes (a stretched box)."""

    name = "other-box"

    def _one(self, prompt, seed):
        a = super()._one(prompt, seed)
        a.mesh.apply_scale([1.7, 0.4, 1.0])
        return a


def test_view_cache_never_serves_another_generators_views(text_encoder, tmp_path):
    """Two generators, same prompts and seeds, one evaluator (one view cache): each mesh is scored
    on its own views, so the scores differ; the same generator again hits the cache."""
    from audit_helpers import tiny_evaluator

    ev = tiny_evaluator(text_encoder, seed=3)
    cfg = AuditConfig(
        samples=2, heatmaps=False, report=False, attribution=AttributionConfig(methods=("grad",))
    )
    prompts = PROMPTS[:2]
    run_audit(prompts, cfg, tmp_path / "a", generator=BoxGenerator(), evaluator=ev)
    renders = ev.view_cache.render_calls
    run_audit(prompts, cfg, tmp_path / "a2", generator=BoxGenerator(), evaluator=ev)
    assert ev.view_cache.render_calls == renders  # identical meshes: served from the cache
    run_audit(prompts, cfg, tmp_path / "b", generator=_OtherBoxGenerator(), evaluator=ev)
    assert ev.view_cache.render_calls == 2 * renders  # different meshes: rendered again
    cols = [f"score_{d}" for d in DIMS]
    sa = pd.read_parquet(tmp_path / "a" / "samples.parquet")[cols].to_numpy()
    sa2 = pd.read_parquet(tmp_path / "a2" / "samples.parquet")[cols].to_numpy()
    sb = pd.read_parquet(tmp_path / "b" / "samples.parquet")[cols].to_numpy()
    assert (sa == sa2).all()
    assert (abs(sa - sb) > 1e-6).any(axis=1).all()  # every sample scored on its own mesh


def test_mesh_file_key_follows_content(tmp_path):
    import trimesh

    from debias3d.models.evaluator.views import mesh_key

    p = tmp_path / "m.glb"
    trimesh.creation.box().export(p)
    k1 = mesh_key(str(p))
    trimesh.creation.box(extents=(1, 2, 3)).export(p)  # rewritten in place
    assert mesh_key(str(p)) != k1
