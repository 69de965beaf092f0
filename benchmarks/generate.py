"""Generation throughput of mini TRELLIS: batched ``generate`` vs the naive loop, in one run.

* batched: ``generate(P prompts, num_samples=D)`` — each prompt's text encoded once, prompts ×
  samples batched through both flow stages.
* naive: one ``generate([prompt], num_samples=1)`` call per (prompt, sample), with the text
  encoder's cache cleared first so the text is re-encoded every time.

Both produce the same assets (same per-item noise seeds); the script checks that they agree.

    python benchmarks/generate.py --prompts 32 --samples 4 --json bench_generate.json
    python benchmarks/generate.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from _common import machine, mini_trellis, peak_rss_mb, sampling_parser, write_json

logger = logging.getLogger("benchmarks.generate")


def make_parser() -> argparse.ArgumentParser:
    p = sampling_parser(__doc__, prompts=32)
    p.add_argument("--batch-size", type=int, default=128, help="items per batch in the batched run")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model config)")
    p.add_argument("--naive-limit", type=int, default=0, help="time only this many naive items (0 = all)")
    return p


def main(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    gen, prompts, sync = mini_trellis(args)
    d = args.samples
    kw = {"steps": args.steps} if args.steps else {}
    gen.generate(prompts[:1], seeds=[0], num_samples=1, **kw)  # warm-up
    enc = gen.text_encoder
    enc._cache.clear()
    sync()
    t0 = time.perf_counter()
    batched = gen.generate(
        prompts, seeds=[args.seed] * len(prompts), num_samples=d, batch_size=args.batch_size, **kw
    )
    sync()
    t_batched = time.perf_counter() - t0

    items = [(i, k) for i in range(len(prompts)) for k in range(d)]
    if args.naive_limit:
        items = items[: args.naive_limit]
    naive = []
    t0 = time.perf_counter()
    for i, k in items:
        enc._cache.clear()  # the naive loop re-encodes the text every time
        naive += gen.generate([prompts[i]], seeds=[args.seed + k], num_samples=1, **kw)
    sync()
    t_naive = time.perf_counter() - t0

    same = all(
        np.array_equal(batched[i * d + k].voxels.occupancy, a.voxels.occupancy)
        for (i, k), a in zip(items, naive, strict=True)
    )
    res = {
        **machine(args.device),
        "prompts": len(prompts),
        "samples": d,
        "steps": {
            "stage1": gen.config.sparse_structure_sampler_params["steps"] if not args.steps else args.steps,
            "stage2": gen.config.slat_sampler_params["steps"] if not args.steps else args.steps,
        },  # fmt: skip
        "batched_shapes": len(batched),
        "batched_seconds": round(t_batched, 3),
        "batched_shapes_per_s": round(len(batched) / t_batched, 3),
        "naive_shapes": len(naive),
        "naive_seconds": round(t_naive, 3),
        "naive_shapes_per_s": round(len(naive) / t_naive, 3),
        "speedup": round((len(batched) / t_batched) / (len(naive) / t_naive), 2),
        "same_occupancy": bool(same),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if args.device.startswith("cuda"):
        res["cuda_peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["gpu"] = torch.cuda.get_device_name()
    logger.info(json.dumps(res, indent=2))
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(make_parser().parse_args())
