"""Crash test: SIGKILL the augmentation job at random points, resume, compare with an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import AUDIT_PROMPTS, make_audit

HERE = Path(__file__).resolve().parent
SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from _helpers import register_standin
register_standin()
from debias3d.augment.config import AugmentConfig
from debias3d.augment.pipeline import run_augment
from debias3d.config import load_config
cfg = load_config(AugmentConfig, overrides=sys.argv[3:])
run_augment(sys.argv[1], cfg, sys.argv[2])
"""
OVERRIDES = [
    "num_threads=1",
    "visual.ranker=standin",
    "contexts=3",
    "progress=false",
    "report=false",
    "seed=7",
]


def _records(out: Path) -> int:
    return (
        sum(p.read_bytes().count(b"\n") for p in (out / "job").glob("records-*.jsonl"))
        if (out / "job").is_dir()
        else 0
    )


def _run(script: Path, audit: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(audit), str(out), *OVERRIDES],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _rows(out: Path) -> list[dict]:
    from datasets import load_from_disk

    return [dict(r) for r in load_from_disk(str(out / "pairs"))]


@pytest.mark.timeout(600)
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    audit = make_audit(tmp_path / "audit", AUDIT_PROMPTS[:3])
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(here=str(HERE)))

    ref = tmp_path / "ref"
    p = _run(script, audit, ref)
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    total = _records(ref)
    assert total >= 8

    crash = tmp_path / "crash"
    rng = np.random.default_rng(1234)
    thresholds = sorted(rng.choice(np.arange(1, total - 1), size=3, replace=False).tolist())
    kills = 0
    for thr in thresholds:
        p = _run(script, audit, crash)
        deadline = time.monotonic() + 240
        while p.poll() is None and _records(crash) < thr and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.25)))  # land anywhere inside the next item
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        assert not (crash / "summary.json").exists() or p.returncode == 0
    assert kills >= 3, f"the job finished before it could be killed ({kills} kills)"
    assert _records(crash) < total  # it really was interrupted

    p = _run(script, audit, crash)
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]

    a, b = _rows(ref), _rows(crash)
    assert a == b  # identical rows, same order: nothing lost, nothing duplicated
    keys = [(r["prompt"], r["pair_type"], r["mesh"]) for r in b]
    assert len(keys) == len(set(keys))
    from debias3d.augment.job import read_records

    recs_ref, _ = read_records(ref / "job")
    recs_crash, _ = read_records(crash / "job")
    assert set(recs_ref) == set(recs_crash)
    assert all(recs_ref[k]["result"] == recs_crash[k]["result"] for k in recs_ref)
