"""Shared on-disk / in-memory contracts for 3D assets.

Grid convention (used by ShapeWorld, the mini generator, the measurer and the renderer):

* A voxel grid has resolution ``R`` (default 16) and covers the cube ``[-1, 1]^3``.
* Arrays are indexed ``[x, y, z]``; **z is up**. Voxel ``i`` along an axis has its centre at
  ``-1 + (i + 0.5) * 2 / R``.
* ``occupancy`` is ``(R, R, R)`` bool; ``colors`` is ``(R, R, R, 3)`` float32 in ``[0, 1]`` (zero where empty).
* Meshes are ``trimesh.Trimesh`` in the same world frame (z up), with per-vertex RGBA colours.

Files: glTF / GLB is y-up by specification, so :func:`save_mesh` turns the z-up frame to y-up
when it writes a GLB and :func:`load_mesh` turns a GLB back to z-up; a mesh written and read
back is unchanged, and a standard viewer shows it standing. OBJ and PLY carry no up axis and are
written in the internal frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_RESOLUTION = 16

#: z-up (this project) to y-up (glTF): a -90 degree turn about x, ``(x, y, z) -> (x, z, -y)``.
Z_UP_TO_Y_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
#: y-up (glTF) back to z-up, ``(x, y, z) -> (x, -z, y)``.
Y_UP_TO_Z_UP = Z_UP_TO_Y_UP.T.copy()
_Y_UP_TYPES = ("glb", "gltf")


def _file_type(path: str | os.PathLike, file_type: str | None) -> str:
    return (file_type or Path(path).suffix.lstrip(".")).lower()


def mesh_bytes(mesh: Any, file_type: str = "glb") -> bytes:
    """``mesh`` (z-up) encoded as ``file_type``; a GLB is turned y-up as glTF requires."""
    if file_type.lower() in _Y_UP_TYPES:
        mesh = mesh.copy()
        mesh.apply_transform(Z_UP_TO_Y_UP)
    return mesh.export(file_type=file_type)


def save_mesh(mesh: Any, path: str | os.PathLike, file_type: str | None = None) -> Path:
    """Write ``mesh`` (z-up) to ``path`` (GLB y-up; OBJ / PLY as they are); returns the path."""
    path = Path(path)
    data = mesh_bytes(mesh, _file_type(path, file_type))
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def load_mesh(path: Any, file_type: str | None = None, **kwargs: Any) -> Any:
    """Read a mesh file (or file object with ``file_type``) into the z-up frame as one
    ``trimesh.Trimesh``; a GLB / glTF is turned from y-up back to z-up."""
    import trimesh

    mesh = trimesh.load(path, file_type=file_type, force="mesh", **kwargs)
    if isinstance(mesh, trimesh.Scene):  # an empty scene
        mesh = mesh.to_geometry()
    kind = (
        file_type or (Path(path).suffix.lstrip(".") if isinstance(path, (str, os.PathLike)) else "")
    ).lower()
    if kind in _Y_UP_TYPES:
        mesh.apply_transform(Y_UP_TO_Z_UP)
    return mesh


def voxel_centers(resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Coordinates of voxel centres along one axis, shape ``(R,)``."""
    return -1.0 + (np.arange(resolution) + 0.5) * (2.0 / resolution)


def grid_points(resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """All voxel centres as ``(R, R, R, 3)`` in ``[x, y, z]`` index order."""
    c = voxel_centers(resolution)
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


@dataclass
class VoxelGrid:
    """Occupancy + colour grid. See the module docstring for the frame convention."""

    occupancy: np.ndarray  # (R, R, R) bool
    colors: np.ndarray  # (R, R, R, 3) float32 in [0, 1]

    def __post_init__(self) -> None:
        self.occupancy = np.asarray(self.occupancy).astype(bool)
        r = self.occupancy.shape[0]
        if self.occupancy.shape != (r, r, r):
            raise ValueError(f"occupancy must be (R, R, R), got {self.occupancy.shape}")
        self.colors = np.asarray(self.colors, dtype=np.float32)
        if self.colors.shape != (r, r, r, 3):
            raise ValueError(f"colors must be (R, R, R, 3) = {(r, r, r, 3)}, got {self.colors.shape}")

    @property
    def resolution(self) -> int:
        return int(self.occupancy.shape[0])

    @classmethod
    def empty(cls, resolution: int = DEFAULT_RESOLUTION) -> VoxelGrid:
        r = resolution
        return cls(np.zeros((r, r, r), bool), np.zeros((r, r, r, 3), np.float32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Compact arrays for datasets: occupancy uint8 (R,R,R), colors uint8 (R,R,R,3)."""
        return {
            "occupancy": self.occupancy.astype(np.uint8),
            "colors": np.clip(np.round(self.colors * 255), 0, 255).astype(np.uint8),
        }

    @classmethod
    def from_arrays(cls, occupancy: Any, colors: Any) -> VoxelGrid:
        occ = np.asarray(occupancy).astype(bool)
        col = np.asarray(colors)
        col = col.astype(np.float32) / 255.0 if col.dtype == np.uint8 or col.max(initial=0) > 1.0 else col
        return cls(occ, col.astype(np.float32) * occ[..., None])


@dataclass
class Asset:
    """One generated or built 3D asset: mesh + voxels + metadata (prompt, seed, backend, ...)."""

    prompt: str
    mesh: Any  # trimesh.Trimesh
    voxels: VoxelGrid | None = None
    seed: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
