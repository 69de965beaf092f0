"""The real HyperScore backend (``hyperscore-clip``) against upstream HyperScore.

Tiny CLIP models are built here from a ``CLIPConfig`` with a real ``CLIPTokenizer`` over a tiny BPE
vocabulary (no hub). ``hyperscore_reference`` is upstream's forward pass transcribed on
OpenAI-layout weights; the released checkpoint's keys and shapes come from
``../shared/fixtures/hyperscore/state_dict_shapes.json``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from debias3d.models.evaluator.clip import (
    CLIPHyperScore,
    HyperIQANet,
    convert_hyperscore_checkpoint,
    hf_clip_to_openai,
    map_hyperscore_state_dict,
    openai_clip_to_hf,
)
from debias3d.models.evaluator.config import CLIPHyperScoreConfig

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import hyperscore_reference as ref  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stand_ins import byte_alphabet  # noqa: E402

FIXTURE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "fixtures"
    / "hyperscore"
    / "state_dict_shapes.json"
)
DIMS = ("alignment quality", "geometry quality", "texture quality", "overall quality")
PROMPTS = ["a red vase", "two blue cups with handles"]
TINY_SIZES = (16, 8, 8, 4)
CFG = CLIPHyperScoreConfig(
    image_size=32, render_size=32, n_ctx=3, hyper_in_channels=8, feature_size=2, target_sizes=TINY_SIZES
)


def write_clip_tokenizer(folder: Path) -> None:
    """A real ``CLIPTokenizer`` over bytes plus a few merges; EOT gets the highest id, like CLIP's."""
    from transformers import CLIPTokenizer

    base = byte_alphabet()
    merges = [("r", "e"), ("re", "d</w>"), ("q", "u"), ("qu", "a"), ("a", "l"), ("al", "i")]
    vocab = [*base, *(c + "</w>" for c in base), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={
            "vocab_size": 520,  # write_clip_tokenizer: 518 tokens, then SOS = 518, EOT = 519
            "bos_token_id": 518,
            "eos_token_id": 519,
            "pad_token_id": 1,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_clip")
    tiny_clip_config().save_pretrained(d)
    write_clip_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def tokenizer(clip_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)


def tiny_clip(seed: int = 0):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config()).eval()


def randomize(model: CLIPHyperScore, seed: int = 1) -> CLIPHyperScore:
    """Give every head weight (and the learned context) a scale at which differences show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("clip."):
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2))
    model._clear_condition_cache()
    return model


@pytest.fixture
def model(tokenizer):
    return randomize(CLIPHyperScore(CFG, clip_model=tiny_clip(), tokenizer=tokenizer).eval())


def reference_for(model: CLIPHyperScore, tokenizer) -> ref.HyperScore:
    """Upstream's HyperScore on the same weights (CLIP through the OpenAI key layout)."""
    clip = ref.CLIP(model.clip.config)
    oa = hf_clip_to_openai(model.clip.state_dict())
    clip.load_state_dict(oa, strict=True)
    up = ref.HyperScore(
        clip, tokenizer, DIMS, CFG.n_ctx, 16, CFG.hyper_in_channels, TINY_SIZES, CFG.feature_size
    )
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    missing, unexpected = up.load_state_dict(head, strict=False)
    assert not unexpected and all(k.startswith(("clip_model.", "text_encoder.")) for k in missing)
    return up.eval()


# ------------------------------------------------------------------ upstream equations, same weights
def test_forward_matches_upstream_reference(model, tokenizer):
    up = reference_for(model, tokenizer)
    torch.manual_seed(3)
    views = torch.rand(2, 6, 3, 32, 32)
    with torch.no_grad():
        expected = up((views - model.mean) / model.std, PROMPTS)["score_list"].reshape(2, 4)
    got = model.score(views, PROMPTS)
    assert expected.abs().max() > 1e-3  # a non-degenerate comparison
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_learned_prompt_buffers_match_upstream_init(tokenizer):
    """token_prefix / token_suffix / EOT index as upstream's PromptLearner computes them."""
    model = CLIPHyperScore(CFG, clip_model=tiny_clip(), tokenizer=tokenizer)
    clip = ref.CLIP(model.clip.config)
    clip.load_state_dict(hf_clip_to_openai(model.clip.state_dict()))
    up = ref.PromptLearner(tokenizer, CFG.n_ctx, DIMS, clip, torch.zeros(4, CFG.n_ctx, 32))
    pl = model.prompt_learner
    torch.testing.assert_close(pl.token_prefix, up.token_prefix)
    torch.testing.assert_close(pl.token_suffix, up.token_suffix)
    torch.testing.assert_close(model.cond_eot, up.tokenized_prompts.argmax(-1))
    assert model.name_lens == up.name_lens


def test_condition_prompt_is_front_with_full_stop(model, tokenizer):
    """``[SOS] name ctx×n . [EOT] 0…`` (upstream ``class_token_position='front'``)."""
    emb = model.condition_prompts()
    assert emb.shape == (4, 77, 32)
    tok = model.clip.text_model.embeddings.token_embedding.weight
    ids = tokenizer(["alignment quality."])["input_ids"][0]  # SOS name… . EOT
    n = len(ids) - 3
    row = emb[0]
    torch.testing.assert_close(row[0], tok[ids[0]])
    torch.testing.assert_close(row[1 : 1 + n], tok[ids[1 : 1 + n]])
    torch.testing.assert_close(row[1 + n : 1 + n + CFG.n_ctx], model.prompt_learner.ctx[0])
    torch.testing.assert_close(row[1 + n + CFG.n_ctx], tok[ids[-2]])  # the full stop
    torch.testing.assert_close(row[2 + n + CFG.n_ctx], tok[ids[-1]])  # EOT
    torch.testing.assert_close(row[-1], tok[0])  # zero padding, as clip.tokenize
    assert int(model.cond_eot[0]) == 2 + n + CFG.n_ctx


def test_image_side_drops_the_class_token(model):
    feats = model.encode_views(torch.rand(1, 6, 3, 32, 32))
    assert feats.shape == (1, 6 * 4, 16)  # (32 / 16)² patches per view, no CLS


def test_prompts_padded_to_77_and_padding_counts_in_patch_weights(model):
    enc = model.tokenize(PROMPTS)
    assert enc["input_ids"].shape == (2, 77) and enc["offset_mapping"].shape == (2, 77, 2)
    assert (enc["input_ids"][enc["attention_mask"] == 0] == 0).all()
    feats = model.view_features(torch.rand(2, 6, 3, 32, 32))
    text = model.forward_embeds(model.embed_tokens(enc["input_ids"]), enc["attention_mask"])
    mask = enc["attention_mask"].bool()
    base = model.forward_features(feats.features, text, mask)
    pad = ~mask
    moved = text + pad[..., None] * torch.randn_like(text)
    # Upstream sums the patch-weight similarity over all 77 positions, so padding features matter.
    assert not torch.allclose(model.forward_features(feats.features, moved, mask), base, atol=1e-4)


def test_deleted_word_is_removed_from_text_and_weights(model):
    enc = model.tokenize(["a red vase"])
    mask = enc["attention_mask"].clone()
    emb = model.embed_tokens(enc["input_ids"])
    feats = model.view_features(torch.rand(1, 6, 3, 32, 32))
    full = model.score_from_embeddings(feats, emb, mask)
    mask[0, 2] = 0  # a word before the EOT
    other = emb.clone()
    other[0, 2] = torch.randn_like(other[0, 2]) * 5
    a = model.score_from_embeddings(feats, emb, mask)
    b = model.score_from_embeddings(feats, other, mask)
    assert not torch.allclose(a, full)
    torch.testing.assert_close(a, b)  # a deleted token cannot influence the score


def test_target_net_is_relu():
    """Upstream's TargetNet (1×1 conv2d with generated weights) has ReLU between layers, not sigmoid."""
    from debias3d.models.evaluator.clip import _target_net

    torch.manual_seed(0)
    net, up = HyperIQANet(8, TINY_SIZES, 2), ref.HyperNet(8, TINY_SIZES, 2)
    up.load_state_dict(net.state_dict(), strict=True)
    feat = torch.randn(1, 8, 2, 2)
    x = torch.randn(3, 1, 16) * 3
    expected = ref.TargetNet(up(feat[0]))(x[:, 0, :, None, None]).reshape(3, 1)
    torch.testing.assert_close(_target_net(x, net(feat)), expected)


def test_default_hypernet_has_upstream_shapes():
    """Three conv weight generators plus fc4w_fc / fc4b_fc: 224 → 112 → 56 → 28 → 1."""
    assert CLIPHyperScoreConfig().target_sizes == (224, 112, 56, 28)
    shapes = {f"hypernet.{k}": list(v.shape) for k, v in HyperIQANet().state_dict().items()}
    expected = {
        "hypernet.fc1w_conv.weight": [512, 112, 3, 3],
        "hypernet.fc3w_conv.weight": [32, 112, 3, 3],
        "hypernet.fc4w_fc.weight": [28, 112],
        "hypernet.fc4b_fc.weight": [1, 112],
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert not any(k.startswith("hypernet.fc5") or k.startswith("hypernet.fc4w_conv") for k in shapes)


def test_meshes_are_centred_on_the_vertex_mean(model):
    from debias3d.render.renderer import normalize_vertices

    v = np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [4, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    out = normalize_vertices(v, "unit_sphere_mean")
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    assert math.isclose(float(np.linalg.norm(out, axis=1).max()), 1.0)
    assert model.view_cache.rig.normalize == "unit_sphere_mean"
    assert model.view_cache.image_size == CFG.render_size


def test_rendered_views_score_end_to_end(model):
    import trimesh

    mesh = trimesh.creation.box(extents=(1.0, 0.5, 0.3))
    mesh.apply_translation((3.0, 0.0, 0.0))
    res = model.evaluate([mesh], ["a red vase"])
    assert res.valid.all() and res.scores.shape == (1, 4) and torch.isfinite(res.scores).all()


# ------------------------------------------------------------------ API behaviour kept from before
def test_shapes_and_gradient_to_embeddings(model):
    views = torch.rand(2, 6, 3, 48, 48)  # resized to 32 inside
    enc = model.tokenize(PROMPTS)
    emb = model.embed_tokens(enc["input_ids"]).detach().requires_grad_(True)
    q = model.score_from_embeddings(views, emb, enc["attention_mask"])
    assert q.shape == (2, 4) and torch.isfinite(q).all()
    q[:, 0].sum().backward()
    g = emb.grad.abs().sum(-1)
    assert torch.isfinite(emb.grad).all()
    assert (g[enc["attention_mask"].bool()] > 0).all()
    assert all(p.grad is None for p in model.clip.parameters())


def test_heads_differ_per_dimension(model):
    q = model.score(torch.rand(2, 6, 3, 32, 32), PROMPTS)
    assert not torch.allclose(q[:, 0], q[:, 1])


def test_openai_key_mapping_round_trip():
    clip = tiny_clip()
    hf = {k: v for k, v in clip.state_dict().items() if "position_ids" not in k}
    oa = hf_clip_to_openai(hf)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in oa and "text_projection" in oa
    back = openai_clip_to_hf(oa)
    assert set(back) == set(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def upstream_state_dict(model: CLIPHyperScore) -> dict[str, torch.Tensor]:
    """The model's weights in upstream's ``state_dict`` layout (``clip_model.*`` + ``text_encoder.*``)."""
    oa = hf_clip_to_openai(model.clip.state_dict())
    state = {f"clip_model.{k}": v for k, v in oa.items()}
    for k, v in oa.items():
        if k.startswith(("transformer.", "positional_embedding", "ln_final.", "text_projection")):
            state[f"text_encoder.{k}"] = v
    state.update({k: v for k, v in model.state_dict().items() if not k.startswith("clip.")})
    return state


def test_convert_checkpoint_then_load_gives_identical_scores(model, clip_dir, tmp_path):
    views = torch.rand(2, 6, 3, 32, 32)
    before = model.score(views, PROMPTS)
    pth = tmp_path / "model.pth"
    torch.save(upstream_state_dict(model), pth)
    from typer.testing import CliRunner

    from debias3d.cli import app

    out = tmp_path / "hyperscore"
    res = CliRunner().invoke(
        app, ["convert-hyperscore", "--checkpoint", str(pth), "--clip", str(clip_dir), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "clip").iterdir()) == sorted(
        p.name for p in clip_dir.iterdir() if p.name != "model.safetensors"
    )
    from debias3d.registry import find

    assert find("evaluator", "hyperscore-clip") is CLIPHyperScore  # what evaluator_weights feeds
    fresh = CLIPHyperScore.from_pretrained(
        out,
        n_ctx=CFG.n_ctx,
        image_size=32,
        render_size=32,
        hyper_in_channels=8,
        feature_size=2,
        target_sizes=TINY_SIZES,
    )
    torch.testing.assert_close(fresh.score(views, PROMPTS), before, rtol=1e-5, atol=1e-6)


def test_converter_refuses_unknown_or_inconsistent_keys(model):
    state = upstream_state_dict(model)
    bad = dict(state, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown keys"):
        map_hyperscore_state_dict(bad)
    key = "text_encoder.ln_final.weight"
    bad = dict(state, **{key: state[key] + 1})
    with pytest.raises(ValueError, match="differs from clip_model"):
        map_hyperscore_state_dict(bad)


def test_missing_weights_or_clip_folder_is_a_one_line_error(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match="evaluator_weights is not set") as e:
        CLIPHyperScore.from_pretrained(None)
    assert "\n" not in str(e.value) and "convert-hyperscore" in str(e.value)
    with pytest.raises(FileNotFoundError, match="not a converted HyperScore folder"):
        CLIPHyperScore.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="CLIP folder"):
        CLIPHyperScore(CLIPHyperScoreConfig(clip_path=str(tmp_path / "none")))
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        convert_hyperscore_checkpoint(tmp_path / "model.pth", tmp_path / "out", clip_dir)


def test_config_checked():
    with pytest.raises(ValueError, match="divisible"):
        CLIPHyperScoreConfig(feature_size=5)
    with pytest.raises(ValueError, match="class_token_position"):
        CLIPHyperScoreConfig(class_token_position="middle")


def test_cached_patch_tokens_match_views(model):
    views = torch.rand(2, 6, 3, 32, 32)
    enc = model.tokenize(PROMPTS)
    emb = model.embed_tokens(enc["input_ids"]).detach()
    a = model.score_from_embeddings(views, emb, enc["attention_mask"])
    b = model.score_from_embeddings(model.view_features(views), emb, enc["attention_mask"])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the released checkpoint's layout
def _fixture_shapes() -> dict[str, list[int]]:
    if not FIXTURE.is_file():
        pytest.skip(f"HyperScore fixture not found at {FIXTURE} (needs the shared/ folder beside the repo)")
    return json.loads(FIXTURE.read_text())["shapes"]


def test_released_checkpoint_layout_converts_and_loads(tmp_path):
    """Every key of the released ``model.pth`` (random values) converts and loads, none left over."""
    from transformers import CLIPConfig

    shapes = _fixture_shapes()
    assert len(shapes) == 473
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.startswith("text_encoder."):
            continue
        # fp16 keeps the ~150M random values at 300 MB; the converter writes fp32
        state[key] = torch.randn(shape, generator=g, dtype=torch.float16)
    for key in shapes:
        if key.startswith("text_encoder."):  # upstream's TextEncoder shares clip_model's tensors
            state[key] = state["clip_model." + key[len("text_encoder.") :]]
    assert set(state) == set(shapes)
    pth = tmp_path / "model.pth"
    torch.save(state, pth)
    expected = {
        k: state[k].float().clone() for k in ("hypernet.fc4b_fc.weight", "prompt_learner.token_suffix")
    }
    proj = state["clip_model.visual.proj"].float().clone()
    del state

    clip_dir = tmp_path / "clip-vit-base-patch16"
    CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 16,
        },
        projection_dim=512,
    ).save_pretrained(clip_dir)
    write_clip_tokenizer(clip_dir)
    out = convert_hyperscore_checkpoint(pth, tmp_path / "hyperscore", clip_dir)
    pth.unlink()
    model = CLIPHyperScore.from_pretrained(out)  # strict: raises on any missing or unexpected key
    sd = model.state_dict()
    n_clip = sum(1 for k in shapes if k.startswith("clip_model."))
    n_head = sum(1 for k in shapes if not k.startswith(("clip_model.", "text_encoder.")))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        written = set(f.keys())
    n_qkv = sum(1 for k in shapes if k.startswith("clip_model.") and "in_proj" in k)
    assert len(written) == n_clip + 2 * n_qkv + n_head  # in_proj split into q/k/v
    assert written == {k for k in sd if "position_ids" not in k}
    for k, v in expected.items():
        torch.testing.assert_close(sd[k], v)
    torch.testing.assert_close(sd["clip.visual_projection.weight"], proj.t())


def test_trellis_audit_config_names_the_missing_evaluator_weights(monkeypatch):
    """configs/trellis/audit.yaml as shipped: one line naming evaluator_weights, before TRELLIS loads."""
    from debias3d.bias_audit import pipeline
    from debias3d.bias_audit.config import AuditConfig
    from debias3d.config import load_config

    cfg = load_config(AuditConfig, Path(__file__).resolve().parents[2] / "configs/trellis/audit.yaml", [])
    assert cfg.evaluator == "hyperscore-clip" and cfg.evaluator_weights is None

    def no_generator(*a, **k):
        raise AssertionError("the generator was built before the evaluator was known to load")

    monkeypatch.setattr(pipeline, "build_models_generator", no_generator)
    with pytest.raises(FileNotFoundError, match="evaluator_weights is not set") as e:
        pipeline.build_models(cfg)
    assert "\n" not in str(e.value)


def test_convert_command_line_errors_in_one_line(tmp_path, clip_dir):
    from typer.testing import CliRunner

    from debias3d.cli import app

    args = ["convert-hyperscore", "--checkpoint", str(tmp_path / "model.pth"), "--clip", str(clip_dir)]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.pth" in lines[0] and "not found" in lines[0]


@pytest.mark.parametrize("method", ["grad", "integrated_gradients"])
def test_audit_attribution_runs_on_the_clip_evaluator(model, method):
    """The audit's word attribution reads tokenize's offsets / special tokens and the 77-token mask."""
    from debias3d.bias_audit.attribute import attribute_prompts

    views = torch.rand(2, 2, 6, 3, 32, 32)
    res = attribute_prompts(
        model, PROMPTS, views, torch.ones(2, 2, dtype=torch.bool), method=method, n_steps=8
    )
    enc = model.tokenize(PROMPTS)
    for b in range(len(PROMPTS)):
        n = int(enc["attention_mask"][b].sum())
        assert len(res.tokens[b]) == n and np.isfinite(res.token_attr[b]).all()
        assert res.special[b][0] and res.special[b][n - 1] and not res.special[b][1 : n - 1].any()
        assert np.abs(res.token_attr[b][1 : n - 1]).sum() > 0
    assert np.isfinite(res.scores).all() and np.isfinite(res.delta).all()


def test_checkpoint_for_another_config_is_a_one_line_error(model, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    state["hypernet.fc4b_fc.weight"] = torch.zeros(14, 8)  # the old five-layer layout's shape
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="size mismatch for hypernet.fc4b_fc.weight") as e:
        model.load_weights(tmp_path / "w.safetensors")
    assert "\n" not in str(e.value)


def test_audit_runs_end_to_end_with_the_clip_evaluator(model, tmp_path):
    """run_audit with hyperscore-clip: 77-token prompts, CLIP BPE pieces merged into words, report."""
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parents[1] / "bias_audit"))
    from audit_helpers import BoxGenerator, FakeRenderer

    from debias3d.bias_audit.config import AttributionConfig, AuditConfig
    from debias3d.bias_audit.pipeline import run_audit
    from debias3d.models.evaluator.views import ViewCache

    model.view_cache = ViewCache(renderer=FakeRenderer(32), rig=model.view_cache.rig, image_size=32)
    cfg = AuditConfig(
        samples=1, ground_truth="off", attribution=AttributionConfig(methods=("grad",), n_steps=4)
    )
    run_audit(PROMPTS, cfg, tmp_path / "audit", generator=BoxGenerator(), evaluator=model)
    words = pd.read_parquet(tmp_path / "audit" / "words.parquet")
    merged = {tuple(ws) for ws in words.sort_values("word_index").groupby("prompt_id")["word"].apply(list)}
    assert merged == {tuple(p.split()) for p in PROMPTS}
    assert np.isfinite(words["attr_grad"]).all()
    assert (tmp_path / "audit" / "report.html").is_file()
