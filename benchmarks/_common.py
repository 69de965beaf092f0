"""What the benchmark scripts share: where a result was measured, peak memory, writing the result.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import it as ``_common``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any


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
