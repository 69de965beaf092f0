"""Run toolkit shared by the stages: run folder, atomic writes, append-only records, fingerprint, lock.

Every stage writes one output folder (``--out``) and must survive a kill at any moment:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: a temp file
  in the same folder, then ``os.replace``, so a file either exists whole or not at all.
* :func:`read_json` / :func:`read_jsonl`: readers whose errors name the file; ``read_jsonl`` drops
  a line torn by a kill (the caller redoes that row's work).
* :func:`repair_jsonl_tail` / :func:`append_jsonl`: an append-only JSON-lines record file whose
  torn last line is cut *before* the next append, so a new record never lands on a torn one.
* :class:`RunFingerprint`: the settings and inputs that decide a folder's rows, written to
  ``OUT/run.json``; resuming with other ones is a :class:`FingerprintError`, one line that says
  how to start fresh or how to resume as the folder was made.
* :class:`RunLock`: ``OUT/.lock`` held (``flock``) for the life of a run, so a second run on the
  same ``--out`` is refused at once instead of doing the work twice. The kernel drops the lock
  when its process dies (SIGKILL included), so a killed run never leaves a stale lock.
* :class:`Timer`: wall time per named block.
* :func:`check_max` and :func:`estimate_line`: upper bounds on size settings (the bound named in
  the message) and an up-front line with the number of items and the expected time.
* :func:`inside`: a path read from a data file resolved inside the folder it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "FingerprintError",
    "RunFingerprint",
    "RunLock",
    "RunLockedError",
    "Timer",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_max",
    "estimate_line",
    "fingerprint",
    "fsync_dir",
    "inside",
    "read_json",
    "read_jsonl",
    "repair_jsonl_tail",
]

logger = logging.getLogger(__name__)

FINGERPRINT_NAME = "run.json"
LOCK_NAME = ".lock"


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a malformed one is a ValueError that names the file and the place.

    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "config.json"
    >>> _ = bad.write_text('{"stage1": 3')
    >>> read_json(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../config.json: not valid JSON (Expecting ',' delimiter, line 1 column 13)
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The rows of a JSON-lines file that a killed writer may have left torn.

    Blank lines are skipped. A line that does not parse (a process killed mid-write leaves a partial
    last line) is dropped with a warning naming ``path:line``; the caller redoes that row's work.
    """
    path = Path(path)
    rows = []
    data = path.read_bytes()
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("%s:%d: incomplete JSON row (torn by a kill?) dropped", path, n)
    return rows


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a folder (makes a rename in it durable); a no-op where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, then ``os.replace``.

    With ``fsync`` (default) the file and its folder are synced too, so the write also survives a
    power loss; without it the write is still atomic for any process crash (SIGKILL included).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, p)
    if fsync:
        fsync_dir(p.parent)
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj)`` (non-ASCII kept as is) and a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def repair_jsonl_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (a kill mid-write) off a JSON-lines file; returns the bytes cut.

    A file that ends in a newline is left alone. Without this, the next append would continue the
    torn line and both records would be lost to the reader.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return 0
    with open(p, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        # find the last newline without reading a large file whole
        pos, cut, block = size, 0, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: cut a torn last line (%d bytes) left by an interrupted run", p, size - cut)
    return size - cut


def append_jsonl(path: str | os.PathLike, rows: list[Any], fsync: bool = True) -> None:
    """Append ``rows`` as JSON lines after repairing a torn tail; flushed (and fsync-ed) before return."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(p)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(p, "ab") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------------
# Fingerprint
# ------------------------------------------------------------------------------------------------
def fingerprint(payload: Any) -> str:
    """16-hex-digit SHA-256 of the canonical JSON of ``payload``.

    >>> fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})
    True
    """
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


class FingerprintError(ValueError):
    """A folder made with other settings or inputs than the ones given to resume it."""


class RunFingerprint:
    """The settings and inputs that decide a run's rows, kept in ``OUT/run.json``.

    Args:
        stage: ``audit``, ``augment``, ``eval``, ``finetune`` (a folder of another stage is refused).
        settings: the config values that change rows (flattened to ``a.b`` keys for messages).
        inputs: named digests of the inputs (``{"prompts": "<sha>"}``).

    >>> fp = RunFingerprint("audit", {"samples": 2, "seed": 0}, {"prompts": "ab12"})
    >>> other = RunFingerprint("audit", {"samples": 3, "seed": 0}, {"prompts": "ab12"})
    >>> other.differences(fp.to_dict())
    ['samples: 3 here, 2 in the folder']
    """

    def __init__(self, stage: str, settings: Mapping[str, Any], inputs: Mapping[str, str] | None = None):
        self.stage = stage
        self.settings = _flatten(dict(settings))
        self.inputs = dict(inputs or {})
        self.digest = fingerprint({"stage": stage, "settings": self.settings, "inputs": self.inputs})

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "fingerprint": self.digest,
            "settings": self.settings,
            "inputs": self.inputs,
        }

    def differences(self, old: Mapping[str, Any]) -> list[str]:
        """Human-readable differences from a stored :meth:`to_dict` (empty when equal)."""
        diffs = []
        if old.get("stage") != self.stage:
            return [f"the folder holds a {old.get('stage')!r} run, not {self.stage!r}"]
        olds = old.get("settings") or {}
        for k in sorted(set(olds) | set(self.settings)):
            a, b = self.settings.get(k, "<unset>"), olds.get(k, "<unset>")
            if a != b:
                diffs.append(f"{k}: {_short(a)} here, {_short(b)} in the folder")
        oldi = old.get("inputs") or {}
        for k in sorted(set(oldi) | set(self.inputs)):
            if oldi.get(k) != self.inputs.get(k):
                diffs.append(f"{k} differ from the ones the folder was made from")
        return diffs

    def write(self, out_dir: str | os.PathLike, name: str = FINGERPRINT_NAME) -> Path:
        """Record this fingerprint in ``out_dir/name`` (``run.json``)."""
        return atomic_write_json(Path(out_dir) / name, self.to_dict())

    def check(
        self,
        out_dir: str | os.PathLike,
        fresh_hint: str = "run without --resume",
        name: str = FINGERPRINT_NAME,
    ) -> None:
        """Raise :class:`FingerprintError` when ``out_dir/run.json`` records other settings or inputs.

        A folder without ``run.json`` (made before fingerprints were kept) passes with a warning.
        The message is one line: what differs, and the two ways out (start fresh / resume as made).
        """
        path = Path(out_dir) / name
        if not path.is_file():
            logger.warning("%s records no settings fingerprint; resuming without a check", out_dir)
            return
        msg = self.mismatch(read_json(path), f"{out_dir} was made", fresh_hint)
        if msg:
            raise FingerprintError(msg)

    def mismatch(self, old: Any, where: str, fresh_hint: str) -> str | None:
        """The one-line error for a stored fingerprint ``old`` that differs from this one, else None.

        ``where`` starts the message (``"OUT was made"``); ``fresh_hint`` names how to start fresh.
        """
        if not isinstance(old, dict) or old.get("fingerprint") == self.digest:
            return None
        diffs = self.differences(old)
        if not diffs:
            return None
        as_made = [
            f"{k}={_short(v)}"
            for k, v in (old.get("settings") or {}).items()
            if self.settings.get(k, "<unset>") != v
        ]
        how = f"{fresh_hint} (or use another --out) to start fresh"
        if as_made:
            how += f", or resume as it was made with {' '.join(as_made[:6])}"
            how += " ..." if len(as_made) > 6 else ""
        return f"{where} with other settings ({'; '.join(diffs[:4])}); {how}"


def _short(v: Any, limit: int = 40) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------
# Lock
# ------------------------------------------------------------------------------------------------
class RunLockedError(ValueError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """Exclusive ``OUT/.lock`` for the life of one run (``with RunLock(out): ...``).

    Uses ``fcntl.flock``: the lock belongs to the open file, so the kernel releases it when the
    process ends in any way. The file holds the owner's pid for the message. Where ``fcntl`` does
    not exist (Windows) the lock is a no-op.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fh: Any = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover — Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 — held open for the life of the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by another run (pid {owner}); wait for it to end or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ------------------------------------------------------------------------------------------------
# Timing, bounds, estimates, paths
# ------------------------------------------------------------------------------------------------
class Timer:
    """Wall time per named block: ``with timer("load"): ...``; totals in :attr:`t` (seconds)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0


def check_max(name: str, value: float, upper: float, why: str = "") -> None:
    """Raise ``ValueError("name: must be <= upper, got value")`` when ``value`` exceeds ``upper``.

    >>> check_max("samples", 100000000, 4096)
    Traceback (most recent call last):
    ...
    ValueError: samples: must be <= 4096, got 100000000
    """
    if value > upper:
        raise ValueError(f"{name}: must be <= {upper}, got {value}" + (f" ({why})" if why else ""))


def estimate_line(what: str, items: int, seconds_per_item: float | None, unit: str = "prompts") -> str:
    """One line announcing a run's size and, when a rate is known, its expected wall time.

    >>> estimate_line("audit", 100000, 0.5)
    'audit: 100000 prompts, about 13.9 h at 0.5 s per prompt'
    """
    line = f"{what}: {items} {unit}"
    if seconds_per_item:
        total = items * seconds_per_item
        human = (
            f"{total:.0f} s"
            if total < 120
            else f"{total / 60:.0f} min"
            if total < 7200
            else f"{total / 3600:.1f} h"
        )
        line += f", about {human} at {seconds_per_item:g} s per {unit.rstrip('s')}"
    return line


def inside(base: str | os.PathLike, rel: str | os.PathLike, what: str = "path") -> Path:
    """``base / rel`` resolved, refused (ValueError) unless it stays inside ``base``.

    Paths read from data files (``mesh`` columns of parquet tables and pair datasets) go through
    this, so a row cannot make a stage read ``/etc/passwd`` or ``../../secret``.

    >>> inside("/data/audit", "meshes/a.glb").as_posix()
    '/data/audit/meshes/a.glb'
    >>> inside("/data/audit", "/etc/passwd", "mesh")
    Traceback (most recent call last):
    ...
    ValueError: mesh '/etc/passwd' points outside /data/audit
    """
    b = Path(base).resolve()
    p = (b / Path(rel)).resolve()
    if p != b and b not in p.parents:
        raise ValueError(f"{what} {str(rel)!r} points outside {Path(base)}")
    return p
