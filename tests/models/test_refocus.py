"""Token refocusing: parsing and bad input, token mapping, the attention math against an independent
reference (an integer factor m equals the token repeated m times), row matching inside CFG batches,
and the hook on real TRELLIS's stage-1 (dense) and stage-2 (sparse) flow models."""

from __future__ import annotations

import importlib
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from debias3d.models.refocus import (
    RefocusConfig,
    Refocuser,
    RefocusError,
    _refocused_attention,
    parse_refocus,
    targets_from_audit,
    word_token_positions,
)

THIRD_PARTY = Path(__file__).resolve().parents[2].parent / "shared" / "third_party"


# ------------------------------------------------------------------------------- parsing
def test_parse_refocus_good():
    assert parse_refocus(["narrow=2.0", "red = 1.5", "very tall=3"]) == {
        "narrow": 2.0,
        "red": 1.5,
        "very tall": 3.0,
    }


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("narrow=0", "factor must be a number > 0"),
        ("narrow=-1.5", "factor must be a number > 0"),
        ("narrow=nan", "factor must be a number > 0"),
        ("narrow=abc", "is not a number"),
        ("narrow", "expected WORD=FACTOR"),
        ("=2", "expected WORD=FACTOR"),
    ],
)
def test_parse_refocus_bad(item, needle):
    with pytest.raises(RefocusError) as e:
        parse_refocus([item])
    msg = str(e.value)
    assert needle in msg and item in msg and "\n" not in msg


def test_config_rejects_bad_interval():
    with pytest.raises(RefocusError, match="t_interval"):
        RefocusConfig(t_interval=(0.8, 0.2))
    with pytest.raises(RefocusError, match="max_factor"):
        RefocusConfig(max_factor=0.5)


def test_word_token_positions(tiny_encoder):
    prompt = "a narrow red vase beside a Narrower box"
    tok = tiny_encoder.tokenize([prompt])
    offsets = tok["offset_mapping"][0].tolist()
    ids = tok["input_ids"][0].tolist()
    pos = word_token_positions(prompt, "narrow", offsets)
    assert pos and all(tiny_encoder.tokenizer.decode([ids[i]]).strip() in "narrow" for i in pos)
    # whole words only: "Narrower" is not "narrow"; case-insensitive otherwise
    assert word_token_positions(prompt, "NARROW", offsets) == pos
    assert word_token_positions(prompt, "vase beside", offsets) == sorted(
        word_token_positions(prompt, "vase", offsets) + word_token_positions(prompt, "beside", offsets)
    )
    assert word_token_positions(prompt, "wide", offsets) is None
    assert word_token_positions(prompt, "narrow", [(0, 0)] * 3) == []


# ----------------------------------------------------------------------- attention math
def _dup_reference(attn, x, ctx, j, m, mask=None):
    """Plain attention over a context where token j appears m times: exactly factor m on j."""
    rows = [ctx[:, :j], *([ctx[:, j : j + 1]] * m), ctx[:, j + 1 :]]
    big = torch.cat(rows, 1)
    if mask is None:
        return attn(x, big)
    mrows = [mask[:, :j], *([mask[:, j : j + 1]] * m), mask[:, j + 1 :]]
    return attn(x, big, mask=torch.cat(mrows, 1))


def test_mini_attention_matches_repeated_token():
    from debias3d.models.backbone.blocks import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, ctx_channels=8, type="cross")
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    zero = torch.zeros(2, 6)
    torch.testing.assert_close(_refocused_attention(attn, x, ctx, zero, mask), attn(x, ctx, mask=mask))
    bias = zero.clone()
    bias[:, 2] = math.log(3.0)
    got = _refocused_attention(attn, x, ctx, bias, mask)
    torch.testing.assert_close(got, _dup_reference(attn, x, ctx, 2, 3, mask), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, attn(x, ctx, mask=mask), atol=1e-4)


# --------------------------------------------------------------------- generator level
def test_generator_refocus_changes_only_target_prompt(tiny_generator):
    prompts = ["a narrow red vase", "a wide blue box"]
    plain = tiny_generator.sampler.sample
    with torch.no_grad():
        base = _stage1_x0(tiny_generator, prompts)
    with Refocuser(tiny_generator, {prompts[0]: {"narrow": 4.0}}) as rf:
        got = _stage1_x0(tiny_generator, prompts)
    assert rf.report.rows == [
        {
            "prompt": prompts[0],
            "word": "narrow",
            "factor": 4.0,
            "tokens": rf.report.rows[0]["tokens"],
            "status": "ok",
        }
    ]
    assert rf.report.active_calls["stage1"] == 4  # every step (tiny config: 4 steps)
    assert not torch.allclose(got[0], base[0], atol=1e-5)  # refocused
    torch.testing.assert_close(got[1], base[1])  # other prompt in the same batch untouched
    assert tiny_generator.sampler.sample == plain
    # hooks are gone after the block
    torch.testing.assert_close(_stage1_x0(tiny_generator, prompts), base)
    for m in tiny_generator.stage1.modules():
        assert "forward" not in vars(m)


def _stage1_x0(gen, prompts):
    """Stage-1 samples for the prompts (seed 0), through the generator's own sampler + CFG."""
    from debias3d.models.backbone.generator import _norm
    from debias3d.models.text_encoder import pad_features

    feats = gen.text_encoder.encode_one_by_one(prompts)
    cond, cmask = pad_features(feats)
    null, nmask = gen.text_encoder.null_condition()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((len(prompts), 1, 16, 16, 16), generator=g)
    p = _norm(gen.config.sparse_structure_sampler_params)
    return gen.sampler.sample(
        gen.stage1, noise, cond, null, cond_mask=cmask, neg_cond_mask=nmask, **p
    ).samples


def test_generate_with_refocus_end_to_end(tiny_generator):
    prompts = ["a narrow red vase", "a wide blue box"]
    base = tiny_generator.generate(prompts, seeds=0, num_samples=2)
    with Refocuser(tiny_generator, {prompts[0]: {"narrow": 8.0}}, RefocusConfig(stages=("stage2",))) as rf:
        got = tiny_generator.generate(prompts, seeds=0, num_samples=2)
    assert set(rf.report.active_calls) == {"stage2"}
    # stage 1 untouched (same occupancy), stage 2 colours of the target prompt change
    for a, b in zip(base, got, strict=True):
        assert np.array_equal(a.voxels.occupancy, b.voxels.occupancy)
    assert not np.allclose(base[0].voxels.colors, got[0].voxels.colors)
    assert np.allclose(base[2].voxels.colors, got[2].voxels.colors)


def test_interval_outside_sampling_times_is_a_no_op(tiny_generator):
    prompts = ["a narrow red vase"]
    base = _stage1_x0(tiny_generator, prompts)
    with Refocuser(tiny_generator, {prompts[0]: {"narrow": 4.0}}, RefocusConfig(t_interval=(0.0, 0.0))) as rf:
        got = _stage1_x0(tiny_generator, prompts)
    torch.testing.assert_close(got, base)
    assert rf.report.active_calls == {}


def test_bad_refocus_input_one_line(tiny_generator):
    with pytest.raises(RefocusError) as e:
        Refocuser(tiny_generator, {"a red vase": {"narrow": 2.0}})
    assert str(e.value) == "refocus word 'narrow' is not in the prompt 'a red vase'"
    with pytest.raises(RefocusError, match="factor must be a number > 0"):
        Refocuser(tiny_generator, {"a red vase": {"red": 0.0}})
    with pytest.raises(RefocusError, match="stage3"):
        Refocuser(tiny_generator, {"a red vase": {"red": 2.0}}, RefocusConfig(stages=("stage3",)))
    # audit mode (strict=False): reported, not raised; the factor cap applies
    rf = Refocuser(tiny_generator, {"a red vase": {"narrow": 2.0, "red": 100.0}}, strict=False)
    assert [(r["word"], r["status"], r["factor"]) for r in rf.report.rows] == [
        ("narrow", "no-word", 2.0),
        ("red", "ok", 8.0),
    ]


def test_word_beyond_token_limit_is_reported(tiny_generator):
    limit = tiny_generator.text_encoder.max_length
    prompt = "a " * (limit + 5) + "narrow vase"
    rf = Refocuser(tiny_generator, {prompt: {"narrow": 2.0}})
    assert rf.report.missing()[0]["status"] == "no-token"


def test_targets_from_audit(tmp_path):
    import pandas as pd

    pd.DataFrame(
        {"prompt": ["a narrow red vase", "a box", "a tall cup"], "w_l": ["narrow", None, "tall"]}
    ).to_parquet(tmp_path / "prompts.parquet")
    assert targets_from_audit(tmp_path, 2.0) == {
        "a narrow red vase": {"narrow": 2.0},
        "a tall cup": {"tall": 2.0},
    }
    assert targets_from_audit(tmp_path, 2.0, prompts=["a tall cup"]) == {"a tall cup": {"tall": 2.0}}
    with pytest.raises(RefocusError, match="factor"):
        targets_from_audit(tmp_path, -1.0)
    with pytest.raises(FileNotFoundError, match="prompts.parquet"):
        targets_from_audit(tmp_path / "nope", 2.0)


# -------------------------------------------------------------------- real TRELLIS stage 1
@pytest.fixture()
def trellis_modules(monkeypatch):
    root = THIRD_PARTY / "trellis" / "trellis"
    if not root.is_dir():
        pytest.skip(f"real TRELLIS code not found at {root} (the shared third-party folder is absent)")
    monkeypatch.setenv("ATTN_BACKEND", "sdpa")
    saved = {k: v for k, v in sys.modules.items() if k == "trellis" or k.startswith("trellis.")}
    for k in saved:
        del sys.modules[k]
    for name, path in [("trellis", root), ("trellis.models", root / "models")]:
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    try:
        yield importlib.import_module("trellis.models.sparse_structure_flow")
    finally:
        for k in [k for k in sys.modules if k == "trellis" or k.startswith("trellis.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.parametrize("qk_rms_norm_cross", [False, True])
def test_trellis_stage1_cross_attention_refocused(trellis_modules, qk_rms_norm_cross):
    from debias3d.models import refocus as rfm

    torch.manual_seed(0)
    model = trellis_modules.SparseStructureFlowModel(
        resolution=8,
        in_channels=2,
        model_channels=32,
        cond_channels=24,
        out_channels=2,
        num_blocks=2,
        num_head_channels=16,
        patch_size=2,
        qk_rms_norm_cross=qk_rms_norm_cross,
    ).eval()
    with torch.no_grad():  # TRELLIS zero-initialises the output and adaLN layers
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    crosses = [m for m in model.modules() if rfm._is_cross_attention(m)]
    assert len(crosses) == 2 and type(crosses[0]).__module__.startswith("trellis.modules")

    cond = torch.randn(2, 7, 24)
    x, t = torch.randn(2, 2, 8, 8, 8), torch.full((2,), 600.0)

    class _Gen:  # a stand-in for TrellisGenerator: its flow model is the real one
        name = "trellis-stage1-test"
        flow_models = {"stage1": model}

    rfm.register_text_side(_Gen.name)(lambda gen, prompt: (cond[0], [(0, 0), (0, 1), (2, 8)] + [(0, 0)] * 4))
    try:
        with torch.no_grad():
            base = model(x, t, cond)
            with Refocuser(_Gen(), {"a narrow": {"narrow": 2.0}}, RefocusConfig(stages=("stage1",))) as rf:
                got = model(x, t, cond)
            dup = torch.cat([cond[:1, :3], cond[:1, 2:3], cond[:1, 3:]], 1)  # token 2 twice = factor 2
            ref = model(x[:1], t[:1], dup)
    finally:
        rfm._TEXT_SIDES.pop(_Gen.name)
    assert rf.report.rows[0]["tokens"] == [2] and rf.report.active_calls == {"stage1": 1}
    torch.testing.assert_close(got[:1], ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[:1], base[:1], atol=1e-4)
    torch.testing.assert_close(got[1:], base[1:])  # the other row is not the prompt: unchanged
    assert os.environ["ATTN_BACKEND"] == "sdpa"


# -------------------------------------------------------------------- real TRELLIS stage 2
@pytest.fixture()
def slat_modules(monkeypatch):
    """The real ``trellis.models.structured_latent_flow`` (sparse stage 2) with the flash-attn
    CPU stand-in, imported through ``tests/finetune/real_trellis.py``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
    try:
        import real_trellis as rt
    finally:
        sys.path.pop(0)
    rt.install(monkeypatch)  # skips with the reason when ../shared/third_party or spconv is absent
    try:
        yield rt, importlib.import_module("trellis.models.structured_latent_flow")
    finally:
        rt.drop_modules()


def _sparse_input(n_rows: int = 2):
    """Sequences of 6 and 5 voxels; ``n_rows=1`` is exactly the first of them."""
    from trellis.modules.sparse import SparseTensor

    g = torch.Generator().manual_seed(3)
    batch = torch.cat([torch.full((6, 1), 0), torch.full((5, 1), 1)])
    coords = torch.cat([batch, torch.randint(0, 64, (11, 3), generator=g)], 1).int()
    feats = torch.randn(11, 8, generator=g)
    n = 6 if n_rows == 1 else 11
    return SparseTensor(feats=feats[:n], coords=coords[:n])


def _counting_kernel(monkeypatch):
    """Record the head width every flash-attn kv-packed call sees (the stage-2 cross-attention)."""
    import flash_attn

    seen: list[int] = []
    inner = flash_attn.flash_attn_varlen_kvpacked_func

    def spy(q, kv, *args, **kwargs):
        seen.append(int(q.shape[-1]))
        return inner(q, kv, *args, **kwargs)

    monkeypatch.setattr(flash_attn, "flash_attn_varlen_kvpacked_func", spy)
    return seen


@pytest.mark.parametrize("use_fp16", [False, True])
def test_trellis_stage2_sparse_cross_attention_math(slat_modules, monkeypatch, use_fp16):
    """On one real ``SparseMultiHeadAttention``: zero bias = the module's own forward; ``log m`` on
    token j = the context with token j repeated m times; a row without bias is unchanged."""
    from debias3d.models import refocus as rfm

    rt, slat = slat_modules
    modules = importlib.import_module("trellis.modules.sparse.attention.modules")
    torch.manual_seed(0)
    attn = modules.SparseMultiHeadAttention(32, 2, ctx_channels=12, type="cross").eval()
    dtype = torch.float16 if use_fp16 else torch.float32
    attn.to(dtype)
    x = _sparse_input(2)
    x = x.replace(torch.randn(x.feats.shape[0], 32, generator=torch.Generator().manual_seed(1)).to(dtype))
    ctx = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(2)).to(dtype)
    tol = {"atol": 2e-3, "rtol": 2e-3} if use_fp16 else {"atol": 1e-5, "rtol": 1e-5}
    seen = _counting_kernel(monkeypatch)
    with torch.no_grad():
        base = attn(x, ctx).feats.float()
        zero = rfm._refocused_sparse_attention(attn, x, ctx, torch.zeros(2, 7)).feats.float()
        bias = torch.zeros(2, 7)
        bias[0, 2] = math.log(3.0)
        got = rfm._refocused_sparse_attention(attn, x, ctx, bias).feats.float()
        dup = torch.cat([ctx[:, :3], ctx[:, 2:3], ctx[:, 2:3], ctx[:, 3:]], 1)  # token 2 three times
        ref = attn(x, dup).feats.float()
    assert seen == [16, 24, 24, 16]  # head width 16, padded to 24 with the bias channel
    torch.testing.assert_close(zero, base, **tol)
    rows0 = slice(0, 6)  # the first sequence's voxels
    torch.testing.assert_close(got[rows0], ref[rows0], **tol)
    assert not torch.allclose(got[rows0], base[rows0], atol=1e-2)
    torch.testing.assert_close(got[6:], base[6:], **tol)  # second row: no bias, unchanged


@pytest.mark.parametrize("use_fp16", [False, True])
def test_trellis_stage2_flow_model_refocused(slat_modules, monkeypatch, use_fp16):
    """The hook on the real stage-2 ``SLatFlowModel``: factor 2 on a token equals that token
    twice in the condition; the other prompt's row is unchanged; factor 1 changes nothing."""
    from debias3d.models import refocus as rfm

    rt, slat = slat_modules
    torch.manual_seed(0)
    model = slat.SLatFlowModel(**{**rt.SLAT_ARGS, "use_fp16": use_fp16}).eval()
    rt.randomise_zero_init(model, 1)
    crosses = [m for m in model.modules() if rfm._is_cross_attention(m)]
    assert len(crosses) == 2 and all(type(m).__name__ == "SparseMultiHeadAttention" for m in crosses)

    x, t = _sparse_input(2), torch.full((2,), 600.0)
    cond = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(4))

    class _Gen:  # a stand-in for TrellisGenerator: its flow model is the real one
        name = "trellis-stage2-test"
        flow_models = {"stage2": model}

    rfm.register_text_side(_Gen.name)(lambda gen, prompt: (cond[0], [(0, 0), (0, 1), (2, 8)] + [(0, 0)] * 4))
    tol = {"atol": 3e-3, "rtol": 3e-3} if use_fp16 else {"atol": 1e-5, "rtol": 1e-4}
    seen = _counting_kernel(monkeypatch)
    cfg = RefocusConfig(stages=("stage2",))
    try:
        with torch.no_grad():
            base = model(x, t, cond).feats.float()
            with Refocuser(_Gen(), {"a narrow": {"narrow": 1.0}}, cfg) as rf1:
                one = model(x, t, cond).feats.float()
            n_plain = len(seen)
            with Refocuser(_Gen(), {"a narrow": {"narrow": 2.0}}, cfg) as rf:
                got = model(x, t, cond).feats.float()
            dup = torch.cat([cond[:1, :3], cond[:1, 2:3], cond[:1, 3:]], 1)  # token 2 twice = factor 2
            ref = model(_sparse_input(1), t[:1], dup).feats.float()
    finally:
        rfm._TEXT_SIDES.pop(_Gen.name)
    assert seen[n_plain:] == [24, 24, 16, 16]  # refocused blocks use the padded head width
    torch.testing.assert_close(one, base, rtol=0, atol=0)
    assert rf1.report.active_calls == {}
    assert rf.report.rows[0]["tokens"] == [2] and rf.report.active_calls == {"stage2": 1}
    torch.testing.assert_close(got[:6], ref, **tol)
    assert not torch.allclose(got[:6], base[:6], atol=1e-2)
    torch.testing.assert_close(got[6:], base[6:], **tol)  # the other prompt's row
    for m in model.modules():
        assert "forward" not in vars(m)


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture()
def tiny_weights(tmp_path, tiny_generator, tiny_bert_dir):
    from dataclasses import replace

    tiny_generator.config = replace(tiny_generator.config, text_encoder_path=str(tiny_bert_dir))
    return tiny_generator.save_pretrained(tmp_path / "weights")


def test_cli_generate_refocus(tmp_path, tiny_weights):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from debias3d.cli import app

    runner = CliRunner()
    base = ["generate", "a narrow red vase", "--weights", str(tiny_weights), "-D", "1"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "g"), "--refocus", "narrow=2.0"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "g" / "refocus.json").read_text())["rows"]
    assert [(x["word"], x["status"]) for x in rows] == [("narrow", "ok")]

    for item, line in [
        ("wide=2.0", "error: refocus word 'wide' is not in the prompt 'a narrow red vase'"),
        ("narrow=0", "error: refocus 'narrow=0': factor must be a number > 0, got 0.0"),
    ]:
        r = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--refocus", item])
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert line in r.output.splitlines()
    r = runner.invoke(
        app, [*base, "--out", str(tmp_path / "bad"), "--refocus", "narrow=2", "--refocus-interval", "x"]
    )
    assert r.exit_code == 1 and "error: --refocus-interval 'x': expected LO,HI" in r.output

    audit = tmp_path / "audit"
    audit.mkdir()
    pd.DataFrame({"prompt": ["a narrow red vase", "a tall cup"], "w_l": ["red", None]}).to_parquet(
        audit / "prompts.parquet"
    )
    argv = ["generate", "a narrow red vase", "a tall cup", "--weights", str(tiny_weights), "-D", "1"]
    r = runner.invoke(app, [*argv, "--out", str(tmp_path / "a"), "--refocus-audit", str(audit)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "a" / "refocus.json").read_text())["rows"]
    assert [(x["prompt"], x["word"], x["factor"]) for x in rows] == [("a narrow red vase", "red", 2.0)]
