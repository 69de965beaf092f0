"""Headless multi-view rendering and camera rigs (MATE-3D 6 views, T3Bench icosphere).

Importing this package is cheap: VTK/pyvista load only when a :class:`Renderer` draws its first
image.
"""

from debias3d.render.cameras import (
    NORMALIZE_MODES,
    T3BENCH_FOVS,
    Camera,
    CameraRig,
    mate3d_rig,
    orbit_rig,
    resolve_up,
    smooth_vertex_scores,
    t3bench_rig,
)
from debias3d.render.renderer import (
    RenderBatch,
    Renderer,
    RenderError,
    close_default_renderers,
    configure_headless,
    default_renderer,
    normalize_vertices,
    validate_mesh,
)
from debias3d.render.sheet import contact_sheet

__all__ = [
    "NORMALIZE_MODES",
    "T3BENCH_FOVS",
    "Camera",
    "CameraRig",
    "RenderBatch",
    "RenderError",
    "Renderer",
    "close_default_renderers",
    "configure_headless",
    "contact_sheet",
    "default_renderer",
    "mate3d_rig",
    "normalize_vertices",
    "orbit_rig",
    "resolve_up",
    "smooth_vertex_scores",
    "t3bench_rig",
    "validate_mesh",
]
