"""Evaluator cost per batch of prompts with cached views: forward, forward+backward, peak memory.

The audit back-propagates the evaluator's scores to the prompt token embeddings once per batch, so
these numbers are its unit of cost (the attribution benchmark reports its cost as a ratio to them).

    .venv/bin/python benchmarks/evaluator.py --batch 32 --repeats 5 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

from _common import peak_rss_mb

logger = logging.getLogger("benchmarks.evaluator")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="prompts (= meshes) per batch")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--weights", default=None, help="evaluator folder (default: shipped weights)")
    p.add_argument("--random-init", action="store_true", help="skip the shipped weights (same cost)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    import torch

    from debias3d.data.shapeworld.builder import build
    from debias3d.data.shapeworld.grammar import sample_prompts
    from debias3d.models.evaluator.model import ShapeWorldHyperScore

    torch.set_num_threads(args.threads)
    if args.random_init:
        ev = ShapeWorldHyperScore().eval()
    else:
        ev = ShapeWorldHyperScore.from_pretrained(args.weights)
    prompts = sample_prompts(args.batch, rng=123)
    assets = [build(p.spec, rng=i, prompt=p.text) for i, p in enumerate(prompts)]

    t0 = time.perf_counter()
    views = ev.prepare_views(assets)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev.prepare_views(assets)
    cached_s = time.perf_counter() - t0

    enc = ev.tokenize([p.text for p in prompts])
    base = ev.embed_tokens(enc["input_ids"]).detach()

    def forward() -> None:
        with torch.no_grad():
            ev.score_from_embeddings(views, base, enc["attention_mask"])

    def forward_backward() -> None:
        emb = base.clone().requires_grad_(True)
        q = ev.score_from_embeddings(views, emb, enc["attention_mask"])
        q.sum().backward()

    def timed(fn) -> list[float]:
        fn()  # warm-up
        out = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    rss0 = peak_rss_mb()
    fwd = timed(forward)
    fb = timed(forward_backward)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward()
    peak_alloc = max((e.cpu_memory_usage for e in prof.key_averages()), default=0) / 2**20

    result = {
        "batch": args.batch,
        "threads": args.threads,
        "views_per_mesh": int(views.views.shape[1]),
        "view_px": int(views.views.shape[-1]),
        "render_s_per_batch_first": round(render_s, 3),
        "render_s_per_batch_cached": round(cached_s, 4),
        "forward_s_median": round(statistics.median(fwd), 4),
        "forward_backward_s_median": round(statistics.median(fb), 4),
        "forward_s_all": [round(x, 4) for x in fwd],
        "forward_backward_s_all": [round(x, 4) for x in fb],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_timing_mb": round(rss0, 1),
        "profiler_max_op_alloc_mb": round(peak_alloc, 2),
        "torch": torch.__version__,
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for k, v in result.items():
            sys.stdout.write(f"{k:32s} {v}\n")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
