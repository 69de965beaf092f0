"""Audit export on real TRELLIS: vertex colours (no texture baking) vs ``to_glb`` with baking, per asset.

Needs a CUDA machine with TRELLIS installed (docs/trellis.md). Each prompt is sampled once
(``pipeline.run``, D samples); then both exports run on the SAME outputs, so the ratio compares
the exports only:

* baseline: ``postprocessing_utils.to_glb(gaussian, mesh, simplify, texture_size)`` (decimation,
  hole filling, UV unwrap, 100-view render, texture optimisation);
* ``TrellisGenerator.export_vertex_colors`` (decimation + nearest-Gaussian vertex colours).

    python benchmarks/trellis_export.py --weights microsoft/TRELLIS-text-large --prompts 4 --samples 2 \
        --json benchmarks/results/trellis_export.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from _common import write_json

PROMPTS = [
    "a red ceramic vase with a narrow neck",
    "a wooden chair with four legs",
    "a blue toy car",
    "a stone statue of a lion",
    "a green teapot with a curved spout",
    "a small house with a red roof",
    "a yellow rubber duck",
    "a silver desk lamp",
]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="microsoft/TRELLIS-text-large", help="TRELLIS-text hub id or folder")
    p.add_argument("--prompts", type=int, default=4, help="number of prompts (at most 8)")
    p.add_argument("--samples", type=int, default=2, help="samples per prompt D")
    p.add_argument("--steps", type=int, default=25, help="sampler steps of both stages")
    p.add_argument("--simplify", type=float, default=0.95)
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> dict:
    import torch

    from debias3d.models.trellis import TrellisGenerator

    args = make_parser().parse_args(argv)
    gen = TrellisGenerator.from_pretrained(
        args.weights, device=args.device, simplify=args.simplify, texture_size=args.texture_size
    )
    params = {"steps": args.steps}

    def timed(fn, *a):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*a)
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    rows = []
    for i, prompt in enumerate(PROMPTS[: args.prompts]):
        out, t_sample = timed(
            lambda p=prompt, s=i: gen.pipeline.run(
                p,
                num_samples=args.samples,
                seed=s,
                formats=["gaussian", "mesh"],
                sparse_structure_sampler_params=params,
                slat_sampler_params=params,
            )  # fmt: skip
        )
        for d in range(args.samples):
            g, m = out["gaussian"][d], out["mesh"][d]
            vc, t_vc = timed(gen.export_vertex_colors, g, m)
            tx, t_tx = timed(gen.export_textured, g, m)
            rows.append(
                {
                    "prompt": prompt,
                    "sample": d,
                    "sample_s_per_asset": t_sample / args.samples,
                    "vertex_colors_s": t_vc,
                    "textured_s": t_tx,
                    "faces_vertex_colors": int(len(vc.faces)),
                    "faces_textured": int(len(tx.faces)),
                }
            )
            print(f"{prompt[:40]:40s} d={d}  vertex colours {t_vc:6.2f}s  to_glb {t_tx:6.2f}s")  # noqa: T201
    n = len(rows)
    vc_mean = sum(r["vertex_colors_s"] for r in rows) / n
    tx_mean = sum(r["textured_s"] for r in rows) / n
    smp_mean = sum(r["sample_s_per_asset"] for r in rows) / n
    result = {
        "weights": args.weights,
        "assets": n,
        "sample_s_per_asset": smp_mean,
        "vertex_colors_s_per_asset": vc_mean,
        "textured_s_per_asset": tx_mean,
        "speedup_export": tx_mean / vc_mean,
        "speedup_audit_asset": (smp_mean + tx_mean) / (smp_mean + vc_mean),
        "gpu": torch.cuda.get_device_name(0),
        "platform": platform.platform(),
        "rows": rows,
    }
    print(  # noqa: T201
        f"per asset: sampling {smp_mean:.2f}s, vertex colours {vc_mean:.2f}s, to_glb {tx_mean:.2f}s "
        f"(export {result['speedup_export']:.1f}x faster; sample+export {result['speedup_audit_asset']:.2f}x)"
    )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
