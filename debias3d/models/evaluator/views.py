"""Rendered views for the evaluator: a render cache keyed by mesh, batches with per-item errors.

Rendering is the slow part of scoring (6 MATE-3D views per mesh), and the audit scores the same
meshes many times (one forward + backward per attribution step), so views are rendered once per
mesh and kept in a :class:`ViewCache`. The key is the mesh's content (vertices, faces, colours),
or ``asset.metadata["mesh_id"]`` when the caller set one, so a mesh that is rebuilt identically
still hits the cache.

Bad meshes (no faces, NaN vertices, a degenerate bounding box) never stop a batch: the item gets
blank views, ``valid[i] = False`` and an :class:`ItemError` naming it; scorers replace its scores
by a finite fallback.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ItemError", "ViewBatch", "ViewCache", "describe_item", "evaluator_rig", "mesh_key"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemError:
    """Why item ``index`` of a batch could not be scored.

    Attributes:
        index: position in the batch.
        name: what the item is (``mesh_id``, file name or prompt) so the user can find it.
        message: the problem, e.g. ``"mesh has no faces (0 vertices, 0 faces)"``.
    """

    index: int
    name: str
    message: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.name}): {self.message}"


@dataclass
class ViewBatch:
    """Cached views of ``B`` meshes.

    Attributes:
        views: ``(B, V, 3, H, W)`` float32 in ``[0, 1]`` (blank background for invalid items).
        valid: ``(B,)`` bool, False where the mesh could not be rendered.
        errors: one :class:`ItemError` per invalid item.
    """

    views: Tensor
    valid: Tensor
    errors: list[ItemError] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.views.shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.views.shape

    def __getitem__(self, idx: slice | Sequence[int] | Tensor) -> ViewBatch:
        """Sub-batch (slice or index list); error indices are renumbered to the sub-batch."""
        if isinstance(idx, int):
            idx = [idx]
        positions = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        where = {p: j for j, p in enumerate(positions)}
        errors = [ItemError(where[e.index], e.name, e.message) for e in self.errors if e.index in where]
        sel = torch.as_tensor(positions, dtype=torch.long)
        return ViewBatch(self.views[sel], self.valid[sel], errors)

    def to(self, device: torch.device | str) -> ViewBatch:
        return ViewBatch(self.views.to(device), self.valid.to(device), list(self.errors))

    @classmethod
    def from_tensor(cls, views: Tensor) -> ViewBatch:
        """Wrap an already-rendered ``(B, V, 3, H, W)`` tensor; non-finite items are marked invalid."""
        if views.dim() != 5:
            raise ValueError(f"views must be (B, V, 3, H, W), got shape {tuple(views.shape)}")
        finite = torch.isfinite(views.flatten(1)).all(dim=1)
        errors = [
            ItemError(i, f"views[{i}]", "views contain NaN or infinite values")
            for i in torch.nonzero(~finite).flatten().tolist()
        ]
        views = torch.where(finite[:, None, None, None, None], views, torch.ones_like(views))
        return cls(views, finite, errors)


@dataclass
class ViewFeatures:
    """Text-independent view features of ``B`` meshes (:meth:`HyperScoreBase.view_features`).

    The evaluator's image side does not depend on the prompt, so the audit encodes each sample's
    views once and every later forward / backward (attribution methods, integrated-gradients steps,
    the deletion test) runs only the text side and the fusion on these.

    Attributes:
        features: ``(B, N, C)`` as returned by the evaluator's ``encode_views``.
        valid: ``(B,)`` bool, False where the mesh could not be rendered.
        errors: one :class:`ItemError` per invalid item.
    """

    features: Tensor
    valid: Tensor
    errors: list[ItemError] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def describe_item(item: Any, index: int) -> str:
    """A short human name for a batch item: ``mesh_id``, mesh path, or the asset's prompt."""
    meta = getattr(item, "metadata", None) or {}
    for key in ("mesh_id", "mesh_path", "path", "name"):
        if meta.get(key):
            return str(meta[key])
    if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
        return str(item)
    prompt = getattr(item, "prompt", None)
    if prompt:
        seed = getattr(item, "seed", None)
        return f"{prompt!r}" + (f" seed {seed}" if seed is not None else "")
    return f"item {index}"


def _mesh_of(item: Any) -> Any:
    """The mesh of an asset (meshing its voxels when it has none), or the item itself."""
    if not hasattr(item, "mesh"):
        return item
    if item.mesh is None and getattr(item, "voxels", None) is not None:
        from debias3d.data.shapeworld.voxelize import voxels_to_mesh

        item.mesh = voxels_to_mesh(item.voxels)
    return item.mesh


def mesh_key(item: Any) -> str:
    """Cache key of an asset or mesh: ``metadata["mesh_id"]`` if set, else a content hash.

    ``mesh_id`` is an explicit promise by the caller that equal ids mean equal meshes; nothing in
    the package sets it for generated meshes (a prompt id and a sample index do not identify a
    mesh: another generator, or the same one with an adapter, makes a different one). Mesh files
    are keyed by their bytes, so a file rewritten in place is rendered again.

    Hashing vertices + faces + colours (a few hundred KB) costs ~0.1 ms, far less than a render.
    """
    meta = getattr(item, "metadata", None) or {}
    if meta.get("mesh_id"):
        return f"id:{meta['mesh_id']}"
    mesh = _mesh_of(item)
    if isinstance(mesh, (str, bytes)) or hasattr(mesh, "__fspath__"):
        h = hashlib.blake2b(digest_size=16)
        try:
            h.update(Path(mesh).read_bytes())
        except OSError:
            return f"path:{mesh}"  # unreadable: the render reports the error
        return f"file:{h.hexdigest()}"
    h = hashlib.blake2b(digest_size=16)
    for name in ("vertices", "faces"):
        arr = getattr(mesh, name, None)
        if arr is not None:
            a = np.ascontiguousarray(np.asarray(arr))
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        h.update(np.ascontiguousarray(visual.vertex_colors).tobytes())
    elif kind == "face":
        h.update(np.ascontiguousarray(visual.face_colors).tobytes())
    return f"sha:{h.hexdigest()}"


def evaluator_rig(view_frame: str = "unit_sphere", scene_radius: float = 1.45) -> Any:
    """The MATE-3D six-view rig, framed as the evaluator config says.

    ``"unit_sphere"``: MATE-3D's own normalisation (each mesh centred and scaled to radius 1).
    ``"scene"``: no normalisation; the cameras sit at ``2·scene_radius`` so that the sphere of that
    radius around the origin fills the frame. ShapeWorld and mini-TRELLIS meshes live in one
    ``[-1, 1]³`` scene cube, so a *small* box stays small and a *floating* one stays off the ground
    (under ``unit_sphere`` both are normalised away).
    """
    from debias3d.models.evaluator.config import VIEW_FRAMES
    from debias3d.render.cameras import CameraRig, mate3d_rig

    if view_frame not in VIEW_FRAMES:
        raise ValueError(f"view_frame must be one of {VIEW_FRAMES}, got {view_frame!r}")
    if view_frame == "unit_sphere":
        return mate3d_rig()
    rig = mate3d_rig(distance=2.0 * float(scene_radius))
    return CameraRig("mate3d-scene", rig.cameras, normalize="none", fovs=rig.fovs, background=rig.background)


class ViewCache:
    """Renders each mesh's rig views once and keeps them (LRU, uint8 to save memory).

    Args:
        renderer: a :class:`debias3d.render.renderer.Renderer`-like object with
            ``render(mesh, cameras) -> (V, H, W, 3) uint8``; built lazily if ``None``.
        rig: the camera rig (default: MATE-3D's 6 views).
        image_size: render size in pixels (used when ``renderer`` is ``None``).
        max_items: how many meshes to keep.

    Attributes:
        render_calls: how many meshes were actually rendered (cache misses), for tests/benchmarks.
    """

    def __init__(
        self,
        renderer: Any = None,
        rig: Any = None,
        image_size: int = 64,
        max_items: int = 4096,
    ) -> None:
        self._renderer = renderer
        self._rig = rig
        self.image_size = int(image_size)
        self.max_items = int(max_items)
        self._store: OrderedDict[str, np.ndarray] = OrderedDict()
        self.render_calls = 0

    @property
    def renderer(self) -> Any:
        if self._renderer is None:
            from debias3d.render.renderer import Renderer

            self._renderer = Renderer(image_size=self.image_size)
        return self._renderer

    @property
    def rig(self) -> Any:
        if self._rig is None:
            from debias3d.render.cameras import mate3d_rig

            self._rig = mate3d_rig()
        return self._rig

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def _blank(self) -> np.ndarray:
        n = len(self.rig)
        return np.full((n, self.image_size, self.image_size, 3), 255, dtype=np.uint8)

    def _render_one(self, item: Any) -> np.ndarray:
        from debias3d.render.renderer import validate_mesh

        mesh = _mesh_of(item)
        tm = validate_mesh(mesh)  # raises RenderError naming the problem before any GL work
        self.render_calls += 1
        images = np.asarray(self.renderer.render(tm, self.rig))
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"renderer returned {images.shape[1:3]} images, cache expects {self.image_size} px"
            )
        return images

    def get(self, items: Sequence[Any]) -> ViewBatch:
        """Views of ``items`` (assets, meshes or mesh paths) as a :class:`ViewBatch`.

        Returns:
            ``views`` ``(B, V, 3, H, W)`` float32 in ``[0, 1]``, ``valid`` ``(B,)``, ``errors``.
        """
        from debias3d.render.renderer import RenderError

        out: list[np.ndarray] = []
        valid: list[bool] = []
        errors: list[ItemError] = []
        for i, item in enumerate(items):
            try:
                key = mesh_key(item)
            except (AttributeError, TypeError, ValueError) as exc:
                key = None
                logger.debug("no cache key for item %d: %s", i, exc)
            if key is not None and key in self._store:
                self._store.move_to_end(key)
                out.append(self._store[key])
                valid.append(True)
                continue
            try:
                images = self._render_one(item)
            except (RenderError, ValueError, TypeError, AttributeError, IndexError) as exc:
                err = ItemError(i, describe_item(item, i), str(exc))
                logger.warning("evaluator: %s; scoring it with the fallback", err)
                errors.append(err)
                out.append(self._blank())
                valid.append(False)
                continue
            if key is not None:
                self._store[key] = images
                while len(self._store) > self.max_items:
                    self._store.popitem(last=False)
            out.append(images)
            valid.append(True)
        if out:
            arr = torch.from_numpy(np.stack(out)).permute(0, 1, 4, 2, 3).float().div_(255.0)
        else:
            arr = torch.zeros((0, len(self.rig), 3, self.image_size, self.image_size))
        return ViewBatch(arr, torch.tensor(valid, dtype=torch.bool), errors)
