"""Mini-TRELLIS training: config validation, a step changes parameters, exact resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from debias3d.models.backbone.train import BackboneTrainConfig, export_pretrained, train_backbone


def _tiny_cfg(bert_dir, **kw) -> BackboneTrainConfig:
    base = dict(
        text_encoder_path=str(bert_dir), stage1_channels=16, stage1_blocks=1, stage1_heads=2,
        stage2_channels=16, stage2_blocks=1, stage2_heads=2, stage1_steps=4, stage2_steps=4,
        batch_size=4, stage2_batch_size=4, stage2_max_voxels=32, warmup_steps=1, checkpoint_every=2,
        keep_checkpoints=5, log_every=1,
    )  # fmt: skip
    base.update(kw)
    return BackboneTrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_corpus():
    from datasets import Dataset

    rng = np.random.default_rng(0)
    n = 8
    occ = np.zeros((n, 16, 16, 16), np.uint8)
    for i in range(n):
        h = 3 + i
        occ[i, 6:10, 6:10, :h] = 1
    col = rng.integers(0, 255, (n, 16, 16, 16, 3)).astype(np.uint8) * occ[..., None]
    prompts = [f"a {'tall ' if i % 2 else ''}{c} vase" for i, c in enumerate(["red", "blue"] * 4)]
    return Dataset.from_dict({"prompt": prompts, "occupancy": list(occ), "colors": list(col)})


@pytest.mark.parametrize(
    "bad, match",
    [({"stages": ["stage3"]}, "stages"), ({"p_uncond": 1.5}, "p_uncond"), ({"stage1_heads": 5}, "stage1_heads"),
     ({"patch_size": 5}, "patch_size"), ({"batch_size": 0}, "batch_size"), ({"mixed_precision": "fp8"}, "mixed_precision")],
)  # fmt: skip
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        BackboneTrainConfig(**bad)


def test_config_fields_have_help():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(BackboneTrainConfig))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_one_step_changes_params(stage, tiny_corpus, tiny_encoder, tiny_bert_dir):
    from debias3d.models.backbone.flow import SLatFlowModel, SparseStructureFlowModel
    from debias3d.models.backbone.train import TextFeatureTable, load_corpus, stage_loss

    cfg = _tiny_cfg(tiny_bert_dir)
    mcfg = cfg.model_config(tiny_encoder.dim)
    model = SparseStructureFlowModel(mcfg.stage1) if stage == "stage1" else SLatFlowModel(mcfg.stage2)
    data = load_corpus(tiny_corpus)
    text = TextFeatureTable(tiny_encoder, data["prompts"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = stage_loss(
        stage, model, torch.arange(4), data, text, cfg, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("out_layer" in k for k in changed) and any("to_qkv" in k for k in changed)


def test_train_resume_is_exact_and_exports(tiny_corpus, tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file

    from debias3d.models.backbone.generator import MiniTrellisGenerator

    cfg = _tiny_cfg(tiny_bert_dir)
    run = train_backbone(cfg, tiny_corpus, tmp_path / "a")
    full = {s: load_file(str(run / f"{s}.safetensors")) for s in ("stage1", "stage2")}
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "stage1"] == [1, 2, 3, 4]
    rec = json.loads((run / "training_record.json").read_text())
    assert rec["stages"]["stage1"]["steps"] == 4 and rec["corpus"]["word_counts"]["counts"]["red"] == 4

    # "kill" after step 2: drop the later checkpoints and outputs, then resume
    for s in ("stage1", "stage2"):
        shutil.rmtree(run / "checkpoints" / s / "step_4")
        (run / f"{s}.safetensors").unlink()
    train_backbone(cfg, tiny_corpus, run)
    rec = json.loads((run / "training_record.json").read_text())
    assert rec["stages"]["stage2"]["resumed_from"] == 2
    for s in ("stage1", "stage2"):
        resumed = load_file(str(run / f"{s}.safetensors"))
        for k, v in full[s].items():
            torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)

    gen = MiniTrellisGenerator.from_pretrained(export_pretrained(run, tmp_path / "final", "float16"))
    assert gen.metadata["training_record"]["seed"] == 0
    assets = gen.generate(["a tall red vase"], seeds=[0], num_samples=1, steps=2)
    assert assets[0].voxels.occupancy.any()


def test_weight_ema_average_and_warmup():
    from debias3d.models.backbone.train import WeightEMA

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, rate=0.5)
    assert ema.decay() == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # 0.1 * 0 + 0.9 * 1
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9))
    for _ in range(20):
        ema.update(model)
    assert ema.decay() == 0.5  # capped at the rate
    torch.testing.assert_close(
        ema.state_dict(model.state_dict())["weight"], torch.ones(1, 2), atol=1e-4, rtol=0
    )


def test_train_with_ema_exports_average_and_resumes_exactly(tiny_corpus, tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = _tiny_cfg(tiny_bert_dir, stages=["stage1"], ema_rate=0.9)
    with pytest.raises(ValueError, match="ema_rate"):
        _tiny_cfg(tiny_bert_dir, ema_rate=1.0)
    run = train_backbone(cfg, tiny_corpus, tmp_path / "e")
    ema, raw = load_file(str(run / "stage1.safetensors")), load_file(str(run / "stage1.raw.safetensors"))
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if "to_qkv" in k)
    rec = json.loads((run / "training_record.json").read_text())
    assert rec["stages"]["stage1"]["weights"] == "ema"
    assert (run / "checkpoints" / "stage1" / "step_2" / "ema.safetensors").is_file()

    shutil.rmtree(run / "checkpoints" / "stage1" / "step_4")
    (run / "stage1.safetensors").unlink()
    train_backbone(cfg, tiny_corpus, run)
    resumed = load_file(str(run / "stage1.safetensors"))
    for k, v in ema.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)
