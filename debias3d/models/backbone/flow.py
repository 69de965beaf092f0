"""The two flow transformers of mini TRELLIS.

* Stage 1, :class:`SparseStructureFlowModel`: velocity field over the occupancy grid
  ``(B, 1, R, R, R)`` in ``[-1, 1]`` (R = 16), patchified into ``(R/p)^3`` tokens (p = 4 → 64 tokens).
* Stage 2, :class:`SLatFlowModel`: velocity field over the features of the ACTIVE voxels only,
  ``(B, N, C)`` with a key padding mask ``(B, N)`` (variable length), positions from the voxel
  coordinates. Features are colours in ``[-1, 1]`` (C = 3).

Both take ``t`` scaled to ``[0, 1000]`` and a text condition ``(B, L, D_text)`` + mask ``(B, L)``,
like TRELLIS's ``model(x_t, 1000·t, cond)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import AbsolutePositionEmbedder, ModulatedTransformerCrossBlock, TimestepEmbedder

__all__ = ["FlowModelConfig", "SparseStructureFlowModel", "SLatFlowModel", "patchify", "unpatchify"]


@dataclass
class FlowModelConfig:
    """Size of one flow transformer (serialised into the shipped ``config.json``)."""

    resolution: int = 16
    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 128
    cond_channels: int = 384
    num_blocks: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 4  # stage 1 only

    def to_dict(self) -> dict:
        return asdict(self)


def patchify(x: Tensor, p: int) -> Tensor:
    """``(B, C, R, R, R)`` → ``(B, (R/p)^3, C·p^3)`` (patch-major, [x, y, z] order)."""
    b, c, r, _, _ = x.shape
    n = r // p
    x = x.reshape(b, c, n, p, n, p, n, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, n**3, c * p**3)


def unpatchify(x: Tensor, p: int, c: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, n^3, C·p^3)`` → ``(B, C, n·p, n·p, n·p)``."""
    b, t, _ = x.shape
    n = round(t ** (1 / 3))
    x = x.reshape(b, n, n, n, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, c, n * p, n * p, n * p)


class _FlowBase(nn.Module):
    def __init__(self, cfg: FlowModelConfig):
        super().__init__()
        self.config = cfg
        self.resolution = cfg.resolution
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels
        self.model_channels = cfg.model_channels
        self.t_embedder = TimestepEmbedder(cfg.model_channels)
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(
                cfg.model_channels, cfg.cond_channels, cfg.num_heads, cfg.mlp_ratio
            )
            for _ in range(cfg.num_blocks)
        )

    def _init_out(self, layer: nn.Linear) -> None:
        # Zero-initialised output: the untrained model predicts v = 0 (TRELLIS initialize_weights).
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)

    def _run_blocks(
        self, h: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None, x_mask: Tensor | None
    ) -> Tensor:
        mod = self.t_embedder(t)
        cond = cond.to(h.dtype)
        for block in self.blocks:
            h = block(h, mod, cond, x_mask=x_mask, context_mask=cond_mask)
        return F.layer_norm(h, h.shape[-1:])


class SparseStructureFlowModel(_FlowBase):
    """Stage 1: flow transformer over a dense occupancy grid.

    Args:
        cfg: sizes; ``in_channels`` = ``out_channels`` = 1 (occupancy), ``patch_size`` p.

    Shapes: ``x (B, 1, R, R, R)``, ``t (B,)`` in ``[0, 1000]``, ``cond (B, L, D_text)``,
    ``cond_mask (B, L)`` → velocity ``(B, 1, R, R, R)``.
    """

    def __init__(self, cfg: FlowModelConfig):
        super().__init__(cfg)
        if cfg.resolution % cfg.patch_size:
            raise ValueError(f"resolution {cfg.resolution} must be divisible by patch_size {cfg.patch_size}")
        self.patch_size = cfg.patch_size
        n = cfg.resolution // cfg.patch_size
        self.input_layer = nn.Linear(cfg.in_channels * cfg.patch_size**3, cfg.model_channels)
        grid = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer(
            "pos_emb", AbsolutePositionEmbedder(cfg.model_channels, 3)(grid.float()), persistent=False
        )
        self.out_layer = nn.Linear(cfg.model_channels, cfg.out_channels * cfg.patch_size**3)
        self._init_out(self.out_layer)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        h = self.input_layer(patchify(x, self.patch_size)) + self.pos_emb[None].to(x.dtype)
        h = self._run_blocks(h, t, cond, cond_mask, None)
        return unpatchify(self.out_layer(h), self.patch_size, self.out_channels)


class SLatFlowModel(_FlowBase):
    """Stage 2: flow transformer over the active voxels only (variable length, masked).

    Each token is one active voxel: ``input_layer(features) + PE(coords, coords relative to the
    shape's bounding box)``. Padding tokens are masked out of self-attention, so the outputs of real
    tokens do not depend on how much padding a batch has.

    Shapes: ``x (B, N, C)``, ``t (B,)``, ``cond (B, L, D_text)``, ``cond_mask (B, L)``,
    ``coords (B, N, 3)`` integer voxel indices, ``mask (B, N)`` bool → velocity ``(B, N, C)``
    (zero at padding).
    """

    def __init__(self, cfg: FlowModelConfig):
        super().__init__(cfg)
        self.input_layer = nn.Linear(cfg.in_channels, cfg.model_channels)
        self.pos_embedder = AbsolutePositionEmbedder(cfg.model_channels, 6)
        self.out_layer = nn.Linear(cfg.model_channels, cfg.out_channels)
        self._init_out(self.out_layer)

    def position_features(self, coords: Tensor, mask: Tensor) -> Tensor:
        """``(B, N, 3)`` voxel indices → ``(B, N, 6)``: absolute index and index relative to the
        active voxels' bounding box, both in voxel units ``[0, R−1]``."""
        c = coords.float()
        big = torch.finfo(c.dtype).max
        m = mask[..., None]
        lo = torch.where(m, c, torch.full_like(c, big)).amin(dim=1, keepdim=True)
        hi = torch.where(m, c, torch.full_like(c, -big)).amax(dim=1, keepdim=True)
        rel = (c - lo) / (hi - lo).clamp_min(1.0) * (self.resolution - 1)
        return torch.cat([c, torch.where(m, rel, torch.zeros_like(rel))], dim=-1)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor,
        cond_mask: Tensor | None = None,
        *,
        coords: Tensor,
        mask: Tensor,
    ) -> Tensor:
        mask = mask.bool()
        h = self.input_layer(x) + self.pos_embedder(self.position_features(coords, mask)).to(x.dtype)
        h = self._run_blocks(h, t, cond, cond_mask, mask)
        return self.out_layer(h) * mask[..., None].to(x.dtype)
