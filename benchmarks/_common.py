"""What the benchmark scripts share: where a result was measured, peak memory, writing the result.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import it as ``_common``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any


def sampling_parser(doc: str | None, prompts: int) -> argparse.ArgumentParser:
    """The options of every mini-TRELLIS sampling benchmark (``--prompts`` ... ``--json``); a script adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=prompts, help="number of ShapeWorld prompts P")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt D")
    p.add_argument("--weights", type=Path, default=None, help="mini-TRELLIS weights (default: shipped)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def mini_trellis(args: argparse.Namespace) -> tuple[Any, list[str], Any]:
    """``(generator, prompts, sync)`` for a :func:`sampling_parser` run: mini TRELLIS on ``args.device``
    (torch threads set), ``args.prompts`` ShapeWorld prompt texts, and a ``sync()`` that waits for CUDA."""
    import torch

    from debias3d.data.shapeworld.grammar import sample_prompts
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = MiniTrellisGenerator.from_pretrained(args.weights, device=args.device)
    prompts = [p.text for p in sample_prompts(args.prompts, rng=args.seed)]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return gen, prompts, sync


def machine(device: str = "cpu") -> dict[str, Any]:
    """The result's context: ``device``, torch's CPU threads, the CPU count and the platform."""
    import torch

    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def write_json(path: str | os.PathLike | None, result: Any, **dumps: Any) -> None:
    """Write ``result`` as indented JSON to ``path``, creating its folder (``None``: write nothing)."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, **dumps) + "\n")
