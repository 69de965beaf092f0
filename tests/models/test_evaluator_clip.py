"""The real HyperScore backend on a tiny CLIPConfig model built in the test (no hub)."""

from __future__ import annotations

import pytest
import torch

from debias3d.models.evaluator.clip import (
    CLIPHyperScore,
    convert_hyperscore_checkpoint,
    hf_clip_to_openai,
    openai_clip_to_hf,
)
from debias3d.models.evaluator.config import CLIPHyperScoreConfig

transformers = pytest.importorskip("transformers")


class WordTokenizer:
    """Stand-in CLIP tokenizer: SOT=1, EOT=2, words hashed into [3, 100), padded with 0."""

    def __call__(self, prompts, padding="longest", truncation=True, max_length=77, return_tensors="pt"):
        rows = [[1, *[3 + sum(map(ord, w)) % 97 for w in p.lower().split()], 2][:max_length] for p in prompts]
        t = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_clip(seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config={
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


CFG = CLIPHyperScoreConfig(
    image_size=32, n_ctx=3, hyper_in_channels=8, feature_size=2, target_sizes=(16, 8, 8, 4, 2)
)
PROMPTS = ["a red vase", "two blue cups with handles"]


@pytest.fixture
def model():
    torch.manual_seed(1)
    return CLIPHyperScore(CFG, clip_model=tiny_clip(), tokenizer=WordTokenizer()).eval()


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


def test_convert_checkpoint_then_load_gives_identical_scores(model, tmp_path):
    views = torch.rand(2, 6, 3, 32, 32)
    before = model.score(views, PROMPTS)
    state = {f"clip_model.{k}": v for k, v in hf_clip_to_openai(model.clip.state_dict()).items()}
    state.update({k: v for k, v in model.state_dict().items() if not k.startswith("clip.")})
    state["text_encoder.transformer.dummy"] = torch.zeros(1)  # duplicated tower: dropped
    state["prompt_learner.token_prefix"] = torch.zeros(4, 1, 32)  # CoOp buffer: dropped
    pth = tmp_path / "model.pth"
    torch.save(state, pth)
    out = convert_hyperscore_checkpoint(pth, tmp_path / "hyperscore.safetensors")
    fresh = CLIPHyperScore(CFG, clip_model=tiny_clip(seed=5), tokenizer=WordTokenizer()).eval()
    assert not torch.allclose(fresh.score(views, PROMPTS), before)
    fresh.load_weights(out)
    assert torch.allclose(fresh.score(views, PROMPTS), before, atol=1e-5)


def test_missing_clip_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip-vit-base-patch16"):
        CLIPHyperScore(CLIPHyperScoreConfig(clip_path=str(tmp_path / "none")))


def test_config_divisibility_checked():
    with pytest.raises(ValueError, match="divisible"):
        CLIPHyperScoreConfig(feature_size=5)


def test_cached_patch_tokens_match_views(model):
    views = torch.rand(2, 6, 3, 32, 32)
    enc = model.tokenize(PROMPTS)
    emb = model.embed_tokens(enc["input_ids"]).detach()
    a = model.score_from_embeddings(views, emb, enc["attention_mask"])
    b = model.score_from_embeddings(model.view_features(views), emb, enc["attention_mask"])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
