"""``generator: trellis`` fine-tuning glue, against a fake ``trellis`` package (tests/finetune/fake_trellis.py):
latent loader (skips and counts), LoRA targets (SparseLinear refused), a few in-process steps through
the real entry (``build_generator`` → ``TrellisGenerator``), base bit-identical, adapter reload."""

from __future__ import annotations

import fake_trellis as ft
import pytest
import torch

from debias3d.finetune.config import DataSettings, FinetuneConfig, LoraSettings, TrainSettings
from debias3d.finetune.data import DataError


@pytest.fixture()
def fake_trellis(tmp_path, monkeypatch):
    ft.drop_trellis_modules()
    # the fake has no flash-attn / xformers dependency; an explicit backend skips the adapter's check
    monkeypatch.setenv("ATTN_BACKEND", "sdpa")
    monkeypatch.setenv("SPARSE_ATTN_BACKEND", "flash_attn")
    monkeypatch.syspath_prepend(str(ft.build_fake_trellis(tmp_path / "fake_src")))
    yield ft.write_weights(tmp_path / "weights")
    ft.drop_trellis_modules()


def _trellis(folder):
    """The TRELLIS backend on CPU, built as every stage builds it."""
    from debias3d.models.generator import GeneratorSpec, build_generator

    return build_generator(GeneratorSpec("trellis", str(folder), "cpu"))


def _cfg(tmp_path, weights, latents, **train) -> FinetuneConfig:
    return FinetuneConfig(
        generator="trellis",
        generator_weights=str(weights),
        lora=LoraSettings(rank=4, alpha=8),
        data=DataSettings(latents=str(latents)),
        train=TrainSettings(
            **{
                "seed": 2,
                "max_train_steps": 3,
                "train_batch_size": 2,
                "learning_rate": 5e-3,
                "lr_warmup_steps": 0,
                "lr_scheduler": "constant",
                "checkpointing_steps": 100,
                "num_threads": 1,
                **train,
            }
        ),  # fmt: skip
    )


def test_latent_set_skips_and_counts(fake_trellis, tmp_path):
    from debias3d.finetune.trellis_latents import build_trellis_latent_set

    lat = ft.write_latents(
        tmp_path / "lat", n=6, broken={1: "missing_ss", 2: "garbage_slat", 3: "bad_shape", 4: "no_captions"}
    )
    flows = _trellis(fake_trellis).flow_models
    ts = build_trellis_latent_set(DataSettings(latents=str(lat)), ("stage1", "stage2"), flows)
    assert len(ts) == 2 and ts.sha256 == [f"{0:064x}", f"{5:064x}"]
    assert ts.stats["skipped"] == {
        "missing_ss_latent": 1,
        "broken_slat": 1,
        "broken_ss_latent": 1,
        "no_captions": 1,
    }
    # stage 2 only: the missing / malformed stage-1 latents do not matter
    ts2 = build_trellis_latent_set(DataSettings(latents=str(lat)), ("stage2",), flows)
    assert len(ts2) == 4 and set(ts2.paths) == {"stage2"}

    empty = ft.write_latents(tmp_path / "empty", n=2, broken={0: "missing_ss", 1: "no_captions"})
    with pytest.raises(DataError, match="no usable TRELLIS latents") as e:
        build_trellis_latent_set(DataSettings(latents=str(empty)), ("stage1", "stage2"), flows)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="not found"):
        build_trellis_latent_set(DataSettings(latents=str(tmp_path / "nope")), ("stage1",), flows)


def test_targets_attention_and_sparse_mlps(fake_trellis):
    from debias3d.finetune.lora import flow_container, resolve_targets

    box = flow_container(_trellis(fake_trellis))
    names = resolve_targets(box, ("stage1", "stage2"), LoraSettings().target_modules)
    assert len(names) == 10 and all(
        n.rsplit(".", 1)[-1] in {"to_qkv", "to_q", "to_kv", "to_out"} for n in names
    )
    mlps = resolve_targets(box, ("stage1", "stage2"), ("mlp.mlp.0", "mlp.mlp.2"))
    assert sorted(mlps) == [f"{s}.blocks.0.mlp.mlp.{i}" for s in ("stage1", "stage2") for i in (0, 2)]
    assert type(dict(box.named_modules())["stage2.blocks.0.mlp.mlp.0"]).__name__ == "SparseLinear"


def _inputs():
    from trellis.modules.sparse import SparseTensor

    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 8, 16, 16, 16, generator=g)
    coords = torch.cat(
        [torch.tensor([[0]] * 5 + [[1]] * 4), torch.randint(0, 64, (9, 3), generator=g)], 1
    ).int()
    x2 = SparseTensor(feats=torch.randn(9, 8, generator=g), coords=coords)
    return x1, x2, torch.tensor([300.0, 800.0]), torch.randn(2, 77, 16, generator=g)


@torch.no_grad()
def _outputs(flows) -> list[torch.Tensor]:
    x1, x2, t, cond = _inputs()
    return [flows["stage1"](x1, t, cond), flows["stage2"](x2, t, cond).feats]


def test_trellis_finetune_glue(fake_trellis, tmp_path):
    from accelerate.utils import set_seed

    from debias3d.finetune.lora import add_lora, lora_parameters
    from debias3d.finetune.trainer import finetune

    lat = ft.write_latents(tmp_path / "lat", n=5, broken={4: "garbage_slat"})
    cfg = _cfg(tmp_path, fake_trellis, lat)
    res = finetune(cfg, tmp_path / "ft")
    assert res.global_step == 3 and len(res.losses) == 3
    assert all(torch.isfinite(torch.tensor(v)) for _, v in res.losses)
    assert res.stats["pairs_used"] == 4 and res.stats["skipped"] == {"broken_slat": 1}
    out = tmp_path / "ft"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()

    # the same initial adapter as the run (same seed, same order of RNG use)
    set_seed(cfg.train.seed)
    init = add_lora(_trellis(fake_trellis), cfg.lora)
    before = {k: v.detach().clone() for k, v in lora_parameters(init).items()}
    after = lora_parameters(res.model)
    assert set(before) == set(after) and len(after) == 20
    unchanged = [k for k in after if torch.equal(before[k], after[k].detach().cpu())]
    assert not unchanged, unchanged

    fresh = _trellis(fake_trellis)
    base = {f"{s}.{n}": p for s, m in fresh.flow_models.items() for n, p in m.named_parameters()}
    trained = {
        n.replace(".base_layer", ""): p
        for n, p in res.model.get_base_model().named_parameters()
        if "lora_" not in n
    }
    assert set(trained) == set(base)
    assert all(torch.equal(trained[k].detach().cpu(), base[k]) for k in base)

    res.model.eval()
    want = _outputs(res.model.get_base_model())
    assert not all(torch.equal(a, b) for a, b in zip(want, _outputs(fresh.flow_models), strict=True))
    fresh.load_adapter(out, merge=False)
    got = _outputs(fresh.flow_models)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_cli_trellis_empty_latents_one_line(fake_trellis, tmp_path, capsys):
    import yaml

    from debias3d.finetune.__main__ import main

    lat = ft.write_latents(tmp_path / "lat", n=1, broken={0: "no_captions"})
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"generator": "trellis", "generator_weights": str(fake_trellis),
                                    "data": {"latents": str(lat)}}))  # fmt: skip
    assert main(["--config", str(conf), "--out", str(tmp_path / "o")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()  # log lines, then the one error line
    assert lines[-1].startswith("error: no usable TRELLIS latents")
    assert [x for x in lines if x.startswith("error")] == lines[-1:] and "Traceback" not in "".join(lines)
