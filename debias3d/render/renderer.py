"""Headless multi-view mesh rendering with one reused off-screen pyvista plotter.

Headless set-up
---------------
The VTK >= 9.4 wheels carry both an X11 and an EGL render window. On Linux VTK tries X11 first;
without a display that prints ``bad X server connection`` and costs ~1 s before it falls back to EGL.
:func:`configure_headless` therefore sets ``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` when no
``DISPLAY`` / ``WAYLAND_DISPLAY`` is set (VTK reads it each time a window is created, so this works
even if pyvista was imported before). A value the user already set wins, e.g.
``VTK_DEFAULT_OPENGL_WINDOW=vtkOSMesaRenderWindow`` on a machine without libEGL. No Xvfb is needed.
Plotters are created with ``off_screen=True``; the global ``pyvista.OFF_SCREEN`` is left alone so
that importing this module does not change other pyvista users in the process.

Lighting
--------
``lighting="soft"`` (default) is a single headlight with a high ambient term, so surfaces facing the
camera show their vertex colour almost unchanged while the silhouette still reads as 3D.
``lighting="flat"`` is ambient-only (T3Bench's ``RenderFlags.FLAT``): exact colours, no shading.

>>> import trimesh
>>> from debias3d.render import Renderer, mate3d_rig
>>> with Renderer(image_size=64) as r:
...     imgs = r.render(trimesh.creation.box(), mate3d_rig())
>>> imgs.shape
(6, 64, 64, 3)
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from debias3d.data.assets import load_mesh
from debias3d.render.cameras import NORMALIZE_MODES, Camera, CameraRig

if TYPE_CHECKING:
    import torch
    import trimesh

__all__ = [
    "BACKENDS",
    "LIGHTING_MODES",
    "RenderBatch",
    "RenderError",
    "Renderer",
    "close_default_renderers",
    "configure_headless",
    "default_renderer",
    "normalize_vertices",
    "validate_mesh",
]

logger = logging.getLogger(__name__)

BACKENDS = ("pyvista",)
LIGHTING_MODES = ("soft", "flat")
# (ambient, diffuse) per lighting mode; specular is always 0 so colours are not washed out.
_LIGHTING = {"soft": (0.55, 0.5), "flat": (1.0, 0.0)}
_DEFAULT_RGB = (180, 180, 180)
_MESH_ACTOR = "debias3d-mesh"

MeshLike = Any  # trimesh.Trimesh | trimesh.Scene | str | os.PathLike
Cameras = CameraRig | Sequence[Camera] | Camera  # a rig, a list of cameras or one camera


class RenderError(ValueError):
    """A mesh cannot be rendered (no faces, non-finite vertices, degenerate extent, unreadable file)."""


def configure_headless() -> None:
    """Pick VTK's EGL window on display-less Linux; see the module docstring for why."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _import_pyvista() -> Any:
    configure_headless()
    import pyvista as pv  # heavy (VTK); imported only when a plotter is built

    return pv


# ---------------------------------------------------------------------------------------------------
# mesh preparation (pure numpy; no VTK)
# ---------------------------------------------------------------------------------------------------


def _as_trimesh(mesh: MeshLike) -> trimesh.Trimesh:
    import trimesh

    if isinstance(mesh, (str, os.PathLike)):
        path = Path(mesh)
        try:
            loaded = load_mesh(path, process=False)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise RenderError(f"cannot load mesh file {path}: {exc}") from exc
        mesh = loaded
    if isinstance(mesh, trimesh.Scene):
        if not mesh.geometry:
            raise RenderError("mesh has no faces (empty trimesh.Scene)")
        mesh = mesh.to_geometry()
    if not isinstance(mesh, trimesh.Trimesh):
        raise RenderError(f"expected a trimesh.Trimesh, Scene or mesh path, got {type(mesh).__name__}")
    return mesh


def validate_mesh(mesh: MeshLike) -> trimesh.Trimesh:
    """Return ``mesh`` as a ``trimesh.Trimesh`` or raise :class:`RenderError` naming the problem.

    Checks: at least one face, faces index existing vertices, all vertices finite, a bounding box
    with non-zero extent, and non-zero surface area.
    """
    tm = _as_trimesh(mesh)
    vertices = np.asarray(tm.vertices)
    faces = np.asarray(tm.faces)
    if len(faces) == 0:
        raise RenderError(f"mesh has no faces ({len(vertices)} vertices, 0 faces)")
    if len(vertices) == 0:
        raise RenderError("mesh has no vertices")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise RenderError(
            f"mesh faces index vertices outside [0, {len(vertices)}) (min {faces.min()}, max {faces.max()})"
        )
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise RenderError(f"mesh has {int(bad.sum())} vertices with NaN or infinite coordinates")
    extent = float(np.ptp(vertices[np.unique(faces)], axis=0).max())
    if extent <= 1e-12:
        raise RenderError(f"mesh has a degenerate bounding box (all vertices coincide, extent {extent:g})")
    if float(tm.area) <= 1e-12 * extent**2:
        raise RenderError("mesh has zero surface area (all faces are degenerate)")
    return tm


def normalize_vertices(vertices: np.ndarray, mode: str) -> np.ndarray:
    """Centre and scale vertices, ``(N, 3) -> (N, 3)`` float64.

    Args:
        vertices: ``(N, 3)`` finite coordinates with non-zero extent.
        mode: ``"unit_sphere"`` (MATE-3D: bounding-box centre to the origin, farthest vertex at
            radius 1), ``"unit_sphere_mean"`` (HyperScore's ``normalize_verts``: vertex mean to the
            origin, farthest vertex at radius 1), ``"unit_cube"`` (T3Bench: vertex mean to the origin, max ``|coord|`` = 1) or
            ``"none"``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if mode == "none":
        return v.copy()
    if mode in ("unit_sphere", "unit_sphere_mean"):
        centre = v.mean(axis=0) if mode == "unit_sphere_mean" else (v.min(axis=0) + v.max(axis=0)) / 2.0
        v = v - centre
        scale = float(np.linalg.norm(v, axis=1).max())
    elif mode == "unit_cube":
        v = v - v.mean(axis=0)
        scale = float(np.abs(v).max())
    else:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
    if scale <= 0.0:
        raise RenderError(f"mesh has a degenerate bounding box (scale {scale:g})")
    return v / scale


def _mesh_colors(tm: trimesh.Trimesh) -> tuple[str, np.ndarray] | None:
    """``("point", (N, 3) uint8)``, ``("cell", (F, 3) uint8)`` or ``None`` for an uncoloured mesh."""
    visual = tm.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        try:
            visual = visual.to_color()
        except (ValueError, IndexError, AttributeError, TypeError) as exc:
            logger.warning("could not bake texture to vertex colours (%s); rendering grey", exc)
            return None
        kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return "point", np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)
    if kind == "face":
        return "cell", np.asarray(visual.face_colors)[:, :3].astype(np.uint8)
    return None


# ---------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------


@dataclass
class RenderBatch:
    """Output of :meth:`Renderer.render_many`.

    Attributes:
        images: ``(N, V, H, W, 3)`` uint8; failed items are filled with the background colour.
        failed: item index → error message, for the items that could not be rendered.
    """

    images: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        """``(N,)`` bool, True where the item rendered."""
        mask = np.ones(len(self.images), dtype=bool)
        mask[list(self.failed)] = False
        return mask

    def to_tensor(self) -> torch.Tensor:
        """Images as ``(N, V, 3, H, W)`` float32 in ``[0, 1]``."""
        import torch

        return torch.from_numpy(self.images).permute(0, 1, 4, 2, 3).float().div_(255.0)


# ---------------------------------------------------------------------------------------------------
# renderer
# ---------------------------------------------------------------------------------------------------


class Renderer:
    """Off-screen multi-view renderer that keeps ONE pyvista plotter and reuses it.

    Creating a plotter (GL context, window, FBOs) costs ~0.1–0.5 s, rendering a 224 px view of a few
    thousand faces a few milliseconds, so the plotter is built lazily on first use and then only the
    mesh actor and the camera change. Not thread-safe: use one renderer per thread/process.

    Args:
        image_size: output size, an int for square images or ``(width, height)``; default 224.
        background: background colour, a name (``"white"``), hex string or RGB tuple; default white.
        backend: rendering backend; only ``"pyvista"`` is available.
        normalize: default mesh normalisation when ``cameras`` is a plain camera list, one of
            ``"unit_sphere"`` (default, MATE-3D), ``"unit_cube"`` (T3Bench), ``"none"``. A
            :class:`CameraRig` brings its own default.
        lighting: ``"soft"`` (default; headlight + strong ambient) or ``"flat"`` (ambient only).
        default_color: RGB uint8 colour for meshes without vertex/face colours.

    Example:
        >>> import trimesh
        >>> from debias3d.render import mate3d_rig
        >>> with Renderer(image_size=128) as r:
        ...     views = r.render(trimesh.creation.icosphere(), mate3d_rig())
        >>> views.shape, views.dtype
        ((6, 128, 128, 3), dtype('uint8'))
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        background: str | Sequence[float] = "white",
        backend: str = "pyvista",
        normalize: str = "unit_sphere",
        lighting: str = "soft",
        default_color: tuple[int, int, int] = _DEFAULT_RGB,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if lighting not in LIGHTING_MODES:
            raise ValueError(f"lighting must be one of {LIGHTING_MODES}, got {lighting!r}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        width, height = (int(s) for s in image_size)
        if width < 1 or height < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        self.width, self.height = width, height
        self.backend = backend
        self.normalize = normalize
        self.lighting = lighting
        self.background = background
        self.default_color = tuple(int(c) for c in default_color)
        self.background_rgb = self._parse_color(background)
        self._plotter: Any = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @staticmethod
    def _parse_color(color: str | Sequence[float]) -> tuple[int, int, int]:
        from PIL import ImageColor  # light; avoids importing VTK just to parse a colour

        if not isinstance(color, str):
            vals = [float(c) for c in color][:3]
            if len(vals) != 3:
                raise ValueError(f"background: expected 3 RGB values, got {color!r}")
            scale = 1.0 if max(vals) > 1.0 else 255.0  # accept [0, 1] floats or 0..255
            return tuple(int(round(min(max(c * scale, 0.0), 255.0))) for c in vals)  # type: ignore[return-value]
        try:
            return ImageColor.getrgb(color)[:3]  # type: ignore[return-value]
        except ValueError as exc:
            raise ValueError(f"background: unknown colour {color!r}") from exc

    def _ensure_plotter(self) -> Any:
        if self._plotter is not None:
            return self._plotter
        pv = _import_pyvista()
        plotter = pv.Plotter(off_screen=True, window_size=(self.width, self.height), lighting="none")
        plotter.set_background(tuple(c / 255.0 for c in self.background_rgb))
        if self.lighting == "soft":
            plotter.add_light(pv.Light(light_type="headlight", intensity=1.0))
        # The first screenshot of a pyvista plotter resets the camera to its default view; take it
        # now so that later screenshots keep the cameras we set.
        plotter.screenshot(return_img=False)
        logger.debug(
            "created off-screen plotter %dx%d (%s)", self.width, self.height, type(plotter.ren_win).__name__
        )
        self._plotter = plotter
        return plotter

    def close(self) -> None:
        """Release the plotter and its GL context. The renderer can be used again afterwards."""
        if self._plotter is not None:
            self._plotter.close()
            self._plotter = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Renderer(image_size=({self.width}, {self.height}), background={self.background!r}, "
            f"backend={self.backend!r}, normalize={self.normalize!r}, lighting={self.lighting!r})"
        )

    # -- rendering -----------------------------------------------------------------------------------

    def _resolve(self, cameras: Cameras, normalize: str | None) -> tuple:
        if isinstance(cameras, Camera):
            cameras = [cameras]
        if isinstance(cameras, CameraRig):
            mode = normalize or cameras.normalize
            cams = list(cameras.cameras)
        else:
            mode = normalize or self.normalize
            cams = list(cameras)
        if not cams:
            raise ValueError("no cameras given")
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
        return cams, mode

    def blank(self, n_views: int) -> np.ndarray:
        """Background-filled images, ``(n_views, H, W, 3)`` uint8."""
        out = np.empty((n_views, self.height, self.width, 3), dtype=np.uint8)
        out[...] = self.background_rgb
        return out

    def _set_mesh(self, mesh: MeshLike, normalize: str) -> None:
        tm = validate_mesh(mesh)
        vertices = normalize_vertices(tm.vertices, normalize)
        pv = _import_pyvista()
        poly = pv.PolyData.from_regular_faces(vertices, np.asarray(tm.faces, dtype=np.int64))
        colors = _mesh_colors(tm)
        if colors is None:
            where = "point"
            rgb = np.tile(np.asarray(self.default_color, np.uint8), (poly.n_points, 1))
        else:
            where, rgb = colors
        (poly.point_data if where == "point" else poly.cell_data)["rgb"] = rgb
        ambient, diffuse = _LIGHTING[self.lighting]
        self._ensure_plotter().add_mesh(
            poly,
            scalars="rgb",
            rgb=True,
            preference=where,
            name=_MESH_ACTOR,  # replaces the previous mesh's actor
            ambient=ambient,
            diffuse=diffuse,
            specular=0.0,
            show_scalar_bar=False,
            reset_camera=False,
        )

    def _shoot(self, cameras: Sequence[Camera]) -> np.ndarray:
        plotter = self._ensure_plotter()
        cam = plotter.renderer.GetActiveCamera()
        out = np.empty((len(cameras), self.height, self.width, 3), dtype=np.uint8)
        for i, c in enumerate(cameras):
            cam.SetPosition(*c.position)
            cam.SetFocalPoint(*c.focal_point)
            cam.SetViewUp(*c.up)
            cam.SetViewAngle(c.fov_degrees)
            cam.OrthogonalizeViewUp()
            plotter.renderer.ResetCameraClippingRange()
            # Without an explicit render the window still holds the previous frame.
            plotter.render()
            img = plotter.screenshot(return_img=True)
            out[i] = np.asarray(img)[..., :3]
        return out

    def render(self, mesh: MeshLike, cameras: Cameras, normalize: str | None = None) -> np.ndarray:
        """Render one mesh from every camera.

        Args:
            mesh: a ``trimesh.Trimesh`` (vertex or face colours are used), a ``trimesh.Scene`` or a
                path to a mesh file.
            cameras: a :class:`CameraRig`, a list of :class:`Camera` or one camera.
            normalize: override the normalisation (``None``: the rig's, else the renderer's).

        Returns:
            ``(V, H, W, 3)`` uint8 RGB.

        Raises:
            RenderError: the mesh is empty, has non-finite vertices or a degenerate extent.
        """
        cams, mode = self._resolve(cameras, normalize)
        self._set_mesh(mesh, mode)
        return self._shoot(cams)

    def render_tensor(self, mesh: MeshLike, cameras: Cameras, normalize: str | None = None) -> torch.Tensor:
        """:meth:`render` as a ``(V, 3, H, W)`` float32 tensor in ``[0, 1]``."""
        import torch

        images = self.render(mesh, cameras, normalize)
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)

    def render_many(
        self,
        meshes: Iterable[MeshLike],
        cameras: Cameras,
        on_error: str = "raise",
        normalize: str | None = None,
    ) -> RenderBatch:
        """Render several meshes with the same cameras, reusing the plotter throughout.

        Args:
            meshes: meshes or mesh paths, ``N`` items.
            cameras: the rig, ``V`` views.
            on_error: ``"raise"`` re-raises the first :class:`RenderError`; ``"blank"`` logs it, fills
                that item with background images and goes on.
            normalize: as in :meth:`render`.

        Returns:
            :class:`RenderBatch` with ``images`` ``(N, V, H, W, 3)`` uint8 and ``failed``
            (index → message).
        """
        if on_error not in ("raise", "blank"):
            raise ValueError(f"on_error must be 'raise' or 'blank', got {on_error!r}")
        cams, mode = self._resolve(cameras, normalize)
        images: list[np.ndarray] = []
        failed: dict[int, str] = {}
        for i, mesh in enumerate(meshes):
            try:
                self._set_mesh(mesh, mode)
            except RenderError as exc:
                if on_error == "raise":
                    raise RenderError(f"item {i}: {exc}") from exc
                logger.warning("render_many: item %d rendered blank: %s", i, exc)
                failed[i] = str(exc)
                images.append(self.blank(len(cams)))
                continue
            images.append(self._shoot(cams))
        stacked = (
            np.stack(images)
            if images
            else np.empty((0, len(cams), self.height, self.width, 3), dtype=np.uint8)
        )
        return RenderBatch(stacked, failed)


# ---------------------------------------------------------------------------------------------------
# shared default renderers
# ---------------------------------------------------------------------------------------------------

_DEFAULTS: dict[tuple, Renderer] = {}


def default_renderer(
    image_size: int | tuple[int, int] = 224, background: str = "white", lighting: str = "soft"
) -> Renderer:
    """A process-wide renderer per ``(image_size, background, lighting)``, closed at exit.

    Saves the plotter start-up cost for callers that render now and then (CLI commands, rankers).
    """
    key = (image_size, background, lighting)
    if key not in _DEFAULTS:
        _DEFAULTS[key] = Renderer(image_size=image_size, background=background, lighting=lighting)
    return _DEFAULTS[key]


def close_default_renderers() -> None:
    """Close every renderer made by :func:`default_renderer`."""
    while _DEFAULTS:
        _, renderer = _DEFAULTS.popitem()
        renderer.close()


atexit.register(close_default_renderers)
