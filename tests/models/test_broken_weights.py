"""A damaged weights folder is a one-line ValueError that names the file, for every shipped model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "debias3d" / "assets"


def _load(kind: str, folder: Path):
    if kind == "mini_trellis":
        from debias3d.models.backbone.generator import MiniTrellisGenerator

        return MiniTrellisGenerator.from_pretrained(folder)
    if kind == "evaluator":
        from debias3d.models.evaluator.model import ShapeWorldHyperScore

        return ShapeWorldHyperScore.from_pretrained(folder)
    from debias3d.models.ranker.model import ShapeWorldRanker

    return ShapeWorldRanker.from_pretrained(folder)


@pytest.fixture(params=["mini_trellis", "evaluator", "ranker"])
def weights_copy(request, tmp_path):
    folder = tmp_path / request.param
    shutil.copytree(ASSETS / request.param, folder)
    return request.param, folder


def test_intact_copy_loads(weights_copy):
    kind, folder = weights_copy
    assert _load(kind, folder) is not None


def test_truncated_safetensors_names_the_file(weights_copy):
    kind, folder = weights_copy
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        _load(kind, folder)


def test_malformed_config_names_the_file_and_place(weights_copy):
    kind, folder = weights_copy
    (folder / "config.json").write_text('{"stage1": 3')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON \(.*line 1 column 13\)"):
        _load(kind, folder)


def test_read_jsonl_drops_a_torn_last_row_and_names_it(tmp_path, caplog):
    import logging

    from debias3d.bias_audit.pipeline import _read_shards
    from debias3d.models.persistence import read_jsonl

    shard = tmp_path / "shard-000.jsonl"
    shard.write_text('{"prompt_id": "a"}\n\n{"prompt_id": "b"}\n{"prompt_id": "c", "sc')
    with caplog.at_level(logging.WARNING, logger="debias3d.models.persistence"):
        assert read_jsonl(shard) == [{"prompt_id": "a"}, {"prompt_id": "b"}]
    assert [r.getMessage() for r in caplog.records] == [
        f"{shard}:4: incomplete JSON row (torn by a kill?) dropped"
    ]
    assert [r["prompt_id"] for r in _read_shards(tmp_path)] == ["a", "b"]
