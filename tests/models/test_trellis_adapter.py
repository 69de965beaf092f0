"""Real-TRELLIS adapter, run against a fake ``trellis`` package built from the mini model's modules.

The fake pipeline returns what ``TrellisTextTo3DPipeline.run(formats=["gaussian", "mesh"])`` does:
``MeshExtractResult``-like meshes (``vertices`` / ``faces`` tensors, z-up in ``[-0.5, 0.5]^3``,
``vertex_attrs``) and ``Gaussian``-like objects (``get_xyz``, ``get_features`` SH coefficients,
``get_opacity``); its ``to_glb`` rotates to y-up as TRELLIS's does and counts the bakes. (The real
``postprocessing_utils`` needs CUDA-only packages: nvdiffrast, utils3d.)
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

FAKE_PIPELINES = '''
"""Fake trellis.pipelines: TRELLIS's API, mini-TRELLIS inside."""
import numpy as np
import torch
from debias3d.models.backbone.generator import MiniTrellisGenerator

C0 = 0.28209479177387814
CALLS = []


class MeshExtractResult:
    def __init__(self, vertices, faces, vertex_attrs=None):
        self.vertices, self.faces, self.vertex_attrs = vertices, faces.long(), vertex_attrs


class Gaussian:
    """Degree-0 Gaussians at the mesh vertices: red above z = 0, blue below; plus one transparent
    green Gaussian at the origin that must be ignored."""

    def __init__(self, xyz):
        rgb = torch.where(xyz[:, 2:3] > 0, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
        self.get_xyz = torch.cat([xyz, torch.zeros(1, 3)])
        rgb = torch.cat([rgb, torch.tensor([[0.0, 1.0, 0.0]])])
        self.get_features = ((rgb - 0.5) / C0)[:, None, :]
        self.get_opacity = torch.cat([torch.ones(len(xyz), 1), torch.zeros(1, 1)])


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

    def to(self, device):
        return self

    def run(self, prompt, num_samples=1, seed=42, sparse_structure_sampler_params={},
            slat_sampler_params={}, formats=("mesh", "gaussian", "radiance_field")):
        CALLS.append(dict(prompt=prompt, num_samples=num_samples, seed=seed, ss=sparse_structure_sampler_params,
                          slat=slat_sampler_params, formats=list(formats)))
        assets = self._gen.generate([prompt], seeds=[seed], num_samples=num_samples,
                                    sparse_structure_sampler_params=sparse_structure_sampler_params,
                                    slat_sampler_params=slat_sampler_params)
        meshes, gaussians = [], []
        for a in assets:
            v = torch.tensor(np.asarray(a.mesh.vertices) * 0.5, dtype=torch.float32)  # TRELLIS frame
            meshes.append(MeshExtractResult(v, torch.tensor(np.asarray(a.mesh.faces), dtype=torch.int32)))
            gaussians.append(Gaussian(v))
        return {"mesh": meshes, "gaussian": gaussians}
'''

FAKE_POST = """
import numpy as np
import trimesh

BAKES = []
POSTPROCESS = []


def postprocess_mesh(vertices, faces, simplify=True, simplify_ratio=0.9, fill_holes=True, verbose=False, **kw):
    POSTPROCESS.append(dict(simplify=simplify, simplify_ratio=simplify_ratio, fill_holes=fill_holes))
    return vertices, faces


def to_glb(app_rep, mesh, simplify=0.95, texture_size=1024, fill_holes=True, debug=False, verbose=True):
    BAKES.append(texture_size)
    v = mesh.vertices.numpy() @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])  # z-up -> y-up
    return trimesh.Trimesh(v, mesh.faces.numpy(), process=False)
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
    # the fake needs no flash-attn / xformers: an explicit backend skips the adapter's check
    monkeypatch.setenv("ATTN_BACKEND", "sdpa")
    monkeypatch.setenv("SPARSE_ATTN_BACKEND", "flash_attn")
    tiny_generator.config = replace(tiny_generator.config, text_encoder_path=str(tiny_bert_dir))
    weights = tiny_generator.save_pretrained(tmp_path / "weights")
    yield weights
    for mod in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        sys.modules.pop(mod, None)


def _cfg(**kw):
    from debias3d.models.trellis import TrellisConfig

    return TrellisConfig(
        device="cpu",
        sparse_structure_sampler_params={"steps": 3, "cfg_strength": 1.0},
        slat_sampler_params={"steps": 2, "cfg_strength": 0.0},
        **kw,
    )


def _reference(tiny_generator):
    return tiny_generator.generate(
        ["a red vase"],
        seeds=[4],
        num_samples=2,
        sparse_structure_sampler_params={"steps": 3, "cfg_strength": 2.0},
        slat_sampler_params={"steps": 2, "cfg_strength": 2.0},
    )


@pytest.mark.parametrize("export", ["vertex_colors", "textured"])
def test_adapter_runs_trellis_api(fake_trellis, tiny_generator, export):
    from debias3d.models.trellis import TrellisGenerator
    from debias3d.registry import find

    assert find("generator", "trellis") is TrellisGenerator
    gen = TrellisGenerator(fake_trellis, config=_cfg(export=export))
    assert set(gen.flow_models) == {"stage1", "stage2"}
    assert "to_qkv" in dict(gen.flow_models["stage1"].named_modules())["blocks.0.self_attn"]._modules
    # (the textured case samples one prompt: the seeds / prompt-major order are checked once)
    prompts, seeds = (["a red vase", "a cup"], [4, 9]) if export == "vertex_colors" else (["a red vase"], [4])
    assets = gen.generate(prompts, seeds=seeds, num_samples=2, cfg=2.0, batch_size=8)
    calls = sys.modules["trellis.pipelines"].CALLS
    assert [c["seed"] for c in calls] == seeds and all(c["num_samples"] == 2 for c in calls)
    assert all(c["formats"] == ["gaussian", "mesh"] for c in calls)
    assert calls[0]["ss"] == {"steps": 3, "cfg_strength": 2.0} and calls[0]["slat"]["cfg_strength"] == 2.0
    assert len(assets) == 2 * len(prompts) and [a.metadata["sample"] for a in assets[:2]] == [0, 1]
    assert all(a.metadata["export"] == export for a in assets)
    post = sys.modules["trellis.utils.postprocessing_utils"]
    assert len(post.BAKES) == (2 if export == "textured" else 0)  # no texture bake for vertex colours
    if export == "vertex_colors":
        assert post.POSTPROCESS and all(not c["fill_holes"] for c in post.POSTPROCESS)
    # back in our frame (z up, [-1, 1]^3): voxelising gives the mini model's own grid
    for a, r in zip(assets[:2], _reference(tiny_generator), strict=True):
        np.testing.assert_allclose(a.mesh.bounds, r.mesh.bounds, atol=1e-6)
        np.testing.assert_array_equal(a.voxels.occupancy, r.voxels.occupancy)


def test_vertex_colors_come_from_the_gaussians(fake_trellis):
    from debias3d.models.trellis import TrellisGenerator

    gen = TrellisGenerator(fake_trellis, config=_cfg(simplify=0.0))
    (asset,) = gen.generate(["a red vase"], seeds=[4], num_samples=1)
    v = np.asarray(asset.mesh.vertices)
    rgb = np.asarray(asset.mesh.visual.vertex_colors)[:, :3]
    assert len(rgb) == len(v) > 0
    want = np.where(v[:, 2:3] > 0, [[255, 0, 0]], [[0, 0, 255]])  # nearest opaque Gaussian's colour
    np.testing.assert_array_equal(rgb, want)
    assert not sys.modules["trellis.utils.postprocessing_utils"].POSTPROCESS  # simplify=0: no decimation
    # the GLB keeps them (what the audit writes to meshes/)
    import trimesh

    glb = trimesh.load(trimesh.util.wrap_as_stream(asset.mesh.export(file_type="glb")), file_type="glb")
    got = next(iter(glb.geometry.values())) if hasattr(glb, "geometry") else glb
    assert got.visual.kind == "vertex" and len(got.visual.vertex_colors) == len(v)


def test_mesh_vertex_colors_from_decoder_attrs():
    import torch

    from debias3d.models.trellis import mesh_vertex_colors

    class Mesh:
        vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        vertex_attrs = torch.tensor([[1.0, 0.5, -0.2, 0, 0, 1], [0.0, 2.0, 0.25, 0, 0, 1]])

    got = mesh_vertex_colors(np.array([[0.1, 0, 0], [0.9, 0, 0]]), mesh=Mesh(), source="mesh")
    np.testing.assert_array_equal(got, [[255, 128, 0], [0, 255, 64]])  # clipped to [0, 1], nearest vertex
    grey = mesh_vertex_colors(np.zeros((2, 3)), mesh=type("M", (), {"vertex_attrs": None})(), source="mesh")
    assert (grey == 128).all()


def test_audit_builds_the_trellis_generator(fake_trellis):
    """The audit passes ``device`` (it used to crash: unexpected keyword argument 'device')."""
    from debias3d.bias_audit.config import AuditConfig
    from debias3d.bias_audit.pipeline import build_models_generator
    from debias3d.models.trellis import TrellisGenerator

    cfg = AuditConfig(generator="trellis", generator_weights=str(fake_trellis), device="cpu")
    gen, _ = build_models_generator(cfg, evaluator=None)
    assert isinstance(gen, TrellisGenerator) and gen.config.device == "cpu"
    assert gen.config.export == "vertex_colors"  # audits skip texture baking by default


def test_audit_generator_options_from_the_shipped_config(fake_trellis):
    """configs/trellis/audit.yaml's generator_options reach the adapter; the baked GLB is one option away."""
    from pathlib import Path

    from debias3d.bias_audit.config import AuditConfig
    from debias3d.bias_audit.pipeline import build_models_generator
    from debias3d.config import load_config

    shipped = Path(__file__).resolve().parents[2] / "configs" / "trellis" / "audit.yaml"
    over = [f"generator_weights={fake_trellis}", "device=cpu"]
    gen, _ = build_models_generator(load_config(AuditConfig, shipped, over), evaluator=None)
    assert gen.config.export == "vertex_colors" and gen.config.slat_sampler_params["steps"] == 25
    cfg = load_config(AuditConfig, shipped, [*over, "generator_options.export=textured"])
    gen, _ = build_models_generator(cfg, evaluator=None)
    assert gen.config.export == "textured"
    cfg = load_config(AuditConfig, shipped, [*over, "generator_options.texure_size=512"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['texure_size'\]"):
        build_models_generator(cfg, evaluator=None)


def test_unknown_option_is_one_line(fake_trellis):
    from debias3d.models.trellis import TrellisGenerator

    with pytest.raises(ValueError, match=r"unknown option\(s\) \['texure_size'\]") as e:
        TrellisGenerator.from_pretrained(fake_trellis, device="cpu", texure_size=512)
    assert "texture_size" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="export must be"):
        TrellisGenerator.from_pretrained(fake_trellis, device="cpu", export="obj")


@pytest.mark.parametrize(
    "installed,env,want",
    [
        ({"flash_attn"}, {}, ("", "")),  # TRELLIS's default
        ({"xformers"}, {}, ("xformers", "xformers")),
        ({"xformers", "flash_attn"}, {}, ("", "")),
        (set(), {"ATTN_BACKEND": "sdpa", "SPARSE_ATTN_BACKEND": "xformers"}, ("sdpa", "xformers")),
    ],
)
def test_attention_backend_auto(monkeypatch, installed, env, want):
    import importlib.util

    from debias3d.models import trellis as tr

    real = importlib.util.find_spec
    monkeypatch.setattr(
        tr.importlib.util,
        "find_spec",
        lambda name, *a: (
            object()
            if name in installed
            else (None if name in ("flash_attn", "xformers") else real(name, *a))
        ),
    )
    for k in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got = tr.configure_attention_backend("auto")
    assert (got["ATTN_BACKEND"], got["SPARSE_ATTN_BACKEND"]) == want


def test_attention_backend_missing_says_what_to_install(monkeypatch):
    from debias3d.models import trellis as tr

    monkeypatch.setattr(tr.importlib.util, "find_spec", lambda name, *a: None)
    for k in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(tr.TrellisNotInstalledError) as e:
        tr.configure_attention_backend("auto")
    msg = str(e.value)
    assert "flash-attn" in msg and "xformers" in msg and "SPARSE_ATTN_BACKEND=xformers" in msg
    assert "\n" not in msg
    with pytest.raises(tr.TrellisNotInstalledError, match="xformers package is not installed"):
        tr.configure_attention_backend("xformers")


def test_missing_trellis_gives_install_hint(monkeypatch):
    from debias3d.models.trellis import INSTALL_HINT, TrellisGenerator, TrellisNotInstalledError

    monkeypatch.setitem(sys.modules, "trellis", None)  # import of trellis fails
    with pytest.raises(TrellisNotInstalledError) as e:
        TrellisGenerator("microsoft/TRELLIS-text-base")
    msg = str(e.value)
    assert isinstance(e.value, ImportError) and "\n" not in msg
    assert "git clone" in msg and "microsoft/TRELLIS" in msg and "PYTHONPATH" in msg and "trellis-3d" in msg
    # the hint names a working attention setup: flash-attn, or xformers with both variables set
    assert (
        "--flash-attn" in INSTALL_HINT
        and "ATTN_BACKEND=xformers SPARSE_ATTN_BACKEND=xformers" in INSTALL_HINT
    )
    with pytest.raises(TrellisNotInstalledError):
        TrellisGenerator.check_available()


def test_audit_command_without_trellis_is_one_line(monkeypatch, tmp_path, capsys):
    """``accelerate launch -m debias3d.bias_audit`` with ``generator: trellis`` and no TRELLIS: one
    line with the install steps, no traceback."""
    from debias3d.bias_audit.__main__ import main

    monkeypatch.setitem(sys.modules, "trellis", None)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red vase\n")
    rc = main(["--prompts", str(prompts), "--out", str(tmp_path / "o"), "generator=trellis", "device=cpu",
               "samples=1", "report=false", "heatmaps=false"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: The 'trellis' generator needs Microsoft TRELLIS")
    assert "Traceback" not in "\n".join(err)


def test_empty_mesh_is_a_clear_error(fake_trellis):
    import torch

    from debias3d.models.trellis import TrellisGenerator

    gen = TrellisGenerator(fake_trellis, config=_cfg())
    empty = sys.modules["trellis.pipelines"].MeshExtractResult(
        torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int32)
    )
    gen.pipeline.run = lambda *a, **k: {"mesh": [empty], "gaussian": [None]}
    with pytest.raises(ValueError, match=r"empty mesh for 'a cup' \(seed 1, sample 0\)"):
        gen.generate(["a cup"], seeds=[1])
