"""Import the REAL ``trellis`` package (microsoft/TRELLIS @6b0d647) for tests, from
``<repo_root>/../shared/third_party`` (see its README), and build tiny real models.

* ``trellis`` and ``trellis.pipelines`` are registered as namespace modules (the package's
  ``__init__`` imports the image pipeline, which needs torchvision / rembg), so single modules
  import: ``trellis.models.sparse_structure_flow``, ``trellis.models.structured_latent_flow``,
  ``trellis.modules.sparse``, ``trellis.pipelines.base``, ...
* ``ATTN_BACKEND=sdpa`` for the dense blocks; ``SPARSE_ATTN_BACKEND=flash_attn`` with the pure-torch
  ``flash_attn_cpu`` stand-in on ``sys.path`` for the sparse ones (stage 2).
* Stage 2 needs ``spconv`` (CPU wheel) and ``easydict`` (dev dependencies); configs have no
  ``io_block_channels`` (``SparseConv3d`` does not run on CPU).
* TRELLIS zero-initialises its output layers and adaLN modulation: :func:`randomise_zero_init`
  fills them, or gradients to LoRA weights would be zero.

Tests that use this skip with the reason when ``../shared/third_party`` or a dependency is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stand_ins import byte_alphabet  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = REPO_ROOT.parent / "shared" / "third_party"
TRELLIS_SRC = THIRD_PARTY / "trellis" / "trellis"
FLASH_ATTN_CPU = THIRD_PARTY / "flash_attn_cpu"

#: tiny model configs in TRELLIS's own argument names (fp16 blocks, as the released models)
SS_ARGS = dict(
    resolution=8, in_channels=8, model_channels=32, cond_channels=16, out_channels=8,
    num_blocks=2, num_heads=2, patch_size=2, use_fp16=True,
)  # fmt: skip
SLAT_ARGS = dict(
    resolution=64, in_channels=8, model_channels=32, cond_channels=16, out_channels=8,
    num_blocks=2, num_heads=2, patch_size=2, use_fp16=True,
)  # fmt: skip


def skip_reason() -> str | None:
    """Why the real-TRELLIS tests cannot run here (None when they can)."""
    if not (TRELLIS_SRC / "models" / "sparse_structure_flow.py").is_file():
        return f"real TRELLIS source not found at {TRELLIS_SRC} (needs ../shared/third_party beside the repo)"
    if not (FLASH_ATTN_CPU / "flash_attn").is_dir():
        return f"flash_attn CPU stand-in not found at {FLASH_ATTN_CPU}"
    for mod in ("spconv", "easydict"):
        if importlib.util.find_spec(mod) is None:
            return f"real TRELLIS stage 2 needs {mod} (dev dependency: pip install -e '.[dev]')"
    return None


def drop_modules() -> None:
    for name in list(sys.modules):
        if name in ("trellis", "flash_attn") or name.startswith(("trellis.", "flash_attn.")):
            sys.modules.pop(name, None)


def install(monkeypatch) -> types.ModuleType:
    """Make ``import trellis.<module>`` load the real code (undone by ``monkeypatch`` + :func:`drop_modules`)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    drop_modules()
    monkeypatch.setenv("ATTN_BACKEND", "sdpa")
    monkeypatch.setenv("SPARSE_ATTN_BACKEND", "flash_attn")
    monkeypatch.syspath_prepend(str(FLASH_ATTN_CPU))
    for name, sub in (("trellis", TRELLIS_SRC), ("trellis.pipelines", TRELLIS_SRC / "pipelines")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(sub)]
        monkeypatch.setitem(sys.modules, name, mod)
    return sys.modules["trellis"]


def randomise_zero_init(model, seed: int = 0, std: float = 0.05) -> None:
    """Fill the parameters TRELLIS zero-initialises (out layer, adaLN modulation) with noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "out_layer" in name or "adaLN_modulation" in name:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))


def tiny_flow_models(seed: int = 0) -> dict:
    """``{"sparse_structure_flow_model", "slat_flow_model"}``: real tiny TRELLIS flow models."""
    import torch

    ss_mod = importlib.import_module("trellis.models.sparse_structure_flow")
    sl_mod = importlib.import_module("trellis.models.structured_latent_flow")
    torch.manual_seed(seed)
    ss = ss_mod.SparseStructureFlowModel(**SS_ARGS)
    sl = sl_mod.SLatFlowModel(**SLAT_ARGS)
    randomise_zero_init(ss, seed)
    randomise_zero_init(sl, seed + 1)
    return {"sparse_structure_flow_model": ss.eval(), "slat_flow_model": sl.eval()}


def write_pipeline_folder(root: Path, seed: int = 0) -> Path:
    """A TRELLIS pipeline folder with the two tiny flow models in TRELLIS's format
    (``pipeline.json`` + ``ckpts/<name>.json`` / ``.safetensors``) and a tiny CLIP text encoder."""
    import json

    from debias3d.models.trellis import save_trellis_model

    models = tiny_flow_models(seed)
    names = {"sparse_structure_flow_model": "ss_flow_tiny_fp16", "slat_flow_model": "slat_flow_tiny_fp16"}
    cfgs = {"sparse_structure_flow_model": SS_ARGS, "slat_flow_model": SLAT_ARGS}
    for key, model in models.items():
        cls = type(model).__name__
        save_trellis_model(model, root / "ckpts" / names[key], {"name": cls, "args": cfgs[key]})
    # a decoder the merged folder must keep loading from the base folder
    ss_dec = importlib.import_module("trellis.models.sparse_structure_vae").SparseStructureDecoder
    dec_args = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [16, 8],
                "num_res_blocks_middle": 1}  # fmt: skip
    save_trellis_model(
        ss_dec(**dec_args),
        root / "ckpts" / "ss_dec_tiny",
        {"name": "SparseStructureDecoder", "args": dec_args},
    )
    args = {
        "models": {**{k: f"ckpts/{v}" for k, v in names.items()}, "sparse_structure_decoder": "ckpts/ss_dec_tiny"},
        "sparse_structure_sampler": {"name": "FlowEulerCfgSampler", "args": {"sigma_min": 1e-5},
                                     "params": {"steps": 2, "cfg_strength": 1.0}},
        "slat_sampler": {"name": "FlowEulerCfgSampler", "args": {"sigma_min": 1e-5},
                         "params": {"steps": 2, "cfg_strength": 1.0}},
        "slat_normalization": {"mean": [0.1 * i for i in range(8)], "std": [1.0 + 0.1 * i for i in range(8)]},
        "text_cond_model": str(write_tiny_clip(root / "clip").resolve()),
    }  # fmt: skip
    (root / "pipeline.json").write_text(json.dumps({"name": "TrellisTextTo3DPipeline", "args": args}))
    return root


def write_tiny_clip(path: Path, hidden: int = 16, seed: int = 0) -> Path:
    """A 1-layer CLIP text model (``hidden`` = the flow models' ``cond_channels``) with a byte-level
    CLIP tokenizer (no merges), in the folder layout ``CLIPTextModel`` / ``AutoTokenizer`` read."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in byte_alphabet():
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(path))
    cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    CLIPTextModel(cfg).save_pretrained(str(path))
    return path


def load_text_pipeline(path: Path, monkeypatch):
    """The real ``TrellisTextTo3DPipeline.from_pretrained(path)`` on CPU: ``.cuda()`` (its CLIP
    encoder) is patched to a no-op and ``open3d`` (used only by ``voxelize``) is a stub."""
    import torch
    from torch import nn

    o3d = types.ModuleType("open3d")
    o3d.geometry = types.SimpleNamespace(TriangleMesh=object)
    monkeypatch.setitem(sys.modules, "open3d", o3d)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    mod = importlib.import_module("trellis.pipelines.trellis_text_to_3d")
    return mod.TrellisTextTo3DPipeline.from_pretrained(str(path))
