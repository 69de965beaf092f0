"""6-step ``accelerate launch --num_processes 2`` run on CPU (gloo), as diffusers tests its scripts.

Checks: checkpoint folders (rotated), every LoRA parameter changed, base parameters bit-identical,
the adapter reloads to the weights of the final checkpoint, and a run resumed from a checkpoint
reproduces the loss curve of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
# accelerate 1.15 sends a MULTI_CPU config file (configs/accelerate/cpu_2proc.yaml) to its simple
# launcher, which starts ONE process unless mpirun is set up; the DDP launcher (torchrun) with two
# processes on a machine without CUDA gives the gloo MULTI_CPU run we want.
LAUNCH_FLAGS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip


def _write_config(path: Path, world: dict[str, Path], **train) -> Path:
    cfg = {
        "generator": "mini-trellis",
        "generator_weights": str(world["base"]),
        "lora": {"rank": 4, "alpha": 8},
        "data": {"pairs": str(world["pairs"]), "corpus": str(world["corpus"]), "replay_share": 0.3},
        "train": {
            "seed": 3,
            "max_train_steps": 6,
            "train_batch_size": 1,
            "gradient_accumulation_steps": 2,
            "learning_rate": 5e-3,
            "lr_warmup_steps": 2,
            "checkpointing_steps": 2,
            "checkpoints_total_limit": 2,
            "num_threads": 1,
            **train,
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="")  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH_FLAGS,
           "-m", "debias3d.finetune", "--config", str(config), "--out", str(out), *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_proc_run(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    cfg = _write_config(tmp / "ft.yaml", tiny_world)
    out = tmp / "run"
    proc = _launch(cfg, out)
    return {"cfg": cfg, "out": out, "tmp": tmp, "proc": proc}


def test_two_process_run_writes_rotated_checkpoints_and_adapter(two_proc_run):
    out = two_proc_run["out"]
    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-4", "checkpoint-6"]  # checkpoint-2 rotated out (limit 2)
    for c in ckpts:
        assert (out / c / "adapter_model.safetensors").is_file()
        assert (out / c / "optimizer.bin").is_file()
        assert not (out / c / "model.safetensors").exists()  # adapter-only saves
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"loss", "loss_stage1", "loss_stage2", "lr"} for r in log)
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["data"]["skipped"] == {"bad_voxels": 1, "broken_mesh": 1, "missing_mesh": 1}
    assert summary["data"]["pairs_used"] == 5 and summary["data"]["replay"] == 2


def test_every_lora_param_changed_and_base_is_bit_identical(two_proc_run, tiny_world, tiny_gen_loader):
    from peft import PeftModel
    from safetensors.torch import load_file

    from debias3d.finetune.config import LoraSettings
    from debias3d.finetune.lora import add_lora, flow_container, lora_parameters

    out = two_proc_run["out"]
    # The initial adapter: same seed, same init as the launched run (set_seed(3) before add_lora).
    from accelerate.utils import set_seed

    set_seed(3)
    init = {
        k: v.detach().clone()
        for k, v in lora_parameters(add_lora(tiny_gen_loader(), LoraSettings(rank=4, alpha=8))).items()
    }
    gen = tiny_gen_loader()
    base = {k: v.clone() for k, v in gen.state_dict().items()}
    model = PeftModel.from_pretrained(flow_container(gen), str(out))
    trained = lora_parameters(model)
    assert trained and set(trained) == set(init)
    unchanged = [k for k in trained if torch.equal(trained[k].detach(), init[k])]
    assert not unchanged, unchanged
    # base params under the LoRA layers: bit-identical to the saved base
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p.detach(), base[key]), key
    on_disk = load_file(str(tiny_world["base"] / "model.safetensors"))
    for k, v in on_disk.items():
        assert torch.equal(v, base[k]), k
    # the final adapter equals the last checkpoint's adapter
    final = load_file(str(out / "adapter_model.safetensors"))
    last = load_file(str(out / "checkpoint-6" / "adapter_model.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


def test_resume_reproduces_loss_curve(two_proc_run):
    """Copy checkpoint-4 into a fresh folder, resume with --resume-from latest: steps 5-6 match."""
    tmp, out = two_proc_run["tmp"], two_proc_run["out"]
    resumed = tmp / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-4", resumed / "checkpoint-4")
    full = {r["step"]: r for r in _log(out)}
    # the killed run had logged step 5 (after the checkpoint) and was torn while writing step 6
    torn = json.dumps(full[6])[:25]
    (resumed / "train_log.jsonl").write_text("".join(json.dumps(full[s]) + "\n" for s in range(1, 6)) + torn)
    _launch(two_proc_run["cfg"], resumed, "--resume-from", "latest")
    steps = [r["step"] for r in _log(resumed)]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 5 rewritten once, the torn row dropped
    again = {r["step"]: r for r in _log(resumed)}
    for s in (5, 6):
        for k in ("loss", "loss_stage1", "loss_stage2", "lr"):
            assert again[s][k] == pytest.approx(full[s][k], rel=1e-5, abs=1e-7), (s, k)
    from safetensors.torch import load_file

    a = load_file(str(out / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
