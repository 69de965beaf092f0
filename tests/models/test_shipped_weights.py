"""The shipped mini-TRELLIS weights: present, small, loadable, and they generate shapes."""

from __future__ import annotations

import json

import pytest

from debias3d.models.backbone.generator import CONFIG_NAME, DEFAULT_WEIGHTS_DIR, RECORD_NAME, WEIGHTS_NAME

pytestmark = pytest.mark.skipif(
    not (DEFAULT_WEIGHTS_DIR / WEIGHTS_NAME).is_file(), reason="shipped weights not built yet"
)


def test_shipped_files_and_size():
    total = sum(f.stat().st_size for f in DEFAULT_WEIGHTS_DIR.iterdir() if f.is_file())
    assert total <= 20 * 2**20
    record = json.loads((DEFAULT_WEIGHTS_DIR / RECORD_NAME).read_text())
    assert {"seed", "stages", "corpus"} <= set(record)
    assert json.loads((DEFAULT_WEIGHTS_DIR / CONFIG_NAME).read_text())["text_encoder"] == "minilm"


def test_shipped_generator_generates():
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    gen = MiniTrellisGenerator.from_pretrained()
    assert gen.metadata["training_record"]["stages"]["stage1"]["steps"] > 0
    assets = gen.generate(["a red vase", "a tall blue tower"], seeds=[0, 1], num_samples=1, steps=8)
    assert len(assets) == 2
    for a in assets:
        assert 5 <= a.voxels.occupancy.sum() <= 16**3 // 2  # a shape, not noise
        assert len(a.mesh.faces) > 0
