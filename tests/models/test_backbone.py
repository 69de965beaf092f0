"""Mini TRELLIS: blocks, masking, sampler math, reproducibility, generation, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from debias3d.data.assets import Asset
from debias3d.models.backbone.blocks import MultiHeadAttention, TimestepEmbedder
from debias3d.models.backbone.flow import (
    FlowModelConfig,
    SLatFlowModel,
    SparseStructureFlowModel,
    patchify,
    unpatchify,
)
from debias3d.models.backbone.generator import MiniTrellisGenerator
from debias3d.models.backbone.sampler import (
    SIGMA_MIN,
    FlowEulerGuidanceIntervalSampler,
    add_noise,
    drop_condition,
    sample_logit_normal_t,
    timestep_schedule,
    velocity_target,
)

D_TEXT = 8


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# --------------------------------------------------------------------------------- blocks
def test_lora_target_names_match_trellis():
    names = {
        n.split(".")[-1]
        for n, _ in SparseStructureFlowModel(
            FlowModelConfig(cond_channels=D_TEXT, model_channels=16, num_heads=2, num_blocks=1)
        ).named_modules()
    }
    assert {"to_qkv", "to_q", "to_kv", "to_out", "adaLN_modulation", "self_attn", "cross_attn"} <= names


def test_timestep_embedder_shape():
    assert TimestepEmbedder(24)(torch.tensor([0.0, 500.0, 1000.0])).shape == (3, 24)


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_attention_key_padding_is_ignored(kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, ctx_channels=8, type=kind)
    x = torch.randn(2, 5, 16)
    if kind == "self":
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        out = attn(x, mask=mask)
        ref = attn(x[:1, :3])
        torch.testing.assert_close(out[0, :3], ref[0], atol=1e-5, rtol=1e-5)
    else:
        ctx = torch.randn(2, 4, 8)
        mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
        out = attn(x, ctx, mask=mask)
        ref = attn(x[:1], ctx[:1, :2])
        torch.testing.assert_close(out[:1], ref, atol=1e-5, rtol=1e-5)


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 16, 16)
    p = patchify(x, 4)
    assert p.shape == (2, 64, 3 * 64)
    torch.testing.assert_close(unpatchify(p, 4, 3), x)


def test_stage1_shapes():
    m = SparseStructureFlowModel(
        FlowModelConfig(cond_channels=D_TEXT, model_channels=16, num_heads=2, num_blocks=1)
    )
    out = m(
        torch.randn(3, 1, 16, 16, 16),
        torch.rand(3) * 1000,
        torch.randn(3, 5, D_TEXT),
        torch.ones(3, 5, dtype=torch.bool),
    )
    assert out.shape == (3, 1, 16, 16, 16)


def test_stage2_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    m = SLatFlowModel(
        FlowModelConfig(
            in_channels=3, out_channels=3, cond_channels=D_TEXT, model_channels=16, num_heads=2, num_blocks=2
        )
    )
    _randomize(m)
    n = 7
    coords = torch.randint(0, 16, (1, n, 3))
    x = torch.randn(1, n, 3)
    cond = torch.randn(1, 4, D_TEXT)
    t = torch.tensor([300.0])
    ref = m(x, t, cond, None, coords=coords, mask=torch.ones(1, n, dtype=torch.bool))
    pad = 5
    xp = torch.cat([x, torch.randn(1, pad, 3) * 10], 1)
    cp = torch.cat([coords, torch.randint(0, 16, (1, pad, 3))], 1)
    mp = torch.cat([torch.ones(1, n, dtype=torch.bool), torch.zeros(1, pad, dtype=torch.bool)], 1)
    out = m(xp, t, cond, None, coords=cp, mask=mp)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(out[:, :n], ref, atol=1e-5, rtol=1e-5)
    assert out[:, n:].abs().max() == 0


# -------------------------------------------------------------------------------- sampler
def test_forward_process_and_velocity():
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = add_noise(x0, t, eps)
    expected = (1 - t)[:, None] * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * t)[:, None] * eps
    torch.testing.assert_close(xt, expected)
    torch.testing.assert_close(xt[0], x0[0] + SIGMA_MIN * eps[0])
    # v is dx_t/dt (finite difference)
    h = 1e-3
    t2 = torch.full((4,), 0.4, dtype=torch.float64)
    fd = (add_noise(x0.double(), t2 + h, eps.double()) - add_noise(x0.double(), t2 - h, eps.double())) / (
        2 * h
    )
    torch.testing.assert_close(fd, velocity_target(x0.double(), eps.double()))


def test_logit_normal_t_in_unit_interval():
    t = sample_logit_normal_t(10_000, 1.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert (t > 0).all() and (t < 1).all()
    assert abs(torch.logit(t).mean().item() - 1.0) < 0.05


def test_timestep_schedule_rescale():
    ts = timestep_schedule(4, 1.0)
    np.testing.assert_allclose(ts, [1, 0.75, 0.5, 0.25, 0])
    r = timestep_schedule(4, 3.0)
    assert r[0] == 1 and r[-1] == 0 and (np.diff(r) < 0).all()
    np.testing.assert_allclose(r[2], 3 * 0.5 / (1 + 2 * 0.5))


def test_euler_with_exact_velocity_recovers_x0():
    x0 = torch.randn(2, 5, dtype=torch.float64)

    def exact(x_t, t1000, cond, cond_mask):
        t = t1000[:, None].double() / 1000
        s = SIGMA_MIN + (1 - SIGMA_MIN) * t
        eps = (x_t - (1 - t) * x0) / s
        return (1 - SIGMA_MIN) * eps - x0

    noise = torch.randn(2, 5, dtype=torch.float64)
    cond = torch.zeros(1, 1, 1)
    out = FlowEulerGuidanceIntervalSampler().sample(exact, noise, cond, cond, steps=10, cfg_strength=0.0)
    torch.testing.assert_close(out.samples, x0, atol=1e-4, rtol=1e-4)


def test_cfg_applied_only_inside_interval():
    seen = []

    def model(x_t, t1000, cond, cond_mask):
        seen.append((float(t1000[0]) / 1000, x_t.shape[0]))
        return cond[:, 0, :1].expand(x_t.shape)

    s = FlowEulerGuidanceIntervalSampler()
    x = torch.zeros(3, 1)
    cond, neg = torch.full((1, 2, 1), 2.0), torch.full((1, 1, 1), 0.5)
    w = 3.0
    inside = s.guided_velocity(model, x, 0.5, cond, None, neg, None, w, (0.2, 0.8))
    torch.testing.assert_close(inside, torch.full((3, 1), (1 + w) * 2.0 - w * 0.5))
    outside = s.guided_velocity(model, x, 0.9, cond, None, neg, None, w, (0.2, 0.8))
    torch.testing.assert_close(outside, torch.full((3, 1), 2.0))
    assert seen == [(0.5, 6), (0.9, 3)]  # guided steps run one batched forward of 2B


def test_drop_condition_uses_null():
    cond = torch.ones(3, 4, 2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    null, null_mask = torch.full((1, 2, 2), 7.0), torch.ones(1, 2, dtype=torch.bool)
    c, m = drop_condition(cond, mask, null, null_mask, torch.tensor([False, True, False]))
    assert (c[1, :2] == 7).all() and m[1].tolist() == [True, True, False, False]
    assert (c[0] == 1).all() and m[0].all()


# ------------------------------------------------------------------------------ generator
def test_generate_returns_assets_with_meshes(tiny_generator, tmp_path):
    from debias3d.models.backbone.decoder import export_mesh

    assets = tiny_generator.generate(["a red vase", "two blue cups"], seeds=[0, 5], num_samples=2)
    assert len(assets) == 4
    assert [a.prompt for a in assets] == ["a red vase"] * 2 + ["two blue cups"] * 2
    assert [a.metadata["sample"] for a in assets] == [0, 1, 0, 1]
    for a in assets:
        assert isinstance(a, Asset) and isinstance(a.mesh, trimesh.Trimesh)
        assert a.voxels.occupancy.any() and len(a.mesh.faces) > 0
        assert a.voxels.colors.min() >= 0 and a.voxels.colors.max() <= 1
    for fmt in ("glb", "obj", "ply"):
        p = export_mesh(assets[0].mesh, tmp_path / "m", fmt)
        assert p.suffix == f".{fmt}" and p.stat().st_size > 0


def test_generate_reproducible_regardless_of_batching(tiny_generator):
    prompts = ["a red vase", "a tall green tree next to a box", "a cup"]
    a = tiny_generator.generate(prompts, seeds=[1, 2, 3], num_samples=2, batch_size=6)
    b = tiny_generator.generate(prompts[1:2], seeds=[2], num_samples=2, batch_size=1)
    for x, y in zip(a[2:4], b, strict=True):
        np.testing.assert_array_equal(x.voxels.occupancy, y.voxels.occupancy)
        np.testing.assert_allclose(x.voxels.colors, y.voxels.colors, atol=1e-4)
    # different samples of one prompt differ
    assert not np.array_equal(a[0].voxels.occupancy, a[1].voxels.occupancy)


def test_generate_encodes_each_prompt_once(tiny_generator, monkeypatch):
    calls = []
    enc = tiny_generator.text_encoder
    orig = enc.tokenize

    def spy(prompts):
        calls.append(list(prompts))
        return orig(prompts)

    monkeypatch.setattr(enc, "tokenize", spy)
    enc._cache.clear()
    enc._null = None
    tiny_generator.generate(["a red vase", "a red vase", "a cup"], seeds=0, num_samples=3, batch_size=2)
    assert sorted(p for c in calls for p in c) == sorted(["a red vase", "a cup", ""])


def test_flow_models_and_bad_args(tiny_generator):
    assert set(tiny_generator.flow_models) == {"stage1", "stage2"}
    with pytest.raises(ValueError, match="seeds"):
        tiny_generator.generate(["a", "b"], seeds=[1])
    with pytest.raises(ValueError, match="cfg_interval"):
        tiny_generator.generate(["a"], sparse_structure_sampler_params={"cfg_interval": [0.8, 0.2]})


def test_save_and_load_pretrained_roundtrip(tiny_generator, tiny_encoder, tmp_path):
    tiny_generator.save_pretrained(tmp_path / "w")
    loaded = MiniTrellisGenerator.from_pretrained(tmp_path / "w", text_encoder=tiny_encoder)
    a = tiny_generator.generate(["a red vase"], seeds=[3])[0]
    b = loaded.generate(["a red vase"], seeds=[3])[0]
    np.testing.assert_array_equal(a.voxels.occupancy, b.voxels.occupancy)
    with pytest.raises(FileNotFoundError):
        MiniTrellisGenerator.from_pretrained(tmp_path / "missing", text_encoder=tiny_encoder)


def test_length_buckets_respect_token_budget():
    from debias3d.models.backbone.generator import _length_buckets

    lengths = [5, 100, 7, 300, 90, 6]
    groups = _length_buckets(lengths, tokens=200)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) * max(lengths[i] for i in g) <= 200 or len(g) == 1 for g in groups)
    assert groups[0] == [0, 5, 2]


def test_small_stage2_budget_gives_same_assets(tiny_generator):
    a = tiny_generator.generate(["a red vase", "a cup"], seeds=[1, 2], num_samples=2)
    tiny_generator.stage2_tokens_per_batch = 1  # every item alone
    b = tiny_generator.generate(["a red vase", "a cup"], seeds=[1, 2], num_samples=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.voxels.colors, y.voxels.colors, atol=1e-4)


def test_generate_command_records_voxels_and_warns_on_empty_samples(
    tiny_generator, tmp_path, monkeypatch, caplog
):
    import json
    import logging

    from debias3d.models.backbone import cli

    class Emptying:
        def generate(self, texts, **kw):
            assets = tiny_generator.generate(texts, seeds=kw["seeds"], num_samples=kw["num_samples"])
            occ = assets[1].voxels.occupancy
            occ[...] = False
            occ[0, 0, 0] = True  # one voxel: the generator "produced nothing"
            return assets

    monkeypatch.setattr(cli, "build_generator", lambda *a, **k: Emptying())
    with caplog.at_level(logging.WARNING, logger=cli.__name__):
        paths = cli.generate_command(["a red vase"], tmp_path, samples=2)
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(paths) == 2 and rows[1]["voxels"] == 1 and rows[0]["voxels"] >= cli.MIN_VOXELS
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "0000_1.glb" in warned[0] and "'a red vase'" in warned[0]


@pytest.mark.parametrize("prompts", [[""], ["a red vase", "   "]])
def test_generate_command_rejects_empty_prompts_before_loading(prompts, tmp_path, monkeypatch):
    from debias3d.models.backbone import cli

    def never(*a, **k):
        raise AssertionError("the generator must not be loaded for a bad prompt")

    monkeypatch.setattr(cli, "build_generator", never)
    with pytest.raises(ValueError, match=rf"prompt {len(prompts)} of {len(prompts)} is empty"):
        cli.generate_command(prompts, tmp_path)
    assert not (tmp_path / "manifest.jsonl").exists()


def test_generate_command_takes_a_prompt_too_long_for_a_path_and_warns(tiny_generator, monkeypatch, caplog):
    """A prompt of 2,000 words is not mistaken for a file name (no OSError); the cut is logged."""
    import logging

    from debias3d.models.backbone import cli

    long_prompt = "red " * 2000
    monkeypatch.setattr(tiny_generator.text_encoder, "max_length", 32)  # the encoder is session-wide
    with caplog.at_level(logging.WARNING, logger=cli.__name__):
        cli._warn_truncated([long_prompt, "a red vase"], tiny_generator)
    assert cli._read_prompts([long_prompt]) == [long_prompt]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "prompt 1 (" in warned[0] and "only the first 32" in warned[0]
