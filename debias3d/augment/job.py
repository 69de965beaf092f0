"""A resumable job runner: content-keyed items, append-only JSONL records, atomic file writes.

* Every item has a key: a hash of its inputs and of the backend settings that change its result
  (:func:`item_key`). Changing a prompt, a seed or a backend setting gives new keys, so stale
  results are never reused; changing nothing makes a re-run skip every finished item.
* Results are appended as one JSON line per item to ``job/records-<shard>.jsonl`` (one shard per
  process) and flushed to the OS before the runner moves on, so a killed process loses nothing;
  they are ``fsync``-ed in groups (at most ``fsync_every_s`` apart, and at the end of each stage)
  against power loss. A line torn by a crash is ignored on reading and cut off before the next
  append.
* Files (meshes) are written to a temporary name in the same folder and moved into place with
  ``os.replace``, so a file either exists whole or not at all; the record that points to it is
  written (and fsync-ed) after it and holds its size, which the runner checks on resume.
* Items are deterministic (their seeds derive from their inputs), so a resumed run ends with the
  same records as an uninterrupted one.

:class:`JobStore` also measures the time it spends on bookkeeping (``bookkeeping_s``), which
``benchmarks/augment.py`` reports as a share of the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from debias3d.runs import atomic_write_bytes, atomic_write_text, read_json, repair_jsonl_tail

__all__ = [
    "JobStore",
    "item_key",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_records",
    "usage_totals",
    "status",
]

logger = logging.getLogger(__name__)

RECORD_GLOB = "records-*.jsonl"
PLAN_NAME = "plan.json"


def item_key(kind: str, payload: dict[str, Any]) -> str:
    """24-hex-digit SHA-256 of ``kind`` and the canonical JSON of ``payload``.

    >>> item_key("semantic", {"prompt": "a red vase", "seed": 0}) == item_key("semantic", {"seed": 0, "prompt": "a red vase"})
    True
    """
    blob = json.dumps({"kind": kind, **payload}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_records(job_dir: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], int]:
    """All records of all shards: ``({key: record}, n_torn_lines)``.

    A ``done`` record beats a ``failed`` one for the same key; otherwise the first one read wins
    (shards in name order, lines in file order).
    """
    out: dict[str, dict[str, Any]] = {}
    torn = 0
    for path in sorted(Path(job_dir).glob(RECORD_GLOB)):
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    torn += 1
                    continue
                key = rec.get("key") if isinstance(rec, dict) else None
                if key is None:
                    torn += 1
                    continue
                old = out.get(key)
                if old is None or (old.get("status") != "done" and rec.get("status") == "done"):
                    out[key] = rec
    return out, torn


def usage_totals(job_dir: str | os.PathLike, keys: set[str] | list[str]) -> dict[str, float]:
    """LLM usage summed over *every* record line of ``keys``, superseded attempts included.

    A failed item retried with ``--retry-failed`` keeps its failed record in the shard; its
    requests and tokens were billed too, so they count here (``read_records`` keeps one record per
    key and would drop them).
    """
    want = set(keys)
    tot = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
    for path in sorted(Path(job_dir).glob(RECORD_GLOB)):
        with open(path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if not isinstance(rec, dict) or rec.get("key") not in want:
                    continue
                usage = (rec.get("result") or {}).get("usage") or {}
                for k in tot:
                    tot[k] += usage.get(k, 0) or 0
    return tot


class JobStore:
    """Append-only record store of one job folder, written by one process (``shard``).

    Args:
        job_dir: the ``job/`` folder.
        shard: this process's shard name (``accelerate`` process index).
        retry_failed: treat ``failed`` records as not finished (their items run again).
        fsync_every_s: group commit: each record is written and flushed to the OS at once (so a
            killed process loses nothing), and ``fsync``-ed when this many seconds passed since the
            last ``fsync`` and at :meth:`sync`; ``0`` fsyncs every record. A power cut can lose at
            most the last ``fsync_every_s`` of records, whose items then simply run again.
    """

    def __init__(
        self,
        job_dir: str | os.PathLike,
        shard: str | int = 0,
        retry_failed: bool = False,
        fsync_every_s: float = 0.5,
    ) -> None:
        self.dir = Path(job_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"records-{shard}.jsonl"
        self.retry_failed = retry_failed
        self.fsync_every_s = float(fsync_every_s)
        self._fh: Any = None
        self._last_sync = time.monotonic()
        self._dirty = False
        self.bookkeeping_s = 0.0
        self._repaired = False
        self._records: dict[str, dict[str, Any]] = {}
        self.reload()

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the enclosed block as bookkeeping time."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.bookkeeping_s += time.perf_counter() - t0

    def reload(self) -> None:
        """Re-read every shard (after other processes wrote theirs)."""
        with self.timed():
            self._records, torn = read_records(self.dir)
        if torn:
            logger.info("job: ignored %d torn record line(s) from an interrupted run", torn)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key`` or ``None``."""
        return self._records.get(key)

    def done(self, key: str) -> bool:
        """True when ``key`` has a finished record (``failed`` counts unless ``retry_failed``)."""
        rec = self._records.get(key)
        if rec is None:
            return False
        return rec.get("status") == "done" or not self.retry_failed

    def records(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self._records.items() if kind is None or r.get("kind") == kind}

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash mid-write) so the next record starts on its own line."""
        self._repaired = True
        repair_jsonl_tail(self.path)

    def append(self, key: str, kind: str, status: str, result: dict[str, Any]) -> dict[str, Any]:
        """Append one record (flush + fsync) and remember it."""
        rec = {"key": key, "kind": kind, "status": status, "result": result}
        with self.timed():
            if not self._repaired:
                self._repair_tail()
            if self._fh is None:
                self._fh = open(self.path, "ab")  # noqa: SIM115 — kept open across appends, closed in sync()
            self._fh.write((json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8"))
            self._fh.flush()
            self._dirty = True
            if time.monotonic() - self._last_sync >= self.fsync_every_s:
                self._fsync()
        self._records[key] = rec
        return rec

    def _fsync(self) -> None:
        if self._fh is not None and self._dirty:
            os.fsync(self._fh.fileno())
        self._dirty = False
        self._last_sync = time.monotonic()

    def sync(self) -> None:
        """fsync pending records and close the shard file (end of a stage)."""
        with self.timed():
            self._fsync()
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.close()

    def write_file(self, path: str | os.PathLike, data: bytes) -> Path:
        """Atomic file write (temp + ``os.replace``), counted as bookkeeping.

        The file itself is not fsync-ed: the record that points to it is the commit point and is
        fsync-ed, and the runner re-checks the file's size on resume (a file lost to a power cut
        makes its item run again), which keeps bookkeeping at a few percent of the run.
        """
        with self.timed():
            return atomic_write_bytes(path, data, fsync=False)

    def run(self, key: str, kind: str, fn: Callable[[], tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Return the finished record of ``key`` or run ``fn() -> (status, result)`` and record it."""
        if self.done(key):
            return self._records[key]
        status_, result = fn()
        return self.append(key, kind, status_, result)


def status(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Progress of an augmentation folder: per-stage done / failed / total, and whether it finished."""
    out = Path(out_dir)
    job = out / "job"
    if not job.is_dir():
        raise FileNotFoundError(f"{out} has no job/ folder: not an augmentation output")
    plan: dict[str, Any] = {}
    if (job / PLAN_NAME).is_file():
        plan = read_json(job / PLAN_NAME)
    records, torn = read_records(job)
    stages: dict[str, dict[str, int]] = {}
    for stage in ("semantic", "original", "visual"):
        keys = plan.get(f"{stage}_keys")
        recs = [r for r in records.values() if r.get("kind") == stage]
        if keys is not None:
            kset = set(keys)
            recs = [r for r in recs if r["key"] in kset]
        stages[stage] = {
            "done": sum(r.get("status") == "done" for r in recs),
            "failed": sum(r.get("status") == "failed" for r in recs),
            "total": len(keys) if keys is not None else -1,
        }
    summary_path = out / "summary.json"
    missing = sum(max(0, c["total"] - c["done"] - c["failed"]) for c in stages.values() if c["total"] >= 0)
    finished = (
        summary_path.is_file()
        and plan.get("run_id") is not None
        and plan.get("stage") == "done"
        and missing == 0
        and all(c["total"] >= 0 for c in stages.values())
    )
    if finished:
        try:
            finished = read_json(summary_path).get("run_id") == plan.get("run_id")
        except ValueError:
            finished = False
    return {
        "out_dir": str(out),
        "stage": plan.get("stage", "unknown"),
        "sources": plan.get("sources", 0),
        "stages": stages,
        "torn_lines": torn,
        "missing": missing,
        "finished": bool(finished),
    }
