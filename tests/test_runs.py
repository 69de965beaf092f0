"""The run toolkit: torn tails, atomic writes, fingerprints, the lock (also after SIGKILL), bounds, paths."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from debias3d.runs import (
    FingerprintError,
    RunFingerprint,
    RunLock,
    RunLockedError,
    append_jsonl,
    atomic_write_json,
    inside,
    read_jsonl,
    repair_jsonl_tail,
)


def test_append_after_a_torn_tail_keeps_every_whole_record(tmp_path):
    f = tmp_path / "r.jsonl"
    append_jsonl(f, [{"a": 1}, {"a": 2}])
    f.write_bytes(f.read_bytes() + b'{"a": 3, "b"')  # a kill mid-write
    append_jsonl(f, [{"a": 4}])
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}, {"a": 4}]
    assert repair_jsonl_tail(f) == 0


def test_atomic_write_leaves_no_temp_file(tmp_path):
    atomic_write_json(tmp_path / "s.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_fingerprint_check_names_the_differences_and_both_ways_out(tmp_path):
    RunFingerprint("audit", {"samples": 2, "attribution": {"n_steps": 8}}, {"prompts": "a"}).write(tmp_path)
    RunFingerprint("audit", {"samples": 2, "attribution": {"n_steps": 8}}, {"prompts": "a"}).check(tmp_path)
    with pytest.raises(FingerprintError) as err:
        RunFingerprint("audit", {"samples": 2, "attribution": {"n_steps": 16}}, {"prompts": "b"}).check(
            tmp_path
        )
    msg = str(err.value)
    assert "attribution.n_steps: 16 here, 8 in the folder" in msg and "prompts differ" in msg
    assert "attribution.n_steps=8" in msg and "\n" not in msg
    with pytest.raises(FingerprintError, match="holds a 'audit' run"):
        RunFingerprint("eval", {"samples": 2}).check(tmp_path)


def test_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    code = f"from debias3d.runs import RunLock; lock = RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); import time; time.sleep(60)"  # noqa: E501
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {p.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    time.sleep(0.1)
    with RunLock(tmp_path):  # the kernel dropped the killed process's lock
        pass


def test_paths_from_data_stay_inside(tmp_path):
    (tmp_path / "meshes").mkdir()
    assert inside(tmp_path, "meshes/a.glb") == (tmp_path / "meshes" / "a.glb").resolve()
    for bad in ("/etc/passwd", "../x.glb", "meshes/../../x.glb"):
        with pytest.raises(ValueError, match="points outside"):
            inside(tmp_path, bad, "mesh")
