"""Evaluator model: shapes, gradients w.r.t. token embeddings, caching, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from stand_ins import FakeRenderer

from debias3d.models.evaluator.config import EvaluatorModelConfig
from debias3d.models.evaluator.model import ShapeWorldHyperScore
from debias3d.models.evaluator.views import ViewBatch, ViewCache, mesh_key

TINY = EvaluatorModelConfig(
    image_size=16, dim=16, cnn_widths=(8, 8, 16), n_ctx=2, quality_dim=8, head_hidden=(8,), hyper_trunk=16
)
PROMPTS = ["a red vase with a long neck", "two blue cups", "a tall green tree next to a box"]


@pytest.fixture(scope="module")
def model(text_encoder):
    torch.manual_seed(0)
    return ShapeWorldHyperScore(TINY, text_encoder=text_encoder).eval()


def coloured_box(shift: float = 0.0) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=(1.0, 0.5 + shift, 1.5))
    m.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(m.vertices), 1))
    return m


def _inputs(model, prompts):
    enc = model.tokenize(prompts)
    emb = model.embed_tokens(enc["input_ids"]).detach().requires_grad_(True)
    return emb, enc["attention_mask"]


def test_output_shape_and_dimensions(model):
    views = torch.rand(3, 6, 3, 16, 16)
    q = model.score(views, PROMPTS)
    assert q.shape == (3, 4)
    assert torch.isfinite(q).all()
    assert model.dimensions == ("alignment", "geometry", "texture", "overall")


def test_views_of_other_size_are_resized(model):
    q = model.score(torch.rand(2, 6, 3, 24, 24), PROMPTS[:2])
    assert q.shape == (2, 4)


@pytest.mark.parametrize("dim", [0, 3])
def test_gradient_reaches_inputs_embeds(model, dim):
    emb, mask = _inputs(model, PROMPTS)
    assert emb.is_leaf
    q = model.score_from_embeddings(torch.rand(3, 6, 3, 16, 16), emb, mask)
    q[:, dim].sum().backward()
    g = emb.grad
    assert g is not None and torch.isfinite(g).all()
    per_token = g.abs().sum(-1)  # (B, T)
    assert (per_token[mask.bool()] > 0).all(), "every real token must get some attribution"
    # a prompt's score depends only on its own tokens
    emb2, _ = _inputs(model, PROMPTS)
    model.score_from_embeddings(torch.rand(3, 6, 3, 16, 16), emb2, mask)[0, dim].backward()
    assert emb2.grad[1:].abs().sum() == 0


def test_view_cache_renders_each_mesh_once():
    r = FakeRenderer()
    cache = ViewCache(renderer=r, image_size=16)
    a, b = coloured_box(), coloured_box(0.3)
    first = cache.get([a, b, a])
    assert r.calls == 2
    again = cache.get([b, a])
    assert r.calls == 2
    assert torch.equal(again.views[1], first.views[0])
    # an identical rebuilt mesh hits the cache too (content key)
    cache.get([coloured_box()])
    assert r.calls == 2
    assert mesh_key(a) == mesh_key(coloured_box()) != mesh_key(b)


def test_model_prepare_views_uses_cache(model, text_encoder):
    r = FakeRenderer()
    model.view_cache = ViewCache(renderer=r, image_size=16)
    assets = [coloured_box(), coloured_box(0.2)]
    emb, mask = _inputs(model, PROMPTS[:2])
    for _ in range(3):
        model.score_from_embeddings(assets, emb, mask)
    assert r.calls == 2


def test_hypernetwork_heads_differ_per_dimension(model):
    params = model.hyper(model.condition_features())
    w0 = params[0][0]  # (K, out, in)
    assert w0.shape[0] == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(w0[i], w0[j])
    views = torch.rand(2, 6, 3, 16, 16)
    q = model.score(views, PROMPTS[:2])
    assert not torch.allclose(q[:, 0], q[:, 1])


def test_condition_features_get_gradients_in_training(text_encoder):
    m = ShapeWorldHyperScore(TINY, text_encoder=text_encoder).train()
    feats = text_encoder.encode(PROMPTS)[0]
    mask = torch.ones(feats.shape[:2], dtype=torch.bool)
    m(torch.rand(3, 6, 3, 16, 16), feats, mask).sum().backward()
    assert m.prompt_learner.ctx.grad is not None and m.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in text_encoder.parameters())


def test_save_load_identical(model, text_encoder, tmp_path):
    views = torch.rand(3, 6, 3, 16, 16)
    before = model.score(views, PROMPTS)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = ShapeWorldHyperScore.from_pretrained(tmp_path, text_encoder=text_encoder)
    assert loaded.config == model.config
    assert torch.equal(loaded.score(views, PROMPTS), before)
    keys = set(loaded.trainable_state_dict())
    assert not any(k.startswith("text_encoder.") for k in keys)


def test_missing_weights_error_is_clear(tmp_path, text_encoder):
    with pytest.raises(FileNotFoundError, match="train-evaluator"):
        ShapeWorldHyperScore.from_pretrained(tmp_path / "nope", text_encoder=text_encoder)


def _bad_meshes():
    nan = coloured_box()
    v = np.asarray(nan.vertices).copy()
    v[0] = np.nan
    nan = trimesh.Trimesh(v, nan.faces, process=False)
    flat = trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]], process=False)
    return {"no faces": trimesh.Trimesh(), "NaN": nan, "degenerate": flat}


def test_bad_meshes_get_named_errors_and_finite_scores(model, caplog):
    from debias3d.data.assets import Asset

    model.view_cache = ViewCache(renderer=FakeRenderer(), image_size=16)
    bad = _bad_meshes()
    assets = [Asset("a red box", coloured_box(), metadata={"mesh_id": "good-0"})]
    assets += [Asset(f"bad {k}", m, metadata={"mesh_id": f"bad-{k}"}) for k, m in bad.items()]
    emb, mask = _inputs(model, [a.prompt for a in assets])
    q = model.score_from_embeddings(assets, emb, mask)
    assert q.shape == (4, 4) and torch.isfinite(q).all()
    assert [e.index for e in model.last_errors] == [1, 2, 3]
    msgs = [str(e) for e in model.last_errors]
    assert "bad-no faces" in msgs[0] and "no faces" in msgs[0]
    assert "NaN" in msgs[1]
    assert "degenerate" in msgs[2]
    assert torch.all(q[1:] == model.config.fallback_score)
    q.sum().backward()
    assert torch.isfinite(emb.grad).all() and emb.grad[1:].abs().sum() == 0

    res = model.evaluate(assets, batch_size=2)
    assert res.valid.tolist() == [True, False, False, False]
    assert [e.index for e in res.errors] == [1, 2, 3]
    assert torch.isfinite(res.scores).all()
    assert set(res.as_dicts()[0]) == set(model.dimensions)


def test_nan_views_tensor_is_masked(model):
    views = torch.rand(2, 6, 3, 16, 16)
    views[1, 0, 0, 0, 0] = float("nan")
    vb = ViewBatch.from_tensor(views)
    assert vb.valid.tolist() == [True, False]
    q = model.score(views, PROMPTS[:2])
    assert torch.isfinite(q).all()
    assert model.last_errors and model.last_errors[0].index == 1


def test_view_batch_slicing_renumbers_errors():
    views = torch.rand(4, 6, 3, 8, 8)
    views[2] = float("nan")
    vb = ViewBatch.from_tensor(views)
    sub = vb[2:]
    assert len(sub) == 2 and sub.valid.tolist() == [False, True]
    assert [e.index for e in sub.errors] == [0]


def test_registry_names():
    from debias3d.registry import available, find

    assert "shapeworld-hyperscore" in available("evaluator")
    assert find("evaluator", "shapeworld-hyperscore") is ShapeWorldHyperScore


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        EvaluatorModelConfig(image_size=30)
    with pytest.raises(ValueError, match="dimension_prompts"):
        EvaluatorModelConfig(dimensions=("a", "b"))


def test_tiny_training_run_writes_log_record_and_weights(tmp_path, text_encoder, monkeypatch):
    import json

    from debias3d.models.evaluator import train as T

    # reuse the module's text encoder instead of loading MiniLM again
    monkeypatch.setattr("debias3d.registry.build", lambda kind, name, *a, **k: text_encoder)
    cfg = T.EvaluatorTrainConfig(
        model=TINY,
        data=T.EvaluatorDataConfig(n_prompts=6, variants=2),
        train=T.TrainSection(folds=2, epochs=1, final_epochs=1, batch_size=4, progress=False, render_size=16),
    )
    record = T.train_evaluator(cfg, tmp_path)
    assert len(record["folds"]) == 2
    assert set(record["mean_over_folds"]) == set(TINY.dimensions)
    by_source = record["pooled_heldout_by_source"]
    assert by_source["builder"]["n"] == 12 and set(TINY.dimensions) <= set(by_source["builder"])
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("phase") == "final" for r in lines)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "dataset" / "data.npz").is_file()
    prompt_index = np.repeat(np.arange(6), 2)
    folds = T.prompt_folds(prompt_index, 2)
    assert not set(prompt_index[folds[0]]) & set(prompt_index[folds[1]])  # split by prompt


def test_correlations_handle_constant_columns():
    from debias3d.models.evaluator.train import correlations

    pred = np.c_[np.arange(5.0), np.ones(5)]
    res = correlations(pred, np.c_[np.arange(5.0), np.arange(5.0)], ("a", "b"))
    assert res["a"]["srcc"] == pytest.approx(1.0) and res["b"] == {"srcc": 0.0, "plcc": 0.0}


def test_view_stats_read_colour_histogram_and_components():
    from debias3d.models.evaluator.layers import ConvViewEncoder as C

    x = torch.ones(1, 3, 16, 16)
    red = torch.tensor(C.PALETTE[0])[:, None, None]
    x[0, :, 2:6, 2:6] = red * 0.9  # shaded red blob
    x[0, :, 10:14, 10:14] = red  # a second, separate blob
    s = C.view_stats(x)[0]
    assert s.shape == (C.N_STATS,)
    hist = s[C.HIST]
    assert hist.argmax() == 0 and hist[0] > 0.9 and hist.sum() == pytest.approx(1.0, abs=1e-4)
    assert s[C.RESID] < 0.02
    comps = s[-4:]
    assert comps[0] == pytest.approx(2 / 4) and comps[1] == pytest.approx(0.5) and comps[2] == 1.0


def test_precomputed_stats_give_the_same_scores(model):
    from debias3d.models.evaluator.layers import ConvViewEncoder as C

    torch.manual_seed(1)
    views = torch.rand(2, 6, 3, 16, 16)
    enc = model.tokenize(PROMPTS[:2])
    text = model.text_encoder.forward_embeds(model.embed_tokens(enc["input_ids"]), enc["attention_mask"])
    mask = enc["attention_mask"].bool()
    stats = C.view_stats(views.flatten(0, 1)).view(2, 6, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(views, text, mask), model(views, text, mask, stats=stats))


def test_prompt_groups_and_untied_correlations():
    from debias3d.models.evaluator.train import prompt_groups, untied_correlations

    g = prompt_groups(["A chair", "a chair.", "a  chair", "two cups"])
    assert g.tolist() == [0, 0, 0, 1]
    target = np.array([[1.0], [1.0], [0.2], [0.5], [0.8]])
    res = untied_correlations(np.array([[0.9], [0.1], [0.1], [0.4], [0.7]]), target, ("a",))
    assert res["a"]["n"] == 3 and res["a"]["srcc"] == pytest.approx(1.0)


def test_cached_view_features_give_the_same_scores_and_gradients(model):
    """score_from_embeddings on view_features(...) == on the views, value and ∂q/∂e."""
    views = torch.rand(3, 6, 3, 16, 16)
    views[1] = float("nan")  # an unrenderable item stays invalid through the cache
    vf = model.view_features(views, batch_size=2)
    assert len(vf) == 3 and vf.valid.tolist() == [True, False, True] and len(vf.errors) == 1
    grads = []
    for inp in (views, vf):
        emb, mask = _inputs(model, PROMPTS)
        q = model.score_from_embeddings(inp, emb, mask)
        q[:, 3].sum().backward()
        grads.append((q.detach(), emb.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7)
    assert grads[1][1].abs().sum() > 0


def test_scene_frame_keeps_size_that_unit_sphere_normalises_away():
    """A small and a large box: same views under MATE-3D's unit sphere, different under "scene"."""
    from debias3d.models.evaluator.views import evaluator_rig

    small, large = coloured_box(), coloured_box()
    small.apply_scale(0.4)
    fg = {}
    for frame in ("unit_sphere", "scene"):
        cache = ViewCache(rig=evaluator_rig(frame), image_size=32)
        views = cache.get([small, large]).views
        fg[frame] = (views.amin(2) < 0.985).float().mean((1, 2, 3)).tolist()  # foreground share per mesh
    assert fg["unit_sphere"][0] == pytest.approx(fg["unit_sphere"][1], abs=0.01)
    assert fg["scene"][0] < 0.5 * fg["scene"][1]
    with pytest.raises(ValueError, match="view_frame"):
        evaluator_rig("cube")


def test_crop_to_silhouette_centres_the_object_and_keeps_empty_views():
    from debias3d.models.evaluator.model import crop_to_silhouette

    v = torch.ones(1, 2, 3, 64, 64)
    v[0, 0, :, 10:20, 30:34] = 0.2  # a 10 x 4 px object in one corner of a 64 px view
    out = crop_to_silhouette(v, 32)
    assert out.shape == (1, 2, 3, 32, 32)
    fg = out[0, 0].amin(0) < 0.985
    rows, cols = fg.any(1).nonzero().flatten(), fg.any(0).nonzero().flatten()
    assert rows.min() <= 4 and rows.max() >= 27  # the object now spans most of the crop's height
    assert abs((rows.min() + rows.max()) / 2 - 15.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 15.5) <= 1
    torch.testing.assert_close(out[0, 1], torch.ones(3, 32, 32))  # empty view: passed whole


def test_scene_frame_model_scores_and_config_checks(text_encoder):
    cfg = EvaluatorModelConfig(**{**TINY.__dict__, "view_frame": "scene", "render_size": 32})
    m = ShapeWorldHyperScore(cfg, text_encoder=text_encoder).eval()
    assert m.view_cache.rig.normalize == "none"
    views = torch.ones(2, 6, 3, 32, 32)
    views[:, :, :, 12:20, 14:18] = 0.3
    emb, mask = _inputs(m, PROMPTS[:2])
    q = m.score_from_embeddings(views, emb, mask)
    assert q.shape == (2, 4) and torch.isfinite(q).all()
    with pytest.raises(ValueError, match="view_frame"):
        EvaluatorModelConfig(view_frame="cube")


def test_generator_samples_are_rated_like_the_rest():
    """data.generator_samples adds the shipped mini generator's own outputs, rated by the measurer."""
    from debias3d.models.backbone.generator import DEFAULT_WEIGHTS_DIR, WEIGHTS_NAME
    from debias3d.models.evaluator.data import EvaluatorDataConfig, make_samples

    if not (DEFAULT_WEIGHTS_DIR / WEIGHTS_NAME).is_file():
        pytest.fail("the shipped mini-TRELLIS weights are missing")
    samples = make_samples(EvaluatorDataConfig(n_prompts=2, variants=1, generator_samples=3))
    gen = [s for s in samples if s.source == "generator"]
    assert [s.source for s in samples[:2]] == ["builder", "builder"]
    assert 1 <= len(gen) <= 3  # an empty generated grid is dropped, never rated
    for s in gen:
        assert s.ratings.shape == (4,) and np.isfinite(s.ratings).all()
        assert ((s.ratings >= 0) & (s.ratings <= 1)).all() and s.grid.occupancy.any()


def test_merge_fold_records_keeps_pooled_figures_per_run(tmp_path):
    import json

    from debias3d.models.evaluator.train import merge_fold_records

    def rec(folds, shipped, pooled):
        metrics = {"alignment": {"srcc": 0.5 + 0.1 * folds[0], "plcc": 0.6}}
        return {
            "n_samples": 10,
            "folds": [{"fold": f, "n_test": 2, "metrics": metrics} for f in folds],
            "pooled_heldout": {"alignment": {"srcc": pooled, "plcc": pooled}},
            "pooled_heldout_by_source": {"builder": {"n": 4}},
            "shipped": shipped,
            "seconds": 5.0,
        }

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(rec([0, 1], "fold 0 model", 0.3)))
    b.write_text(json.dumps(rec([2], "final model on all prompts", 0.9)))
    m = merge_fold_records([a, b], tmp_path / "merged.json")
    assert [f["fold"] for f in m["folds"]] == [0, 1, 2] and m["seconds"] == 10.0
    assert m["mean_over_folds"]["alignment"]["srcc"] == pytest.approx((0.5 + 0.5 + 0.7) / 3)
    assert not any(k.startswith("pooled_heldout") for k in m)  # one run's pool is not all folds'
    assert [r["folds"] for r in m["runs"]] == [[0, 1], [2]]
    assert m["runs"][1]["pooled_heldout"]["alignment"]["srcc"] == 0.9
    assert m["shipped"] == "final model on all prompts"
    with pytest.raises(ValueError, match="twice"):
        merge_fold_records([a, a], tmp_path / "bad.json")
