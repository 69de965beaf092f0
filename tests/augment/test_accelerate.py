"""``accelerate launch`` with 2 CPU processes: items split, one record shard each, same dataset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import AUDIT_PROMPTS, make_audit

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ENTRY = """
import sys
sys.path.insert(0, {here!r})
from _helpers import register_standin
register_standin()
from debias3d.augment.__main__ import main
raise SystemExit(main())
"""
OVERRIDES = ["num_threads=1", "visual.ranker=standin", "contexts=2", "progress=false", "report=false"]


def test_accelerate_two_processes_match_single_process(tmp_path):
    from datasets import load_from_disk

    from debias3d.augment.config import AugmentConfig
    from debias3d.augment.pipeline import run_augment
    from debias3d.config import load_config

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate CLI not installed")
    audit = make_audit(tmp_path / "audit", AUDIT_PROMPTS[:4])
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY.format(here=str(HERE)))
    cmd = [launcher, "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"), str(entry),
           "--audit", str(audit), "--out", str(tmp_path / "multi"), *OVERRIDES]  # fmt: skip
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        # the entry script lives in tmp_path: put this checkout's package first on the path
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "multi" / "job").glob("records-*.jsonl"))
    assert shards == ["records-0.jsonl", "records-1.jsonl"]

    run_augment(audit, load_config(AugmentConfig, overrides=OVERRIDES), tmp_path / "single")
    multi = [dict(r) for r in load_from_disk(str(tmp_path / "multi" / "pairs"))]
    single = [dict(r) for r in load_from_disk(str(tmp_path / "single" / "pairs"))]
    assert multi == single
