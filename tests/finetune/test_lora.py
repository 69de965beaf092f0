"""LoRA glue: target resolution and its errors, adapter reload / merge to identical outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from debias3d.finetune.config import DataSettings, FinetuneConfig, LoraSettings, TrainSettings
from debias3d.finetune.lora import (
    flow_container,
    lora_parameters,
    resolve_targets,
    target_regex,
)


def _inputs(gen, seed: int = 0):
    """Fixed inputs of both stages: stage 1 ``(2, 1, R, R, R)``, stage 2 ``(2, 5, 3)``."""
    g = torch.Generator().manual_seed(seed)
    r = gen.stage1.resolution
    cond = torch.randn(2, 4, 384, generator=g)
    x1 = torch.randn(2, 1, r, r, r, generator=g)
    x2 = torch.randn(2, 5, 3, generator=g)
    coords = torch.randint(0, r, (2, 5, 3), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    t = torch.tensor([250.0, 750.0])
    return (x1, t, cond, None), (x2, t, cond, None, coords, mask)


@torch.no_grad()
def _outputs(gen) -> list[torch.Tensor]:
    a, b = _inputs(gen)
    return [gen.stage1(*a), gen.stage2(*b[:4], coords=b[4], mask=b[5])]


TARGET_CASES = [
    # (stages, targets, expected number of LoRA-wrapped modules in the tiny model: 1 block per stage,
    # 5 attention linears per block: self to_qkv, to_out; cross to_q, to_kv, to_out)
    (("stage1", "stage2"), ("to_qkv", "to_q", "to_kv", "to_out"), 10),
    (("stage1",), ("to_qkv", "to_q", "to_kv", "to_out"), 5),
    (("stage2",), ("to_q",), 1),
    (("stage1", "stage2"), ("to_out",), 4),
]


@pytest.mark.parametrize("stages,targets,n", TARGET_CASES)
def test_resolve_targets(tiny_gen_loader, stages, targets, n):
    names = resolve_targets(flow_container(tiny_gen_loader()), stages, targets)
    assert len(names) == n
    assert all(name.split(".")[0] in stages and name.rsplit(".", 1)[-1] in targets for name in names)


def test_target_regex_is_exact():
    import re

    rx = target_regex(["stage1"], ["to_q"])
    assert re.fullmatch(rx, "stage1.blocks.0.cross_attn.to_q")
    assert not re.fullmatch(rx, "stage1.blocks.0.cross_attn.to_qkv")
    assert not re.fullmatch(rx, "stage2.blocks.0.cross_attn.to_q")


def test_targets_matching_nothing_list_linear_names(tiny_gen_loader):
    with pytest.raises(ValueError) as e:
        resolve_targets(flow_container(tiny_gen_loader()), ["stage1", "stage2"], ["q_proj", "v_proj"])
    msg = str(e.value)
    assert "match no module" in msg and "\n" not in msg
    for name in ("to_qkv", "to_q", "to_kv", "to_out", "input_layer", "out_layer"):
        assert name in msg


def test_unknown_stage(tiny_gen_loader):
    with pytest.raises(ValueError, match="not in the generator's flow models"):
        resolve_targets(flow_container(tiny_gen_loader()), ["stage3"], ["to_q"])


class QuantLinear(nn.Linear):
    """An nn.Linear subclass with its own forward that is not TRELLIS's SparseLinear."""

    def forward(self, input):  # noqa: A002
        return super().forward(input.dequantize())


def test_linear_subclasses_other_than_sparse_linear_are_refused():
    container = nn.ModuleDict({"stage2": nn.Sequential()})
    container["stage2"].add_module("to_out", QuantLinear(4, 4))
    with pytest.raises(ValueError, match="QuantLinear") as e:
        resolve_targets(container, ["stage2"], ["to_out"])
    assert "SparseLinear" in str(e.value) and "\n" not in str(e.value)


def _two_steps(tiny_world) -> FinetuneConfig:
    """A 2-step rank-4 run of the tiny world's base model on its pairs (no replay)."""
    train = TrainSettings(max_train_steps=2, train_batch_size=2, lr_warmup_steps=0, learning_rate=1e-2,
                          checkpointing_steps=100)  # fmt: skip
    return FinetuneConfig(generator_weights=str(tiny_world["base"]), lora=LoraSettings(rank=4), train=train,
                          data=DataSettings(pairs=str(tiny_world["pairs"]), replay_share=0.0))  # fmt: skip


def test_adapter_reloads_and_merges_to_identical_outputs(tiny_world, tiny_gen_loader, tmp_path):
    """In-process 2-step run, then: reload (unmerged) == trained model; merged == unmerged;
    merged safetensors reload == merged; base weights untouched by training."""
    from debias3d.finetune.trainer import finetune
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    base_gen = tiny_gen_loader()
    base_state = {k: v.clone() for k, v in base_gen.state_dict().items()}
    base_out = _outputs(base_gen)
    cfg = _two_steps(tiny_world)
    trained_gen = tiny_gen_loader()
    res = finetune(cfg, tmp_path / "ft", generator=trained_gen)
    assert (tmp_path / "ft" / "adapter_config.json").is_file()
    assert (tmp_path / "ft" / "adapter_model.safetensors").is_file()
    trained_out = _outputs(trained_gen)
    assert not torch.allclose(trained_out[0], base_out[0])

    # base weights of the trained generator are bit-identical (LoRA lives beside them)
    lora_names = set(lora_parameters(res.model))
    assert lora_names
    for name, p in res.model.named_parameters():
        if name not in lora_names:
            assert not p.requires_grad, name

    reloaded = tiny_gen_loader().load_adapter(tmp_path / "ft", merge=False)
    for a, b in zip(_outputs(reloaded), trained_out, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    merged = tiny_gen_loader().load_adapter(tmp_path / "ft", merge=True)
    for a, b in zip(_outputs(merged), trained_out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    merged_dir = tiny_gen_loader().load_adapter(tmp_path / "ft").merge_adapter(tmp_path / "merged")
    from_disk = MiniTrellisGenerator.from_pretrained(merged_dir, text_encoder=base_gen.text_encoder)
    for a, b in zip(_outputs(from_disk), trained_out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the untouched loader still gives the base weights
    for k, v in tiny_gen_loader().state_dict().items():
        assert torch.equal(v, base_state[k]), k


def test_load_adapter_rejects_non_adapter_folder(tiny_gen_loader, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder"):
        tiny_gen_loader().load_adapter(tmp_path)


def test_same_adapter_whether_the_generator_is_passed_in_or_loaded(tiny_world, tiny_gen_loader, tmp_path):
    """LoRA's initial weights come from ``train.seed`` alone, not from how the generator was built.

    ``debias3d finetune`` loads the generator inside the trainer (module construction draws from the
    global RNG after the seed is set); the demo passes an already-built one. Both must train the
    same adapter from the same config.
    """
    from safetensors.torch import load_file

    from debias3d.finetune.trainer import finetune

    cfg = _two_steps(tiny_world)
    finetune(cfg, tmp_path / "passed", generator=tiny_gen_loader())
    finetune(cfg, tmp_path / "loaded")  # the trainer loads generator_weights itself
    a = load_file(str(tmp_path / "passed" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "loaded" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and any(".lora_A." in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
