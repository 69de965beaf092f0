"""LoRA fine-tuning against the REAL TRELLIS flow models (microsoft/TRELLIS @6b0d647 from
``../shared/third_party``; tiny configs, fp16 blocks as in the released models): LoRA targets
(attention + the stage-2 ``SparseLinear`` MLPs), the latent loss, training steps with fp16 blocks
(GradScaler), bf16 as DeepSpeed runs it, adapter save → reload → merge → TRELLIS-format load."""

from __future__ import annotations

import json

import fake_trellis as ft
import pytest
import real_trellis as rt
import torch

from debias3d.finetune.config import DataSettings, FinetuneConfig, LoraSettings, TrainSettings

ALL_TARGETS = ("to_qkv", "to_q", "to_kv", "to_out", "mlp.mlp.0", "mlp.mlp.2")


@pytest.fixture()
def base_dir(monkeypatch, tmp_path):
    rt.install(monkeypatch)
    base = rt.write_pipeline_folder(tmp_path / "base")
    rt.load_text_pipeline(base, monkeypatch)  # patches .cuda / open3d for the whole test
    yield base
    rt.drop_modules()


def _pipeline(path):
    import importlib

    return importlib.import_module(
        "trellis.pipelines.trellis_text_to_3d"
    ).TrellisTextTo3DPipeline.from_pretrained(str(path))


def _gen(base_dir):
    """The adapter around the real ``TrellisTextTo3DPipeline`` (real CLIP ``encode_text``)."""
    from debias3d.models.trellis import TrellisGenerator

    return TrellisGenerator(base_dir, pipeline=_pipeline(base_dir), device="cpu")


def _inputs():
    from trellis.modules.sparse import SparseTensor

    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 8, 8, 8, 8, generator=g)
    coords = torch.cat([torch.tensor([[0]] * 6 + [[1]] * 5), torch.randint(0, 64, (11, 3), generator=g)], 1)
    x2 = SparseTensor(feats=torch.randn(11, 8, generator=g), coords=coords.int())
    return x1, x2, torch.tensor([300.0, 800.0]), torch.randn(2, 77, 16, generator=g)


@torch.no_grad()
def _outputs(flows) -> list[torch.Tensor]:
    x1, x2, t, cond = _inputs()
    return [flows["stage1"](x1, t, cond).float(), flows["stage2"](x2, t, cond).feats.float()]


def _cfg(base_dir, latents, **train) -> FinetuneConfig:
    return FinetuneConfig(
        generator="trellis",
        generator_weights=str(base_dir),
        lora=LoraSettings(rank=4, alpha=8, target_modules=ALL_TARGETS),
        data=DataSettings(latents=str(latents)),
        train=TrainSettings(
            **{"seed": 2, "max_train_steps": 3, "train_batch_size": 2, "learning_rate": 5e-3,
               "lr_warmup_steps": 0, "lr_scheduler": "constant", "checkpointing_steps": 100,
               "num_threads": 1, **train}
        ),
    )  # fmt: skip


def test_lora_targets_include_sparse_mlps(base_dir):
    from peft.tuners.lora import Linear as LoraLinear

    from debias3d.finetune.lora import add_lora, flow_container, resolve_targets
    from debias3d.models.sparse_lora import SparseLoraLinear

    gen = _gen(base_dir)
    box = flow_container(gen)
    names = resolve_targets(box, ("stage1", "stage2"), ALL_TARGETS)
    assert len(names) == 2 * 2 * 7  # stages × blocks × (5 attention linears + 2 MLP linears)
    assert not any("t_embedder" in n for n in names)  # "mlp.mlp.0" is not the time embedder's mlp.0
    modules = dict(box.named_modules())
    assert {type(modules[n]).__name__ for n in names if n.startswith("stage2.") and ".mlp.mlp." in n} == {
        "SparseLinear"
    }
    model = add_lora(gen, LoraSettings(rank=4, target_modules=ALL_TARGETS))
    wrapped = dict(model.get_base_model().named_modules())
    assert isinstance(wrapped["stage2.blocks.0.mlp.mlp.0"], SparseLoraLinear)
    assert isinstance(wrapped["stage1.blocks.0.mlp.mlp.0"], LoraLinear)
    assert not isinstance(wrapped["stage1.blocks.0.mlp.mlp.0"], SparseLoraLinear)
    # fp16 blocks stay fp16; the trained path (LoRA) is fp32
    layer = wrapped["stage2.blocks.1.mlp.mlp.2"]
    assert layer.base_layer.weight.dtype == torch.float16
    assert layer.lora_A["default"].weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


def test_stock_peft_cannot_run_sparse_linear(base_dir):
    """Why the custom layer exists: peft's own Linear wrapper fails on TRELLIS's SparseLinear."""
    from peft import LoraConfig, get_peft_model

    from debias3d.finetune.lora import flow_container

    box = flow_container(_gen(base_dir))
    stock = get_peft_model(box, LoraConfig(r=2, target_modules=r"stage2\.blocks\.0\.mlp\.mlp\.0"))
    with pytest.raises((AttributeError, TypeError)):
        _outputs(stock.get_base_model())


def test_sparse_lora_forward_equals_merged_weights(base_dir):
    from debias3d.finetune.lora import add_lora

    gen = _gen(base_dir)
    for m in gen.flow_models.values():
        m.convert_to_fp32()  # exact comparison: fp32 blocks
        m.dtype = torch.float32
    model = add_lora(gen, LoraSettings(rank=4, target_modules=("mlp.mlp.0", "mlp.mlp.2"), stages=("stage2",)))
    before = _outputs(gen.flow_models)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.2)
    unmerged = _outputs(gen.flow_models)
    assert not torch.allclose(unmerged[1], before[1], atol=1e-4)  # the adapter acts on the sparse MLPs
    torch.testing.assert_close(unmerged[0], before[0])  # stage 1 untouched
    model.merge_and_unload()
    torch.testing.assert_close(_outputs(gen.flow_models)[1], unmerged[1], atol=1e-5, rtol=1e-5)


def test_latent_loss_bf16_as_deepspeed_runs_it(base_dir, tmp_path):
    """DeepSpeed bf16 casts the whole module to bf16 and applies no autocast: the fp32 latents then
    fail in TRELLIS's input layer (the dtype error); the objective's autocast makes it train."""
    from debias3d.finetune.lora import add_lora, lora_parameters
    from debias3d.finetune.precision import keep_norms_fp32, set_half_dtype
    from debias3d.finetune.trainer import FlowMatchingObjective
    from debias3d.finetune.trellis_latents import TrellisLatentLoss, build_trellis_latent_set

    gen = _gen(base_dir)
    lat = ft.write_latents(tmp_path / "lat", n=2, ss_res=8)
    data = build_trellis_latent_set(DataSettings(latents=str(lat)), ("stage1", "stage2"), gen.flow_models)
    model = add_lora(gen, LoraSettings(rank=4, target_modules=ALL_TARGETS))
    set_half_dtype(gen.flow_models, torch.bfloat16)
    model.to(torch.bfloat16)  # what DeepSpeed's bf16 engine does to the module it wraps
    assert keep_norms_fp32(model) > 0  # what the trainer does after prepare
    loss = TrellisLatentLoss(data, gen, TrainSettings(p_uncond=0.0))
    rows = torch.tensor([0, 1])
    plain = FlowMatchingObjective(model, loss, {"stage1": 1.0, "stage2": 1.0})
    with pytest.raises(RuntimeError, match="dtype"):
        plain(rows, seed=3)
    obj = FlowMatchingObjective(model, loss, {"stage1": 1.0, "stage2": 1.0}, autocast_dtype=torch.bfloat16)
    out = obj(rows, seed=3)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for n, p in lora_parameters(model).items() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    # B starts at zero, so A's gradient is zero at step 0; B's gradient must not be
    assert all(p.grad.abs().sum() > 0 for n, p in lora_parameters(model).items() if "lora_B" in n)


def test_train_fp16_blocks_save_reload_merge_trellis_format(base_dir, tmp_path):
    import importlib

    from accelerate.utils import set_seed

    from debias3d.finetune.lora import add_lora, lora_parameters
    from debias3d.finetune.trainer import finetune

    lat = ft.write_latents(tmp_path / "lat", n=4, ss_res=8)
    cfg = _cfg(base_dir, lat)
    res = finetune(cfg, tmp_path / "ft", generator=_gen(base_dir))
    summary = json.loads((tmp_path / "ft" / "finetune_summary.json").read_text())
    assert summary["grad_scaler"] is True  # fp16 blocks, no mixed precision: loss scaling
    assert res.global_step == 3 and all(torch.isfinite(torch.tensor(v)) for _, v in res.losses)

    set_seed(cfg.train.seed)
    init = {k: v.detach().clone() for k, v in lora_parameters(add_lora(_gen(base_dir), cfg.lora)).items()}
    after = lora_parameters(res.model)
    assert set(init) == set(after) and len(after) == 2 * 28
    unchanged = [k for k in after if torch.equal(init[k], after[k].detach())]
    assert not unchanged, unchanged[:4]
    base_state = {
        f"{s}.{n}": p for s, m in _gen(base_dir).flow_models.items() for n, p in m.named_parameters()
    }
    trained = {
        n.replace(".base_layer", ""): p
        for n, p in res.model.get_base_model().named_parameters()
        if "lora_" not in n
    }
    assert set(trained) == set(base_state)
    assert all(torch.equal(trained[k].detach(), base_state[k]) for k in base_state)  # base untouched
    assert trained["stage2.blocks.0.mlp.mlp.0.weight"].dtype == torch.float16

    res.model.eval()
    want = _outputs(res.model.get_base_model())
    fresh = _gen(base_dir)
    assert not all(torch.equal(a, b) for a, b in zip(want, _outputs(fresh.flow_models), strict=True))
    fresh.load_adapter(tmp_path / "ft", merge=False)
    for a, b in zip(want, _outputs(fresh.flow_models), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    merged = _gen(base_dir).load_adapter(tmp_path / "ft").merge_adapter(tmp_path / "merged")
    pipe = json.loads((merged / "pipeline.json").read_text())["args"]
    assert pipe["models"] == {
        "sparse_structure_flow_model": "ckpts/ss_flow_tiny_fp16",
        "slat_flow_model": "ckpts/slat_flow_tiny_fp16",
        "sparse_structure_decoder": str((base_dir / "ckpts" / "ss_dec_tiny").resolve()),  # from the base
    }
    assert json.loads((merged / "merge_record.json").read_text())["merged_from"] == str(tmp_path / "ft")
    # the generator contract, adapter loaded unmerged then merged on write: the same files
    from safetensors.torch import load_file

    merged2 = _gen(base_dir).load_adapter(tmp_path / "ft", merge=False).merge_adapter(tmp_path / "merged2")
    for name in ("ss_flow_tiny_fp16", "slat_flow_tiny_fp16"):
        a, b = (load_file(str(d / "ckpts" / f"{name}.safetensors")) for d in (merged, merged2))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (merged / "ckpts").iterdir()) == [
        "slat_flow_tiny_fp16.json", "slat_flow_tiny_fp16.safetensors",
        "ss_flow_tiny_fp16.json", "ss_flow_tiny_fp16.safetensors",
    ]  # fmt: skip
    models = importlib.import_module("trellis.models")
    loaded = {
        "stage1": models.from_pretrained(str(merged / "ckpts" / "ss_flow_tiny_fp16")).eval(),
        "stage2": models.from_pretrained(str(merged / "ckpts" / "slat_flow_tiny_fp16")).eval(),
    }
    assert loaded["stage2"].blocks[0].mlp.mlp[0].weight.dtype == torch.float16  # use_fp16 kept
    for a, b in zip(want, _outputs(loaded), strict=True):
        torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)  # merged into fp16 weights
    # TRELLIS's text pipeline loads the merged folder (pipeline.json → ckpts/<name>, samplers, CLIP)
    pipe = _pipeline(merged)
    again = {"stage1": pipe.models["sparse_structure_flow_model"], "stage2": pipe.models["slat_flow_model"]}
    for a, b in zip(_outputs(loaded), _outputs(again), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert pipe.encode_text(["a red vase"]).shape == (1, 77, 16)
    assert type(pipe.models["sparse_structure_decoder"]).__name__ == "SparseStructureDecoder"
