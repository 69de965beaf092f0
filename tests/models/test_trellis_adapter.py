"""Real-TRELLIS adapter, run against a fake ``trellis`` package built from the mini model's modules."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

FAKE_PIPELINES = '''
"""Fake trellis.pipelines: TRELLIS's API, mini-TRELLIS inside."""
import numpy as np
from debias3d.models.backbone.generator import MiniTrellisGenerator

Z_UP_TO_Y_UP = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
CALLS = []


class TrellisTextTo3DPipeline:
    def __init__(self, gen):
        self._gen = gen
        self.models = {
            "sparse_structure_flow_model": gen.stage1,
            "slat_flow_model": gen.stage2,
        }

    @staticmethod
    def from_pretrained(path):
        return TrellisTextTo3DPipeline(MiniTrellisGenerator.from_pretrained(path))

    def cuda(self):
        return self

    def run(self, prompt, num_samples=1, seed=42, sparse_structure_sampler_params={},
            slat_sampler_params={}, formats=("mesh", "gaussian", "radiance_field")):
        CALLS.append(dict(prompt=prompt, num_samples=num_samples, seed=seed, ss=sparse_structure_sampler_params,
                          slat=slat_sampler_params, formats=list(formats)))
        assets = self._gen.generate([prompt], seeds=[seed], num_samples=num_samples,
                                    sparse_structure_sampler_params=sparse_structure_sampler_params,
                                    slat_sampler_params=slat_sampler_params)
        meshes = []
        for a in assets:
            m = a.mesh.copy()
            m.vertices = (np.asarray(m.vertices) @ Z_UP_TO_Y_UP) * 0.5  # TRELLIS frame: y-up, [-0.5, 0.5]^3
            meshes.append(m)
        return {"mesh": meshes, "gaussian": assets}
'''

FAKE_POST = """
def to_glb(app_rep, mesh, simplify=0.95, texture_size=1024, fill_holes=True, debug=False, verbose=True):
    return mesh
"""


@pytest.fixture()
def fake_trellis(tmp_path, monkeypatch, tiny_generator, tiny_bert_dir):
    root = tmp_path / "fake_trellis_src"
    (root / "trellis" / "pipelines").mkdir(parents=True)
    (root / "trellis" / "utils").mkdir(parents=True)
    (root / "trellis" / "__init__.py").write_text("")
    (root / "trellis" / "pipelines" / "__init__.py").write_text(textwrap.dedent(FAKE_PIPELINES))
    (root / "trellis" / "utils" / "__init__.py").write_text("")
    (root / "trellis" / "utils" / "postprocessing_utils.py").write_text(textwrap.dedent(FAKE_POST))
    for mod in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(root))
    tiny_generator.config = replace(tiny_generator.config, text_encoder_path=str(tiny_bert_dir))
    weights = tiny_generator.save_pretrained(tmp_path / "weights")
    yield weights
    for mod in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        sys.modules.pop(mod, None)


def test_adapter_runs_trellis_api(fake_trellis, tiny_generator):
    from debias3d.models.trellis import TrellisConfig, TrellisGenerator
    from debias3d.registry import find

    assert find("generator", "trellis") is TrellisGenerator
    cfg = TrellisConfig(
        device="cpu",
        sparse_structure_sampler_params={"steps": 3, "cfg_strength": 1.0},
        slat_sampler_params={"steps": 2, "cfg_strength": 0.0},
    )
    gen = TrellisGenerator(fake_trellis, config=cfg)
    assert set(gen.flow_models) == {"stage1", "stage2"}
    assert "to_qkv" in dict(gen.flow_models["stage1"].named_modules())["blocks.0.self_attn"]._modules
    assets = gen.generate(["a red vase", "a cup"], seeds=[4, 9], num_samples=2, cfg=2.0)
    calls = sys.modules["trellis.pipelines"].CALLS
    assert [c["seed"] for c in calls] == [4, 9] and all(c["num_samples"] == 2 for c in calls)
    assert calls[0]["ss"] == {"steps": 3, "cfg_strength": 2.0} and calls[0]["slat"]["cfg_strength"] == 2.0
    assert len(assets) == 4 and [a.metadata["sample"] for a in assets] == [0, 1, 0, 1]
    # back in our frame (z up, [-1, 1]^3): voxelising gives the mini model's own grid
    ref = tiny_generator.generate(
        ["a red vase"],
        seeds=[4],
        num_samples=2,
        sparse_structure_sampler_params={"steps": 3, "cfg_strength": 2.0},
        slat_sampler_params={"steps": 2, "cfg_strength": 2.0},
    )
    for a, r in zip(assets[:2], ref, strict=True):
        np.testing.assert_allclose(a.mesh.bounds, r.mesh.bounds, atol=1e-6)
        np.testing.assert_array_equal(a.voxels.occupancy, r.voxels.occupancy)


def test_missing_trellis_gives_install_hint(monkeypatch):
    from debias3d.models.trellis import TrellisGenerator, TrellisNotInstalledError

    monkeypatch.setitem(sys.modules, "trellis", None)  # import of trellis fails
    with pytest.raises(TrellisNotInstalledError) as e:
        TrellisGenerator("microsoft/TRELLIS-text-base")
    msg = str(e.value)
    assert isinstance(e.value, ImportError)
    assert "git clone" in msg and "microsoft/TRELLIS" in msg and "PYTHONPATH" in msg and "trellis-3d" in msg
