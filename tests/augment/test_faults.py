"""Fault suite of the augmentation job: zero results, unusable LLM answers, bad originals, lock, bounds.

Each job must end with its outputs written (possibly empty, with the reasons), one line per
problem, and nothing already finished lost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _helpers import AUDIT_PROMPTS, FakeOpenAI, make_audit

from debias3d.augment.config import AugmentConfig
from debias3d.augment.job import status
from debias3d.augment.pipeline import Components, run_augment, status_command
from debias3d.config import ConfigError, load_config
from debias3d.models.llm.base import ContextWriterBase, LLMResult
from debias3d.runs import RunLock, RunLockedError

BASE = ["num_threads=1", "visual.ranker=standin", "contexts=2", "progress=false", "thumbnail_size=32"]


class FailingWriter(ContextWriterBase):
    """A writer whose every answer is unusable."""

    name = "failing"

    def write(self, prompt, keep_words, n, seed):  # noqa: ANN001, ANN201
        return LLMResult(error="unusable answer: the body is an HTML page", attempts=2, cost=0.01)


def _cfg(*extra: str) -> AugmentConfig:
    return load_config(AugmentConfig, overrides=[*BASE, *extra])


@pytest.fixture(scope="module")
def small_audit(tmp_path_factory) -> Path:
    return make_audit(tmp_path_factory.mktemp("audit3"), AUDIT_PROMPTS[:3])


def _outputs_written(out: Path) -> dict:
    from datasets import load_from_disk

    for name in ("summary.json", "rejected.jsonl", "report.html"):
        assert (out / name).is_file(), name
    ds = load_from_disk(str(out / "pairs"))
    assert "prompt" in ds.column_names and "ranker_score_new" in ds.column_names
    return json.loads((out / "summary.json").read_text())


def test_zero_pairs_still_writes_every_output(small_audit, tmp_path):
    out = tmp_path / "z"
    summary = run_augment(small_audit, _cfg(), out, components=Components(_cfg(), writer=FailingWriter()))
    assert summary["pairs"]["rows"] == 0
    assert _outputs_written(out)["pairs"]["rows"] == 0
    o = summary["outcome"]
    assert o["sources"] == 3 and o["done"] == 0 and sum(o["failed"].values()) == 3
    assert o["line"].startswith("3 source prompts: 0 gave winning pairs, 3 failed (llm: unusable answer 3)")
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 3 and {r["reason"] for r in rejected} == {"llm_error"}
    html = (out / "report.html").read_text()
    assert "built-in method" not in html and "llm: llm_error: 3" in html
    # every attempt of the failed items is billed and counted
    assert summary["llm"]["requests"] == 6 and summary["llm"]["cost"] == pytest.approx(0.03)
    assert status(out)["finished"]


def test_cli_exit_status_when_nothing_came_out(small_audit, tmp_path):
    from typer.testing import CliRunner

    from debias3d.cli import app

    # the template writer cannot keep a word that is not in ShapeWorld: every source fails
    audit = tmp_path / "audit"
    shutil.copytree(small_audit, audit)
    p = pd.read_parquet(audit / "prompts.parquet")
    p["w_h"] = "astronaut"
    p["w_l"] = "horse"
    p.to_parquet(audit / "prompts.parquet")
    res = CliRunner().invoke(app, ["augment", "--audit", str(audit), "--out", str(tmp_path / "o"), *BASE])
    assert res.exit_code == 3, res.output
    assert "3 source prompts: 0 gave winning pairs, 3 failed" in res.output
    assert "no pairs came out" in res.output and "Traceback" not in res.output
    assert (tmp_path / "o" / "summary.json").is_file()


def _marked_audit(src: Path, dst: Path, markers: dict[str, str]) -> Path:
    shutil.copytree(src, dst)
    p = pd.read_parquet(dst / "prompts.parquet")
    p["prompt"] = [markers.get(pid, "") + t for pid, t in zip(p["prompt_id"], p["prompt"], strict=True)]
    p.to_parquet(dst / "prompts.parquet")
    return dst


def test_unusable_llm_answers_are_per_item_and_resume_does_not_loop(audit_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    markers = {"p001": "[html] ", "p002": "[nonjson] ", "p003": "[nullmsg] ", "p004": "[wrongshape] "}
    audit = _marked_audit(audit_dir, tmp_path / "audit", markers)
    llm = ["llm.backend=openai", "llm.model=fake", "llm.max_retries=0", "llm.timeout_s=5", "max_prompts=5"]
    with FakeOpenAI(fixed=True, max_requests=40) as srv:
        cfg = _cfg(f"llm.base_url={srv.base_url}", *llm, "filter.check_vocabulary=false",
                   "filter.check_buildable=false", "world=open")  # fmt: skip
        out = tmp_path / "o"
        s1 = run_augment(audit, cfg, out)
        sent = len(srv.requests)
        assert sent == 5
        assert s1["llm"]["items_failed"] == 4 and s1["llm"]["requests"] == 5
        assert set(s1["outcome"]["failed"]) >= {"llm: unusable answer"}
        rej = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
        llm_rej = {r["source_prompt_id"]: r["detail"] for r in rej if r["stage"] == "llm"}
        assert sorted(llm_rej) == sorted(markers)
        assert '"message" is null' in llm_rej["p003"]
        # the good answer that arrived is kept, and a resume asks for nothing again
        s2 = run_augment(audit, cfg, out)
        assert len(srv.requests) == sent and s2["outcome"] == s1["outcome"]
        # --retry-failed asks again for the failed ones only, once
        run_augment(audit, cfg, out, retry_failed=True)
        assert len(srv.requests) == sent + 4
        assert srv.refused == 0


BAD_MESHES = {
    "outside": "/etc/passwd",
    "dotdot": "../outside.glb",
    "empty_file": "meshes/empty.glb",
    "garbage": "meshes/garbage.glb",
    "empty_scene": "meshes/scene.glb",
}


def _empty_scene_glb() -> bytes:
    """A valid GLB whose scene holds nothing (trimesh refuses to write one)."""
    import struct

    js = json.dumps({"asset": {"version": "2.0"}, "scenes": [{"nodes": []}], "scene": 0}).encode()
    js += b" " * (-len(js) % 4)
    body = struct.pack("<II", len(js), 0x4E4F534A) + js
    return struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body


def test_bad_originals_are_skipped_with_a_reason_before_any_llm_call(small_audit, tmp_path):
    audit = tmp_path / "audit"
    shutil.copytree(small_audit, audit)
    (audit / "meshes" / "empty.glb").write_bytes(b"")
    (audit / "meshes" / "garbage.glb").write_bytes(b"glTF\x02\x00\x00\x00" + b"\x00" * 40)
    (audit / "meshes" / "scene.glb").write_bytes(_empty_scene_glb())
    (tmp_path / "outside.glb").write_bytes((audit / "meshes" / "p000_0.glb").read_bytes())
    s = pd.read_parquet(audit / "samples.parquet")
    p = pd.read_parquet(audit / "prompts.parquet")
    rows_p, rows_s = [], []
    for i, (name, path) in enumerate(BAD_MESHES.items()):
        pid = f"bad{i}"
        rows_p.append({**p.iloc[0].to_dict(), "prompt_id": pid, "prompt": f"a red vase {name}"})
        rows_s.append({**s.iloc[0].to_dict(), "prompt_id": pid, "mesh": path})
    pd.concat([p, pd.DataFrame(rows_p)]).to_parquet(audit / "prompts.parquet")
    pd.concat([s, pd.DataFrame(rows_s)]).to_parquet(audit / "samples.parquet")

    calls = []

    class CountingWriter(FailingWriter):
        def write(self, prompt, keep_words, n, seed):  # noqa: ANN001, ANN201
            calls.append(prompt)
            return super().write(prompt, keep_words, n, seed)

    out = tmp_path / "o"
    summary = run_augment(audit, _cfg(), out, components=Components(_cfg(), writer=CountingWriter()))
    assert not any("vase " in c and c.split()[-1] in BAD_MESHES for c in calls)
    assert summary["outcome"]["skipped"] == {"original_unusable": 5}
    rej = {r["source_prompt_id"]: r["detail"] for r in map(json.loads, (out / "rejected.jsonl").open())}
    assert "points outside" in rej["bad0"] and "points outside" in rej["bad1"]
    assert "0 bytes" in rej["bad2"] and "unreadable" in rej["bad3"] and "no faces" in rej["bad4"]
    assert all("\n" not in v for v in rej.values())


def test_status_finished_is_honest(small_audit, tmp_path):
    out = tmp_path / "o"
    run_augment(small_audit, _cfg("report=false"), out)
    assert status(out)["finished"]
    shard = next((out / "job").glob("records-*.jsonl"))
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:-1]))  # a record lost after the summary was written
    st = status(out)
    assert not st["finished"] and st["missing"] == 1
    assert "finished: False" in status_command(out)


def test_second_run_on_the_same_out_is_refused(small_audit, tmp_path):
    out = tmp_path / "o"
    with RunLock(out), pytest.raises(RunLockedError, match="in use by another run"):
        run_augment(small_audit, _cfg(), out)
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("override", "bound"),
    [
        ("contexts=100000000", "contexts: must be <= 100"),
        ("visual.ranking.level=99", "level must be in [0, 4]"),
        ("visual.resolution=100000", "visual.resolution: must be <= 128"),
        ("llm.concurrency=100000", "llm.concurrency: must be <= 256"),
        ("max_prompts=1000000000000", "max_prompts: must be <= 10000000"),
    ],
)
def test_size_settings_have_upper_bounds(override, bound):
    with pytest.raises(ConfigError) as err:
        load_config(AugmentConfig, overrides=[override])
    assert bound in str(err.value) and "\n" not in str(err.value)
