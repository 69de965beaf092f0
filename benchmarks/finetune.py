"""LoRA vs full fine-tuning of mini TRELLIS, in the same run.

Reports the trainable share of parameters, the optimizer-state size, and the step time (forward +
backward + AdamW step of both stages, the pre-training objective) and peak memory of LoRA versus
full fine-tuning. Targets: LoRA step ≤ 0.8× full, optimizer state ≥ 10× smaller.

    python benchmarks/finetune.py                      # CPU, shipped weights (random if absent)
    python benchmarks/finetune.py --width 512 --blocks 4   # TRELLIS-like width, random init
    python benchmarks/finetune.py --device cuda --bf16 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

logger = logging.getLogger("benchmarks.finetune")


def _generator(device: str, width: int | None = None, blocks: int | None = None):
    from dataclasses import replace

    from debias3d.models.backbone.generator import MiniTrellisConfig, MiniTrellisGenerator

    if width:
        # A wider, random-init model of the same architecture: the step is then dominated by the
        # matmuls LoRA changes, as it is for real TRELLIS (1024 channels), not by per-op overhead.
        nb = blocks or 4
        size = {"model_channels": width, "num_blocks": nb, "num_heads": max(1, width // 64)}
        base = MiniTrellisConfig()
        cfg = replace(base, stage1=replace(base.stage1, **size), stage2=replace(base.stage2, **size))
        torch.manual_seed(0)
        return MiniTrellisGenerator(cfg, device=device), f"random init, {width} channels x {nb} blocks"
    try:
        return MiniTrellisGenerator.from_pretrained(device=device), "shipped"
    except FileNotFoundError:
        return MiniTrellisGenerator(MiniTrellisConfig(), device=device), "random (no shipped weights)"


def _rows(n: int, r: int, seed: int = 0):
    from debias3d.finetune.data import TrainingSet

    rng = np.random.default_rng(seed)
    occ = np.zeros((n, r, r, r), np.uint8)
    col = np.zeros((n, r, r, r, 3), np.uint8)
    for i in range(n):
        lo = rng.integers(0, r // 2, 3)
        hi = lo + rng.integers(3, r // 2 + 1, 3)
        occ[i, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
        col[i][occ[i].astype(bool)] = rng.integers(0, 256, 3, dtype=np.uint8)
    prompts = [f"a red vase number {i}" for i in range(n)]
    return TrainingSet(prompts, occ, col, ["pair"] * n)


def _opt_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
    )


def _setup(mode: str, args, device: str) -> dict:
    """Model, objective and optimizer for one mode (``lora`` or ``full``)."""
    from debias3d.finetune.config import FinetuneConfig, LoraSettings, TrainSettings
    from debias3d.finetune.lora import add_lora, flow_container
    from debias3d.finetune.trainer import FlowMatchingObjective, _mini_stage_loss

    gen, weights = _generator(device, args.width, args.blocks)
    rows = _rows(args.rows, gen.stage1.resolution)
    cfg = FinetuneConfig(lora=LoraSettings(rank=args.rank), train=TrainSettings(full_finetune=mode == "full"))
    loss_fn = _mini_stage_loss(rows, gen, cfg)
    if mode == "full":
        model = flow_container(gen)
        model.requires_grad_(True)
    else:
        model = add_lora(gen, cfg.lora)
    obj = FlowMatchingObjective(model, loss_fn, {"stage1": 1.0, "stage2": 1.0}).to(device).train()
    params = [p for p in obj.parameters() if p.requires_grad]
    return {
        "mode": mode,
        "weights": weights,
        "obj": obj,
        "params": params,
        "opt": torch.optim.AdamW(params, lr=1e-4),
        "n_rows": len(rows),
        "times": [],
    }


def _step(run: dict, step: int, batch: torch.Tensor, args, device: str) -> float:
    from debias3d.finetune.trainer import step_seed

    amp = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if args.bf16 else nullcontext()
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with amp:
        loss = run["obj"](batch, step_seed(0, step, 0, 0))["loss"]
    loss.backward()
    run["opt"].step()
    run["opt"].zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _report(run: dict) -> dict:
    params, obj, times = run["params"], run["obj"], run["times"]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in obj.parameters())
    return {
        "mode": run["mode"],
        "weights": run["weights"],
        "trainable_params": n_train,
        "total_params": n_total,
        "trainable_share": n_train / n_total,
        "optimizer_state_bytes": _opt_state_bytes(run["opt"]),
        "grad_bytes": sum(p.numel() * p.element_size() for p in params),
        "step_s_median": float(np.median(times)),
        "steps_per_s": float(1.0 / np.median(times)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rows", type=int, default=64, help="synthetic training rows")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument(
        "--width", type=int, default=None, help="random-init model with this many channels (default: shipped)"
    )
    p.add_argument("--blocks", type=int, default=None, help="blocks per stage with --width (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Both modes are set up first and their steps interleaved (same batches, same noise), so a
    # change of machine load during the run hits both alike instead of biasing the ratio.
    runs = {mode: _setup(mode, args, args.device) for mode in ("lora", "full")}
    g = torch.Generator().manual_seed(0)
    for step in range(args.warmup + args.steps):
        batch = torch.randint(runs["lora"]["n_rows"], (args.batch_size,), generator=g)
        order = ("lora", "full") if step % 2 == 0 else ("full", "lora")
        for mode in order:
            dt = _step(runs[mode], step, batch, args, args.device)
            if step >= args.warmup:
                runs[mode]["times"].append(dt)
    res = {mode: _report(run) for mode, run in runs.items()}
    res["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.device.startswith("cuda"):
        res["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
    lo, fu = res["lora"], res["full"]
    summary = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "bf16": args.bf16,
        "batch_size": args.batch_size,
        "model": lo["weights"],
        "lora_trainable_share": lo["trainable_share"],
        "step_time_ratio_lora_over_full": lo["step_s_median"] / fu["step_s_median"],
        "optimizer_state_ratio_full_over_lora": fu["optimizer_state_bytes"]
        / max(lo["optimizer_state_bytes"], 1),
        "target_step_ratio_ok": lo["step_s_median"] <= 0.8 * fu["step_s_median"],
        "target_optimizer_ratio_ok": fu["optimizer_state_bytes"] >= 10 * lo["optimizer_state_bytes"],
        "lora": lo,
        "full": fu,
        "peak_rss_kb": res["peak_rss_kb"],
    }
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"trainable share (LoRA r={args.rank}): {lo['trainable_share']:.2%}\n"
            f"step time: LoRA {lo['step_s_median'] * 1e3:.1f} ms, full {fu['step_s_median'] * 1e3:.1f} ms "
            f"(ratio {summary['step_time_ratio_lora_over_full']:.2f}, target <= 0.8)\n"
            f"optimizer state: LoRA {lo['optimizer_state_bytes'] / 1e6:.2f} MB, full "
            f"{fu['optimizer_state_bytes'] / 1e6:.2f} MB (x{summary['optimizer_state_ratio_full_over_lora']:.1f}, "
            "target >= 10)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
