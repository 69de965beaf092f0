"""A fake ``trellis`` package with TRELLIS's fine-tuning API, for the ``generator: trellis`` glue.

Unlike the generator-issue fake (tests/models/test_trellis_adapter.py, which wraps mini TRELLIS for
``pipeline.run``), this one mirrors what fine-tuning touches in microsoft/TRELLIS:

* ``trellis.modules.sparse.SparseTensor(feats=, coords=)`` (coords ``(N, 4)`` int32 = batch, x, y,
  z; ``dtype``, ``type``, ``replace``) and ``SparseLinear`` (an ``nn.Linear`` subclass that takes a
  ``SparseTensor``);
* the flow models with TRELLIS's module names and dtypes: ``blocks.N.self_attn.to_qkv``,
  ``cross_attn.to_q`` / ``to_kv``, ``to_out``, ``mlp.mlp.0`` / ``mlp.mlp.2`` (``SparseLinear`` in
  stage 2), ``adaLN_modulation``, ``t_embedder.mlp.0`` / ``.2``; ``use_fp16=True`` blocks in fp16
  with activations cast by ``.type(self.dtype)``; stage 1 asserts its input shape
  ``(B, in_channels, R, R, R)``; stage 2 takes and returns a ``SparseTensor``;
* ``pipeline.encode_text(list[str]) → (B, 77, D)``, ``pipeline.text_cond_model["null_cond"]``,
  ``pipeline.slat_normalization``;
* ``trellis.utils.postprocessing_utils`` (the adapter imports it).

Weights are random from a seed stored in ``<dir>/pipeline.json`` (TRELLIS's ``{"name", "args"}``
layout), so ``from_pretrained(dir)`` gives the same base every time. The real package is tested in
``test_trellis_real.py``; this fake keeps the glue tested where ``../shared`` is absent.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np

SPARSE = """
import torch
from torch import nn


class SparseTensor:
    def __init__(self, feats=None, coords=None, **kwargs):
        assert feats.shape[0] == coords.shape[0] and coords.shape[1] == 4
        assert coords.dtype == torch.int32, "TRELLIS sparse coords are int32"
        self.feats, self.coords = feats, coords

    @property
    def shape(self):
        return torch.Size([int(self.coords[:, 0].max()) + 1, *self.feats.shape[1:]])

    @property
    def device(self):
        return self.feats.device

    @property
    def dtype(self):
        return self.feats.dtype

    def type(self, dtype):
        return self.replace(self.feats.type(dtype))

    def replace(self, feats):
        return SparseTensor(feats=feats, coords=self.coords)


class SparseLinear(nn.Linear):
    def forward(self, input):
        return input.replace(super().forward(input.feats))
"""

MODELS = '''
import math
import torch
import torch.nn.functional as F
from torch import nn
from trellis.modules.sparse import SparseLinear


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        a = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], -1))


class Attention(nn.Module):
    """Self- (to_qkv) or cross- (to_q, to_kv) attention over (B, L, C), with to_out."""

    def __init__(self, dim, ctx_dim=None, heads=2):
        super().__init__()
        self.heads = heads
        if ctx_dim is None:
            self.to_qkv = nn.Linear(dim, 3 * dim)
        else:
            self.to_q = nn.Linear(dim, dim)
            self.to_kv = nn.Linear(ctx_dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, ctx=None, mask=None):
        b, n, c = x.shape
        if ctx is None:
            q, k, v = self.to_qkv(x).chunk(3, -1)
        else:
            q = self.to_q(x)
            k, v = self.to_kv(ctx).chunk(2, -1)
        sh = lambda y: y.reshape(b, y.shape[1], self.heads, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(sh(q), sh(k), sh(v), attn_mask=mask)
        return self.to_out(o.transpose(1, 2).reshape(b, n, c))


class FeedForwardNet(nn.Module):
    """TRELLIS's (Sparse)FeedForwardNet: self.mlp = Sequential(Linear, GELU, Linear) → mlp.mlp.0 / .2."""

    def __init__(self, dim, sparse=False):
        super().__init__()
        lin = SparseLinear if sparse else nn.Linear
        self.sparse = sparse
        self.mlp = nn.Sequential(lin(dim, 2 * dim), nn.Identity(), lin(2 * dim, dim))

    def forward(self, x):
        h = self.mlp[0](x)
        h = h.replace(F.gelu(h.feats)) if self.sparse else F.gelu(h)
        return self.mlp[2](h)


class Block(nn.Module):
    def __init__(self, dim, ctx_dim, sparse=False):
        super().__init__()
        self.self_attn = Attention(dim)
        self.cross_attn = Attention(dim, ctx_dim)
        self.mlp = FeedForwardNet(dim, sparse)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))


class _Flow(nn.Module):
    def convert_to_fp16(self):
        self.blocks.half()

    def convert_to_fp32(self):
        self.blocks.float()


class SparseStructureFlowModel(_Flow):
    def __init__(self, resolution=16, in_channels=8, model_channels=32, cond_channels=16, out_channels=8,
                 num_blocks=1, num_heads=2, patch_size=4, use_fp16=True):
        super().__init__()
        self.resolution, self.in_channels, self.patch_size = resolution, in_channels, patch_size
        self.model_channels, self.out_channels, self.num_blocks = model_channels, out_channels, num_blocks
        self.num_heads, self.cond_channels, self.use_fp16 = num_heads, cond_channels, use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.t_embedder = TimestepEmbedder(model_channels)
        self.input_layer = nn.Linear(in_channels * patch_size**3, model_channels)
        self.blocks = nn.ModuleList([Block(model_channels, cond_channels) for _ in range(num_blocks)])
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**3)
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x, t, cond):
        assert [*x.shape] == [x.shape[0], self.in_channels, *[self.resolution] * 3], f"Input shape mismatch, got {x.shape}"
        b, c, r, p = x.shape[0], self.in_channels, self.resolution, self.patch_size
        n = r // p
        h = x.reshape(b, c, n, p, n, p, n, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, n**3, -1)
        h = self.input_layer(h)
        te = self.t_embedder(t).type(self.dtype)
        h, cond = h.type(self.dtype), cond.type(self.dtype)
        for blk in self.blocks:
            scale, shift = blk.adaLN_modulation(te)[:, None].chunk(2, -1)
            h = h + blk.self_attn(h * (1 + scale) + shift)
            h = h + blk.cross_attn(h, cond)
            h = h + blk.mlp(h)
        h = self.out_layer(F.layer_norm(h.type(x.dtype), h.shape[-1:]))
        return h.reshape(b, n, n, n, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(x.shape)


class SLatFlowModel(_Flow):
    def __init__(self, resolution=64, in_channels=8, model_channels=32, cond_channels=16, out_channels=8,
                 num_blocks=1, num_heads=2, use_fp16=True):
        super().__init__()
        self.resolution, self.in_channels, self.model_channels = resolution, in_channels, model_channels
        self.out_channels, self.num_blocks, self.num_heads = out_channels, num_blocks, num_heads
        self.cond_channels, self.use_fp16 = cond_channels, use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.t_embedder = TimestepEmbedder(model_channels)
        self.input_layer = SparseLinear(in_channels, model_channels)
        self.pos = nn.Linear(3, model_channels)
        self.blocks = nn.ModuleList([Block(model_channels, cond_channels, sparse=True) for _ in range(num_blocks)])
        self.out_layer = SparseLinear(model_channels, out_channels)
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x, t, cond):
        bidx = x.coords[:, 0].long()
        h = self.input_layer(x).type(self.dtype)
        feats = h.feats + self.pos(x.coords[:, 1:].float() / self.resolution).type(self.dtype)
        te = self.t_embedder(t).type(self.dtype)[bidx]
        cond = cond.type(self.dtype)
        same = (bidx[:, None] == bidx[None, :])[None, None]  # attention within an instance
        for blk in self.blocks:
            scale, shift = blk.adaLN_modulation(te).chunk(2, -1)
            feats = feats + blk.self_attn((feats * (1 + scale) + shift)[None], mask=same)[0]
            ctx = cond[bidx]  # (N, L, D): each voxel attends to its own prompt
            feats = feats + blk.cross_attn(feats[:, None], ctx)[:, 0]
            feats = feats + blk.mlp(h.replace(feats)).feats
        feats = F.layer_norm(feats, feats.shape[-1:])
        return self.out_layer(h.replace(feats).type(x.dtype))
'''

PIPELINES = """
import json
from pathlib import Path

import torch
from torch import nn

from trellis.models import SLatFlowModel, SparseStructureFlowModel


class TrellisTextTo3DPipeline:
    def __init__(self, seed=0, cond_channels=16, slat_normalization=None, **kwargs):
        torch.manual_seed(seed)
        self.models = {
            "sparse_structure_flow_model": SparseStructureFlowModel(cond_channels=cond_channels),
            "slat_flow_model": SLatFlowModel(cond_channels=cond_channels),
        }
        with torch.no_grad():  # a live network: TRELLIS zero-inits out layers, LoRA needs gradients
            for m in self.models.values():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape) * 0.05)
        self.text_model = nn.Embedding(256, cond_channels).requires_grad_(False)
        self.slat_normalization = slat_normalization
        self.text_cond_model = {"null_cond": self.encode_text([""])}

    @staticmethod
    def from_pretrained(path):
        args = json.loads((Path(path) / "pipeline.json").read_text())["args"]
        pipe = TrellisTextTo3DPipeline(**args)
        pipe._pretrained_args = args
        return pipe

    def to(self, device):
        for m in self.models.values():
            m.to(device)

    def cuda(self):
        self.to(torch.device("cuda"))

    @torch.no_grad()
    def encode_text(self, text):
        ids = torch.zeros(len(text), 77, dtype=torch.long)
        for i, s in enumerate(text):
            b = list(s.encode("utf-8"))[:76]
            ids[i, 0] = 1
            ids[i, 1 : 1 + len(b)] = torch.tensor(b, dtype=torch.long)
        return self.text_model(ids)  # "last_hidden_state" (B, 77, D)

    def run(self, *args, **kwargs):
        raise NotImplementedError("the fine-tuning fake does not sample")
"""

POST = """
def to_glb(app_rep, mesh, **kwargs):
    return mesh
"""


def build_fake_trellis(root: Path) -> Path:
    """Write the fake package under ``root`` (put ``root`` on ``sys.path`` to import it)."""
    files = {
        "trellis/__init__.py": "",
        "trellis/modules/__init__.py": "",
        "trellis/modules/sparse/__init__.py": SPARSE,
        "trellis/models/__init__.py": MODELS,
        "trellis/pipelines/__init__.py": PIPELINES,
        "trellis/utils/__init__.py": "",
        "trellis/utils/postprocessing_utils.py": POST,
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def write_weights(path: Path, seed: int = 0, normalization: bool = True) -> Path:
    """A fake model folder (``pipeline.json``) that ``TrellisTextTo3DPipeline.from_pretrained`` reads."""
    path.mkdir(parents=True, exist_ok=True)
    norm = (
        {"mean": [0.1 * i for i in range(8)], "std": [1.0 + 0.1 * i for i in range(8)]}
        if normalization
        else None
    )
    args = {
        "seed": seed,
        "cond_channels": 16,
        "slat_normalization": norm,
        "models": {"sparse_structure_flow_model": "ckpts/ss_flow", "slat_flow_model": "ckpts/slat_flow"},
    }
    (path / "pipeline.json").write_text(json.dumps({"name": "TrellisTextTo3DPipeline", "args": args}))
    return path


def write_latents(
    root: Path, n: int = 4, seed: int = 0, broken: dict[int, str] | None = None, ss_res: int = 16
) -> Path:
    """A TRELLIS latents folder: ``metadata.csv``, ``ss_latents/ss_enc/``, ``latents/slat_enc/``.

    ``broken`` maps row → ``"missing_ss"``, ``"garbage_slat"`` (not an npz), ``"bad_shape"``
    (stage-1 latent of the wrong shape) or ``"no_captions"``.
    """
    import csv

    broken = broken or {}
    rng = np.random.default_rng(seed)
    ss_dir = root / "ss_latents" / "ss_enc_conv3d_16l8_fp16"
    sl_dir = root / "latents" / "dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16"
    ss_dir.mkdir(parents=True, exist_ok=True)
    sl_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sha = f"{i:064x}"
        kind = broken.get(i)
        caps = [] if kind == "no_captions" else [f"a red vase number {i}", f"a vase {i}"]
        rows.append({"sha256": sha, "captions": json.dumps(caps), "aesthetic_score": 5.0})
        shape = (8, ss_res, ss_res, ss_res) if kind != "bad_shape" else (8, 4, 4, 4)
        if kind != "missing_ss":
            np.savez(ss_dir / f"{sha}.npz", mean=rng.standard_normal(shape).astype(np.float32))
        nvox = int(rng.integers(5, 20))
        coords = rng.choice(64**3, nvox, replace=False)
        coords = np.stack(np.unravel_index(coords, (64, 64, 64)), 1).astype(np.int32)
        if kind == "garbage_slat":
            (sl_dir / f"{sha}.npz").write_bytes(b"not an npz")
        else:
            np.savez(
                sl_dir / f"{sha}.npz", feats=rng.standard_normal((nvox, 8)).astype(np.float32), coords=coords
            )
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sha256", "captions", "aesthetic_score"])
        w.writeheader()
        w.writerows(rows)
    return root


def drop_trellis_modules() -> None:
    for mod in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        sys.modules.pop(mod, None)
