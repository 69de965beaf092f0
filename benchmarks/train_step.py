"""Cost of one mini-TRELLIS training step (stage 1 and stage 2) in fp32, bf16 autocast and compiled.

Stage-1 steps bound what the embedded generator can learn in the issue's 30-minute training budget
(BENCHMARKS.md, "Generator fidelity"). This script asks whether this CPU can buy more steps in that
budget: it times forward + loss + backward + AdamW step of the shipped architecture
(``configs/shapeworld/backbone.yaml`` sizes and batch sizes) on random data with the real text-feature
shapes. The baseline is fp32 eager, measured in the same run.

    .venv/bin/python benchmarks/train_step.py --threads 1 --json benchmarks/results/train_step.json
    .venv/bin/python benchmarks/train_step.py --compile      # adds torch.compile (~1 min to compile)
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import write_json


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/shapeworld/backbone.yaml", help="backbone training config")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (training uses 1)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case (after 3 warm-up steps)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all cases (median is reported)")
    p.add_argument("--tokens", type=int, default=16, help="text tokens per prompt (ShapeWorld: 8-20)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p


def _inputs(stage: str, cfg, batch: int, tokens: int, cond_channels: int):
    import torch

    g = torch.Generator().manual_seed(0)
    cond = torch.randn(batch, tokens, cond_channels, generator=g)
    cond_mask = torch.ones(batch, tokens, dtype=torch.bool)
    t = torch.rand(batch, generator=g) * 1000
    if stage == "stage1":
        r = cfg.resolution
        x = torch.randn(batch, 1, r, r, r, generator=g)
        return x, (x, t, cond, cond_mask), {}
    n = cfg.stage2_max_voxels
    x = torch.randn(batch, n, 3, generator=g)
    coords = torch.randint(0, cfg.resolution, (batch, n, 3), generator=g)
    mask = torch.ones(batch, n, dtype=torch.bool)
    return x, (x, t, cond, cond_mask), {"coords": coords, "mask": mask}


def time_case(model, inputs, steps: int, bf16: bool) -> float:
    """Seconds per optimiser step (forward, MSE loss, backward, AdamW)."""
    import torch

    target, args, kwargs = inputs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(*args, **kwargs)
        loss = (out.float() - target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    import torch

    from debias3d.config import load_config
    from debias3d.models.backbone.flow import SLatFlowModel, SparseStructureFlowModel
    from debias3d.models.backbone.train import BackboneTrainConfig

    torch.set_num_threads(args.threads)
    cfg = load_config(BackboneTrainConfig, args.config)
    mcfg = cfg.model_config(cond_channels=384)  # all-MiniLM-L6-v2
    results: dict = {"threads": args.threads, "config": args.config, "steps": args.steps, "stages": {}}
    for stage in ("stage1", "stage2"):
        torch.manual_seed(0)
        if stage == "stage1":
            model, batch = SparseStructureFlowModel(mcfg.stage1), cfg.batch_size
        else:
            model, batch = SLatFlowModel(mcfg.stage2), cfg.stage2_batch_size
        inputs = _inputs(stage, cfg, batch, args.tokens, 384)
        cases = {"fp32": (model, False), "bf16_autocast": (model, True)}
        if args.compile:
            cases["fp32_compiled"] = (torch.compile(model), False)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, (m, bf16) in cases.items():
                times[name].append(time_case(m, inputs, args.steps, bf16))
        med = {k: statistics.median(v) for k, v in times.items()}
        results["stages"][stage] = {
            "batch": batch,
            "seconds_per_step": med,
            "speedup_vs_fp32": {k: med["fp32"] / v for k, v in med.items()},
        }
        print(f"{stage} (batch {batch}):")
        for k, v in med.items():
            print(f"  {k:15s} {v * 1000:7.1f} ms/step  {med['fp32'] / v:5.2f}x fp32")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
