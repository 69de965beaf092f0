"""Benchmark the augmentation stage: offline items/s, job-bookkeeping overhead, LLM concurrency.

    python benchmarks/augment.py --prompts 24 --contexts 5 --json benchmarks/results/augment.json

Cases:

* ``offline``: template context writer + ShapeWorld external generator + ranker (the embedded
  ``shapeworld`` ranker when its weights are shipped, else a coverage stand-in) on a synthetic audit
  of ``--prompts`` grammar prompts. Reports source prompts/s (semantic stage: writer + filter),
  visual items/s (generation + T3Bench-style ranking) and end-to-end items/s.
* ``bookkeeping``: time spent in the job runner's bookkeeping (record reads/appends with fsync,
  atomic mesh/voxel writes) as a share of the run (target <= 5 %).
* ``openai``: the real ``openai`` client against a local fake OpenAI-compatible server that answers
  after ``--delay`` (200 ms): throughput at concurrency 8 vs 1 (target >= 5x).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks.augment")


def make_audit(root: Path, n: int, seed: int = 0) -> Path:
    """A synthetic audit folder: grammar prompts, w_h = the noun, w_l = the last attribute word."""
    import pandas as pd

    from debias3d.data.shapeworld.builder import build
    from debias3d.data.shapeworld.grammar import sample_prompts

    (root / "meshes").mkdir(parents=True, exist_ok=True)
    prows, srows = [], []
    for i, p in enumerate(sample_prompts(n, rng=seed)):
        words = p.spec.words()
        w_h, w_l = p.spec.objects[0].noun, (words[-1] if words else None)
        pid = f"p{i:04d}"
        asset = build(p.spec.without(w_l) if w_l else p.spec, rng=i, mesh_resolution=None, prompt=p.text)
        asset.mesh.export(root / f"meshes/{pid}_0.glb")
        prows.append({"prompt_id": pid, "prompt": p.text, "category": p.category, "w_h": w_h, "w_l": w_l})
        srows.append(
            {"prompt_id": pid, "sample": 0, "seed": i, "mesh": f"meshes/{pid}_0.glb", "score_overall": 0.0}
        )
    pd.DataFrame(prows).to_parquet(root / "prompts.parquet")
    pd.DataFrame(srows).to_parquet(root / "samples.parquet")
    (root / "summary.json").write_text("{}")
    return root


def _ranker_name() -> str:
    """``shapeworld`` when its weights are shipped, else a registered coverage stand-in."""
    import torch

    from debias3d.models.ranker.base import RankerBase
    from debias3d.models.ranker.model import default_weights_dir
    from debias3d.registry import _REGISTRY, register

    if (default_weights_dir() / "model.safetensors").is_file():
        return "shapeworld"

    class CoverageRanker(RankerBase):
        image_size = 48

        def image_scores(self, images: torch.Tensor, prompts: Any) -> torch.Tensor:
            return 10.0 * (images.min(dim=1).values < 0.95).float().mean(dim=(1, 2))

    if "bench-coverage" not in _REGISTRY["ranker"]:
        register("ranker", "bench-coverage")(CoverageRanker)
    return "bench-coverage"


def bench_offline(n_prompts: int, contexts: int, work: Path) -> dict[str, Any]:
    from debias3d.augment.config import AugmentConfig
    from debias3d.augment.pipeline import run_augment
    from debias3d.config import load_config

    audit = make_audit(work / "audit", n_prompts)
    ranker = _ranker_name()
    cfg = load_config(
        AugmentConfig,
        overrides=[
            f"contexts={contexts}",
            f"visual.ranker={ranker}",
            "num_threads=1",
            "progress=false",
            "report=false",
        ],
    )
    # warm-up on a separate folder so imports, MiniLM and the GL context are not timed
    run_augment(
        make_audit(work / "warm", 1),
        load_config(AugmentConfig, overrides=cfg_over(cfg, 1)),
        work / "warm_out",
    )
    t0 = time.perf_counter()
    s = run_augment(audit, cfg, work / "aug")
    wall = time.perf_counter() - t0
    t = s["timing"]
    items = s["visual"]["items"]
    t1 = time.perf_counter()
    run_augment(audit, cfg, work / "aug")  # resume: every item is skipped
    resume = time.perf_counter() - t1
    return {
        "ranker": ranker,
        "sources": s["sources"],
        "contexts": contexts,
        "candidates": s["filter"]["candidates"],
        "accepted": s["filter"]["accepted"],
        "acceptance_rate": round(s["filter"]["acceptance_rate"], 3),
        "diversity_mean": s["filter"]["diversity_mean"],
        "visual_items": items,
        "pairs": s["pairs"]["rows"],
        "wall_s": round(wall, 3),
        "semantic_s": t["semantic_s"],
        "visual_s": t["visual_s"],
        "sources_per_s": round(s["sources"] / max(t["semantic_s"], 1e-9), 2),
        "visual_items_per_s": round(items / max(t["visual_s"], 1e-9), 2),
        "items_per_s": round((s["sources"] + items) / wall, 2),
        "bookkeeping_s": t["bookkeeping_s"],
        "bookkeeping_share": round(t["bookkeeping_s"] / wall, 4),
        "resume_noop_s": round(resume, 3),
    }


def cfg_over(cfg: Any, contexts: int) -> list[str]:
    return [
        f"contexts={contexts}",
        f"visual.ranker={cfg.visual.ranker}",
        "num_threads=1",
        "progress=false",
        "report=false",
    ]


class _Server:
    """Minimal OpenAI-compatible chat endpoint on 127.0.0.1 answering after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": json.dumps({"prompts": ["a red vase", "a blue cup"]}),
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80},
        }
        data = json.dumps(body).encode()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bench_openai(n_requests: int, delay: float, levels: list[int]) -> dict[str, Any]:
    from debias3d.models.llm.base import ContextRequest
    from debias3d.models.llm.openai_llm import OpenAIContextWriter

    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
    srv = _Server(delay)
    out: dict[str, Any] = {"requests": n_requests, "delay_s": delay}
    try:
        reqs = [ContextRequest(f"a red vase {i}", ("vase",), 2, i) for i in range(n_requests)]
        for c in levels:
            w = OpenAIContextWriter(base_url=srv.url, concurrency=c, max_retries=0, timeout_s=30)
            list(w.iter_write(reqs[:2]))  # connect
            t0 = time.perf_counter()
            res = dict(w.iter_write(reqs))
            dt = time.perf_counter() - t0
            assert all(r.ok for r in res.values())
            out[f"c{c}_requests_per_s"] = round(n_requests / dt, 2)
    finally:
        srv.close()
    out["speedup"] = round(out[f"c{levels[-1]}_requests_per_s"] / out[f"c{levels[0]}_requests_per_s"], 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24, help="source prompts in the synthetic audit")
    ap.add_argument("--contexts", type=int, default=5, help="C contexts per prompt")
    ap.add_argument("--requests", type=int, default=32, help="LLM requests per concurrency level")
    ap.add_argument("--delay", type=float, default=0.2, help="fake server answer delay (s)")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-openai", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    if not args.skip_offline:
        work = Path(tempfile.mkdtemp(prefix="bench-augment-"))
        try:
            results["offline"] = bench_offline(args.prompts, args.contexts, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not args.skip_openai:
        results["openai"] = bench_openai(args.requests, args.delay, [1, 8])
    text = json.dumps(results, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v))
    print(text)  # noqa: T201 — a benchmark script reports on stdout
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return results


if __name__ == "__main__":
    main()
