"""Decode mini-TRELLIS latents into assets: occupancy + colours → VoxelGrid → coloured mesh.

Stage 1 gives ``x0 (R, R, R)`` in ``[-1, 1]``; a voxel is active where ``x0 > threshold``.
Stage 2 gives per-active-voxel colours ``(N, 3)`` in ``[-1, 1]`` → ``[0, 1]``. The mesh is the
ShapeWorld voxel mesher's watertight surface (``debias3d.data.shapeworld.voxelize.voxels_to_mesh``),
so generated and built shapes are meshed the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from torch import Tensor

from debias3d.data.assets import VoxelGrid

logger = logging.getLogger(__name__)

__all__ = ["occupancy_from_latent", "voxels_from_latents", "voxels_to_mesh", "export_mesh", "MESH_FORMATS"]

MESH_FORMATS = ("glb", "obj", "ply")


def occupancy_from_latent(x0: Tensor, threshold: float = 0.0, min_voxels: int = 1) -> Tensor:
    """``x0 (B, 1, R, R, R)`` → bool occupancy ``(B, R, R, R)``.

    An item with fewer than ``min_voxels`` active voxels keeps its ``min_voxels`` highest-valued
    voxels, so every sample decodes to a non-empty mesh (stage 2 needs at least one token).
    """
    x = x0[:, 0]
    occ = x > threshold
    flat = x.reshape(x.shape[0], -1)
    for i in range(x.shape[0]):
        if int(occ[i].sum()) < min_voxels:
            top = flat[i].topk(min_voxels).indices
            occ[i].view(-1)[top] = True
    return occ


def voxels_from_latents(occupancy: Tensor, coords: Tensor, colors: Tensor) -> VoxelGrid:
    """One item: ``occupancy (R, R, R)`` bool, ``coords (N, 3)`` long, ``colors (N, 3)`` in ``[-1, 1]``."""
    occ = occupancy.cpu().numpy().astype(bool)
    r = occ.shape[0]
    grid = np.zeros((r, r, r, 3), np.float32)
    c = coords.cpu().numpy()
    rgb = ((colors.float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    grid[c[:, 0], c[:, 1], c[:, 2]] = rgb
    return VoxelGrid(occ, grid)


def voxels_to_mesh(voxels: VoxelGrid):
    """Watertight per-vertex-coloured ``trimesh.Trimesh`` (world frame ``[-1, 1]^3``, z up)."""
    from debias3d.data.shapeworld.voxelize import voxels_to_mesh as _mesh

    return _mesh(voxels)


def export_mesh(mesh, path: str | os.PathLike, file_format: str | None = None) -> Path:
    """Write ``mesh`` as GLB (y-up, as glTF requires), OBJ or PLY (chosen by ``file_format`` or the
    path's suffix); see :func:`debias3d.data.assets.save_mesh`."""
    path = Path(path)
    fmt = (file_format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"mesh format must be one of {MESH_FORMATS}, got {fmt!r}")
    if path.suffix.lower() != f".{fmt}":
        path = path.with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from debias3d.data.assets import save_mesh

    return save_mesh(mesh, path, fmt)
