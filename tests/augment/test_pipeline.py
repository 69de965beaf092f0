"""End-to-end augmentation on a tiny audit: dataset contract, resume, status, report, job store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from debias3d.augment.config import AugmentConfig
from debias3d.augment.job import JobStore, read_records
from debias3d.augment.pipeline import augment_command, load_sources, run_augment, status_command
from debias3d.augment.report import render_report
from debias3d.config import ConfigError, load_config

BASE = [
    "num_threads=1",
    "visual.ranker=standin",
    "contexts=3",
    "progress=false",
    "report_examples=4",
    "thumbnail_size=32",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, audit_dir):
    out = tmp_path_factory.mktemp("aug")
    cfg = load_config(AugmentConfig, overrides=BASE)
    return out, cfg, run_augment(audit_dir, cfg, out)


def test_dataset_contract(run):
    from datasets import load_from_disk

    out, cfg, summary = run
    ds = load_from_disk(str(out / "pairs"))
    expected = {"prompt", "source_prompt", "source_prompt_id", "w_h", "w_l", "strategy", "pair_type", "mesh",
                "occupancy", "colors", "seed", "ranker_score_new", "ranker_score_orig", "winner", "provenance"}  # fmt: skip
    assert expected <= set(ds.column_names)
    assert len(ds) == summary["pairs"]["rows"] > 0
    for row in ds:
        assert row["winner"] and row["ranker_score_new"] > row["ranker_score_orig"]
        assert (out / row["mesh"]).is_file() and row["mesh"].startswith("meshes/")
        assert (
            len(row["occupancy"]) == 16**3 and len(row["colors"]) == 3 * 16**3 and sum(row["occupancy"]) > 0
        )
        prov = json.loads(row["provenance"])
        assert prov["source_prompt_id"] == row["source_prompt_id"] and prov["keep_words"]
        if row["pair_type"] == "source_prompt":
            assert row["prompt"] == row["source_prompt"]
        else:
            assert row["prompt"] == prov["new_prompt"] != row["source_prompt"]
            assert row["w_h"].rstrip("s") in row["prompt"].lower()
    # many-to-many: each winning x_nc gives both pairs with the same mesh
    by_mesh = {}
    for row in ds:
        by_mesh.setdefault(row["mesh"], []).append(row["pair_type"])
    assert all(sorted(v) == ["new_prompt", "source_prompt"] for v in by_mesh.values())


def test_summary_rejected_and_report(run):
    out, _cfg, s = run
    assert s["filter"]["candidates"] == 18 and 0 < s["filter"]["acceptance_rate"] <= 1
    assert s["filter"]["diversity_mean"] > 0
    assert s["visual"]["wins"] + s["visual"]["losses"] + s["visual"]["failed"] == s["visual"]["items"]
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert (
        sum(r["stage"] == "visual" and r["reason"] == "ranker_lost" for r in rejected)
        == s["visual"]["losses"]
    )
    assert all(r["reason"] and "detail" in r for r in rejected)
    html = (out / "report.html").read_text()
    assert "Augmentation report" in html and "data:image/png;base64," in html
    assert json.loads((out / "summary.json").read_text())["pairs"] == s["pairs"]


def test_rerun_skips_finished_items(run, audit_dir):
    out, cfg, first = run
    before = sum(1 for p in (out / "job").glob("records-*.jsonl") for _ in p.open())
    again = run_augment(audit_dir, cfg, out)
    after = sum(1 for p in (out / "job").glob("records-*.jsonl") for _ in p.open())
    assert before == after
    assert again["pairs"] == first["pairs"] and again["run_id"] == first["run_id"]
    text = status_command(out)
    assert "finished: True" in text and "semantic       6 done" in text


def test_changed_backend_setting_reruns_visual_items(run, audit_dir, tmp_path):
    out, cfg, _ = run
    records, _ = read_records(out / "job")
    cfg2 = load_config(AugmentConfig, overrides=[*BASE, "visual.mesh_resolution=24", "report=false"])
    run_augment(audit_dir, cfg2, out)
    records2, _ = read_records(out / "job")
    new = [r for k, r in records2.items() if k not in records]
    assert new and {r["kind"] for r in new} == {"visual"}


def test_original_first_vs_best(audit_dir):
    first = load_sources(audit_dir, load_config(AugmentConfig, overrides=["original=first"]))
    best = load_sources(audit_dir, load_config(AugmentConfig, overrides=["original=best"]))
    assert {s.sample for s in first} == {0} and {s.sample for s in best} == {1}
    assert first[0].keep_words == ("vase", "long")


def test_augment_command_config_errors(audit_dir, tmp_path):
    with pytest.raises(ConfigError, match="strategy"):
        augment_command(audit_dir, None, ["strategy=sometimes"], tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        augment_command(audit_dir, None, ["llm.modle=x"], tmp_path)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    sw = load_config(AugmentConfig, root / "shapeworld" / "augment.yaml")
    assert sw.contexts == 5 and sw.llm.backend == "template"
    tr = load_config(AugmentConfig, root / "trellis" / "augment.yaml")
    assert tr.llm.backend == "openai" and tr.world == "open"


def test_report_escapes_script():
    evil = '<script>alert("x")</script> a red vase'
    summary = {
        "sources": 1, "contexts_per_source": 1, "strategy": "both",
        "filter": {"candidates": 1, "accepted": 1, "acceptance_rate": 1.0, "diversity_mean": None, "rejected_by_reason": {}},
        "visual": {"items": 1, "failed": 0, "wins": 1, "losses": 0, "win_rate": 1.0},
        "pairs": {"rows": 2, "new_prompt": 1, "source_prompt": 1},
        "llm": {"backend": "openai", "requests": 1, "prompt_tokens": 1, "completion_tokens": 1, "cost": 0.0, "items_failed": 0},
    }  # fmt: skip
    acc = [{"prompt": evil, "source_prompt": "a vase", "keep": "vase", "score_new": 1.0, "score_orig": 0.5, "winner": True,
            "thumb_new": "", "thumb_orig": ""}]  # fmt: skip
    rej = [
        {
            "prompt": evil,
            "source_prompt": evil,
            "stage": "filter",
            "reason": "off_vocabulary",
            "detail": evil,
            "thumb": "",
        }
    ]
    html = render_report(summary, acc, rej)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_job_store_torn_line_and_atomic_files(tmp_path):
    store = JobStore(tmp_path / "job", shard=0)
    store.append("k1", "semantic", "done", {"x": 1})
    with open(store.path, "ab") as f:
        f.write(b'{"key": "k2", "kind": "sem')  # a crash mid-write
    again = JobStore(tmp_path / "job", shard=0)
    assert again.done("k1") and not again.done("k2")
    again.append("k2", "semantic", "failed", {"x": 2})
    recs, torn = read_records(tmp_path / "job")
    assert set(recs) == {"k1", "k2"} and torn == 0
    assert not JobStore(tmp_path / "job", retry_failed=True).done("k2")
    p = store.write_file(tmp_path / "m" / "a.bin", b"abc")
    assert p.read_bytes() == b"abc" and not list(p.parent.glob(".*tmp*"))
    assert store.bookkeeping_s > 0


def test_voxels_in_dataset_match_mesh_files(run):
    from datasets import load_from_disk

    from debias3d.data.assets import load_mesh
    from debias3d.data.shapeworld.voxelize import mesh_to_voxels

    out, _cfg, _ = run
    row = load_from_disk(str(out / "pairs"))[0]
    occ = np.array(row["occupancy"], np.uint8).reshape(16, 16, 16)
    mesh_occ = mesh_to_voxels(load_mesh(out / row["mesh"]), 16).occupancy
    assert (occ.astype(bool) == mesh_occ).mean() > 0.9
