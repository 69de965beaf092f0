"""Camera rigs as plain data: MATE-3D's six views and T3Bench's icosphere views.

World frame (see :mod:`debias3d.data.assets`): **z is up**, assets live in ``[-1, 1]^3``.
Spherical coordinates used throughout this module::

    position = distance * (cos(elev) cos(azim), cos(elev) sin(azim), sin(elev))

so ``(elev, azim) = (0, 0)`` looks from ``+x`` towards the origin, ``(0, 90)`` from ``+y`` and
``(90, 0)`` from straight above.

A rig is only geometry; :class:`debias3d.render.renderer.Renderer` turns it into images.

>>> rig = mate3d_rig()
>>> len(rig), rig.normalize
(6, 'unit_sphere')
>>> t3 = t3bench_rig(level=2)
>>> t3.n_positions, len(t3.fovs), len(t3)
(162, 5, 810)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "Camera",
    "CameraRig",
    "NORMALIZE_MODES",
    "T3BENCH_FOVS",
    "mate3d_rig",
    "orbit_rig",
    "RIG_PRESETS",
    "resolve_up",
    "rig_preset",
    "smooth_vertex_scores",
    "t3bench_rig",
    "t3bench_up",
]

#: How a renderer rescales a mesh before rendering a rig.
#: ``unit_sphere`` (MATE-3D): bounding-box centre to the origin, farthest vertex at radius 1.
#: ``unit_sphere_mean`` (HyperScore's renderer): vertex mean to the origin, farthest vertex at radius 1.
#: ``unit_cube`` (T3Bench): vertex mean to the origin, max ``|coordinate|`` = 1.
#: ``none``: render the mesh in its own coordinates.
NORMALIZE_MODES = ("unit_sphere", "unit_sphere_mean", "unit_cube", "none")

#: T3Bench renders every icosphere vertex with these vertical fields of view (radians) and keeps the
#: best score over them.
T3BENCH_FOVS: tuple[float, ...] = (math.pi / 3, math.pi / 4, math.pi / 5, math.pi / 6, math.pi / 7.5)

_WORLD_UP = np.array([0.0, 0.0, 1.0])
# |cos| between the view direction and world up above which z-up is treated as singular.
_SINGULAR_COS = 0.999


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n == 0.0 or not math.isfinite(n):
        raise ValueError(f"cannot normalise vector {v!r}")
    return v / n


def resolve_up(position: Sequence[float], focal_point: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Up vector for a camera at ``position`` looking at ``focal_point`` in the z-up world.

    World ``+z`` projected onto the image plane, except when the camera looks (almost) straight up or
    down, where that projection vanishes. There the up vector is the limit of the orbit tangent
    ``d position / d elev``: for a camera above the object the top of the image points away from
    the camera's horizontal offset (towards ``-x`` when the offset is zero), so a top view at
    ``azim = 0`` is the continuation of the side view at ``azim = 0``.

    Args:
        position: camera centre, shape ``(3,)``.
        focal_point: point looked at, shape ``(3,)``; default the origin.

    Returns:
        Unit vector, shape ``(3,)``, orthogonal to the view direction.
    """
    pos = np.asarray(position, dtype=float)
    foc = np.asarray(focal_point, dtype=float)
    back = _unit(pos - foc)  # from the focal point towards the camera
    if abs(float(back @ _WORLD_UP)) < _SINGULAR_COS:
        return _unit(_WORLD_UP - (_WORLD_UP @ back) * back)
    # Singular: keep the horizontal offset if any, else behave like azim = 0.
    horiz = np.array([back[0], back[1], 0.0])
    horiz = _unit(horiz) if np.linalg.norm(horiz) > 1e-9 else np.array([1.0, 0.0, 0.0])
    up = -math.copysign(1.0, float(back[2])) * horiz
    return _unit(up - (up @ back) * back)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera.

    Attributes:
        position: camera centre in world coordinates, ``(3,)``.
        focal_point: the point the camera looks at, ``(3,)``.
        up: view-up vector, ``(3,)``; must not be parallel to the view direction.
        fov: *vertical* field of view in radians (pyvista/VTK ``view_angle``, pyrender ``yfov``).
        name: free-form label (e.g. ``"front"``, ``"ico012_fov1"``) for contact sheets and logs.
    """

    position: tuple[float, float, float]
    focal_point: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov: float = math.pi / 3
    name: str = ""

    def __post_init__(self) -> None:
        for attr in ("position", "focal_point", "up"):
            val = tuple(float(x) for x in np.asarray(getattr(self, attr), dtype=float).reshape(-1))
            if len(val) != 3 or not all(math.isfinite(x) for x in val):
                raise ValueError(f"Camera.{attr} must be 3 finite numbers, got {getattr(self, attr)!r}")
            object.__setattr__(self, attr, val)
        if not 0.0 < self.fov < math.pi:
            raise ValueError(f"Camera.fov must be in (0, pi) radians, got {self.fov!r}")
        view = np.subtract(self.focal_point, self.position)
        if np.linalg.norm(view) < 1e-12:
            raise ValueError("Camera.position and Camera.focal_point coincide")
        cross = np.cross(view / np.linalg.norm(view), self.up)
        if np.linalg.norm(cross) < 1e-6:
            raise ValueError(
                f"Camera.up {self.up} is parallel to the view direction; use Camera.look_at "
                "or resolve_up() to pick a valid one"
            )

    @property
    def fov_degrees(self) -> float:
        """Vertical field of view in degrees."""
        return math.degrees(self.fov)

    @property
    def distance(self) -> float:
        """Distance from the camera to its focal point."""
        return float(np.linalg.norm(np.subtract(self.position, self.focal_point)))

    @classmethod
    def look_at(
        cls,
        position: Sequence[float],
        focal_point: Sequence[float] = (0.0, 0.0, 0.0),
        fov: float = math.pi / 3,
        name: str = "",
    ) -> Camera:
        """A camera at ``position`` looking at ``focal_point`` with the up vector from :func:`resolve_up`."""
        up = resolve_up(position, focal_point)
        return cls(tuple(position), tuple(focal_point), tuple(up), fov, name)  # type: ignore[arg-type]

    @classmethod
    def orbit(
        cls, elev: float, azim: float, distance: float = 2.0, fov: float = math.pi / 3, name: str = ""
    ) -> Camera:
        """A camera on a sphere around the origin; ``elev`` and ``azim`` in **degrees**.

        The up vector is the orbit tangent ``d position / d elev``, which equals world ``+z`` projected
        on the image plane and stays well defined at ``elev = ±90``.
        """
        e, a = math.radians(elev), math.radians(azim)
        pos = distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        up = np.array([-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e)])
        return cls(tuple(pos), (0.0, 0.0, 0.0), tuple(up), fov, name)  # type: ignore[arg-type]

    def with_fov(self, fov: float) -> Camera:
        """The same pose with another vertical field of view (radians)."""
        return replace(self, fov=fov)


@dataclass(frozen=True, eq=False)
class CameraRig:
    """An ordered set of cameras plus how to prepare a mesh for them.

    Attributes:
        name: rig identifier (``"mate3d"``, ``"t3bench-l2"``, ...).
        cameras: the views, in render order; images come back in this order, ``(V, H, W, 3)``.
        normalize: one of :data:`NORMALIZE_MODES`; the default a renderer applies for this rig.
        positions: distinct camera centres ``(P, 3)``; for multi-fov rigs ``V = P * len(fovs)``.
        fovs: fields of view (radians) each position is rendered with.
        adjacency: for icosphere rigs, ``adjacency[p]`` holds the neighbouring position indices
            (symmetric); used to smooth per-position scores (:func:`smooth_vertex_scores`).
        background: background colour the benchmark renders on.
        lighting: the renderer lighting the benchmark uses (``"soft"`` or ``"flat"``, see
            :mod:`debias3d.render.renderer`).
        image_size: render size in pixels the benchmark uses (None: the caller's choice).
        view_position: for each view, the index of its camera centre in ``positions``; defaults to
            ``0..V-1`` (one view per position).
    """

    name: str
    cameras: tuple[Camera, ...]
    normalize: str = "unit_sphere"
    positions: np.ndarray | None = None
    fovs: tuple[float, ...] = ()
    adjacency: tuple[tuple[int, ...], ...] | None = None
    background: str = "white"
    view_position: tuple[int, ...] = field(default=(), repr=False)
    lighting: str = "soft"
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"CameraRig.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if not self.cameras:
            raise ValueError("CameraRig.cameras is empty")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.positions is None:
            object.__setattr__(self, "positions", np.array([c.position for c in self.cameras]))
        if self.image_size is not None and int(self.image_size) < 8:
            raise ValueError(f"CameraRig.image_size must be >= 8 pixels, got {self.image_size}")
        if not self.view_position:
            object.__setattr__(self, "view_position", tuple(range(len(self.cameras))))
        if len(self.view_position) != len(self.cameras):
            raise ValueError(
                f"CameraRig.view_position has {len(self.view_position)} entries for {len(self.cameras)} cameras"
            )

    def __len__(self) -> int:
        return len(self.cameras)

    def __iter__(self) -> Iterator[Camera]:
        return iter(self.cameras)

    def __getitem__(self, i: int | slice) -> Camera | tuple[Camera, ...]:
        return self.cameras[i]

    @property
    def n_positions(self) -> int:
        """Number of distinct camera centres ``P``."""
        return int(self.positions.shape[0])  # type: ignore[union-attr]

    @property
    def position_index(self) -> np.ndarray:
        """For each view ``v`` the index of its camera centre, ``(V,)`` int."""
        return np.asarray(self.view_position, dtype=np.int64)

    @property
    def names(self) -> list[str]:
        """Camera names, ``V`` strings."""
        return [c.name for c in self.cameras]


def mate3d_rig(distance: float = 2.0, fov: float = math.pi / 3) -> CameraRig:
    """MATE-3D's six axis-aligned views: front, right, back, left, top, bottom.

    ``(elev, azim)`` in degrees: ``(0, 0), (0, 90), (0, 180), (0, -90), (90, 0), (-90, 0)`` at
    ``distance`` 2 around a mesh centred and scaled to unit radius, on a white background. With the
    default ``fov = pi/3`` the unit sphere exactly fills the frame vertically (``asin(1/2) = 30°``).

    Returns:
        A rig with ``V = 6`` cameras and ``normalize="unit_sphere"``.
    """
    views = [
        ("front", 0.0, 0.0),
        ("right", 0.0, 90.0),
        ("back", 0.0, 180.0),
        ("left", 0.0, -90.0),
        ("top", 90.0, 0.0),
        ("bottom", -90.0, 0.0),
    ]
    cams = tuple(Camera.orbit(e, a, distance, fov, name) for name, e, a in views)
    return CameraRig("mate3d", cams, normalize="unit_sphere", fovs=(fov,), background="white")


def orbit_rig(
    n_views: int = 8, elev: float = 20.0, distance: float = 2.0, fov: float = math.pi / 3
) -> CameraRig:
    """``n_views`` cameras evenly spaced in azimuth at one elevation (degrees); handy for previews."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    cams = tuple(
        Camera.orbit(elev, 360.0 * i / n_views, distance, fov, f"az{360.0 * i / n_views:.0f}")
        for i in range(n_views)
    )
    return CameraRig(f"orbit{n_views}", cams, normalize="unit_sphere", fovs=(fov,))


def _icosphere_adjacency(faces: np.ndarray, n_vertices: int) -> tuple[tuple[int, ...], ...]:
    neighbours: list[set[int]] = [set() for _ in range(n_vertices)]
    for a, b, c in np.asarray(faces, dtype=np.int64):
        neighbours[a].update((b, c))
        neighbours[b].update((a, c))
        neighbours[c].update((a, b))
    return tuple(tuple(sorted(n)) for n in neighbours)


def t3bench_up(position: Sequence[float]) -> np.ndarray:
    """T3Bench's camera up vector (``render/meshrender.py``): world ``+z`` made orthogonal to the
    view, or ``+y`` when the camera is within ``acos(0.99)`` of a pole.

    >>> (t3bench_up((0.0, 0.0, 2.2)).round(6) + 0.0).tolist()  # top view: +y up (resolve_up: -x)
    [0.0, 1.0, 0.0]
    """
    v = np.asarray(position, dtype=float)
    f = _unit(v)
    u = np.array([0.0, 0.0, 1.0]) if abs(float(f @ _WORLD_UP)) < 0.99 else np.array([0.0, 1.0, 0.0])
    r = _unit(np.cross(u, -v))
    return _unit(np.cross(-v, r))


def t3bench_rig(
    level: int = 2,
    radius: float = 2.2,
    fovs: Sequence[float] = T3BENCH_FOVS,
    background: str = "white",
    lighting: str = "soft",
    image_size: int | None = None,
    up_rule: str = "resolve",
) -> CameraRig:
    """T3Bench's icosphere rig: every vertex of ``icosphere(subdivisions=level)`` at ``radius``.

    T3Bench's quality metric renders each vertex with every fov in ``fovs``, keeps the best score over
    the fovs, then smooths the per-vertex scores 3 times over icosphere neighbours
    (:func:`smooth_vertex_scores`) and reports the best vertex. Its alignment metric uses ``level=0``
    (the 12 icosahedron vertices). The mesh is centred on its vertex mean and scaled to max
    ``|coordinate|`` 1 (``normalize="unit_cube"``).

    Views are ordered position-major: view ``p * len(fovs) + f`` is position ``p`` with ``fovs[f]``.

    Args:
        level: icosphere subdivisions (0 → 12 positions, 1 → 42, 2 → 162).
        radius: camera distance from the origin.
        fovs: vertical fields of view in radians.
        background / lighting / image_size: render settings carried by the rig (T3Bench: black,
            flat, 512; see :func:`rig_preset`).
        up_rule: ``"resolve"`` (:func:`resolve_up`) or ``"t3bench"`` (:func:`t3bench_up`, which
            rolls the two pole views differently).

    Returns:
        A rig with ``P = 10 * 4**level + 2`` positions, ``V = P * len(fovs)`` cameras and
        ``adjacency`` set.
    """
    import trimesh  # heavy-ish; only needed here

    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    if not fovs:
        raise ValueError("fovs must not be empty")
    if up_rule not in ("resolve", "t3bench"):
        raise ValueError(f"up_rule must be 'resolve' or 't3bench', got {up_rule!r}")
    ico = trimesh.creation.icosphere(subdivisions=level, radius=radius)
    verts = np.asarray(ico.vertices, dtype=float)
    cams: list[Camera] = []
    index: list[int] = []
    for p, v in enumerate(verts):
        if up_rule == "t3bench":
            base = Camera(tuple(v), up=tuple(t3bench_up(v)), name=f"ico{p:03d}")  # type: ignore[arg-type]
        else:
            base = Camera.look_at(v, name=f"ico{p:03d}")
        for f, fov in enumerate(fovs):
            cams.append(replace(base, fov=float(fov), name=f"ico{p:03d}_fov{f}"))
            index.append(p)
    return CameraRig(
        f"t3bench-l{level}",
        tuple(cams),
        normalize="unit_cube",
        positions=verts,
        fovs=tuple(float(f) for f in fovs),
        adjacency=_icosphere_adjacency(ico.faces, len(verts)),
        background=background,
        view_position=tuple(index),
        lighting=lighting,
        image_size=image_size,
    )


#: Rig presets by name (:func:`rig_preset`).
RIG_PRESETS: tuple[str, ...] = ("mate3d", "t3bench", "t3bench-caption")

#: T3Bench's render settings (``render/meshrender.py``): 512 px, black background, ambient-only
#: ``RenderFlags.FLAT`` lighting, mesh centred on its vertex mean and scaled to max |coordinate| 1.
T3BENCH_IMAGE_SIZE = 512
T3BENCH_RADIUS = 2.2


def rig_preset(name: str) -> CameraRig:
    """A named rig with the benchmark's own render settings.

    * ``mate3d``: :func:`mate3d_rig` (6 views, white).
    * ``t3bench``: T3Bench's quality views: every vertex of a level-2 icosphere of radius 2.2
      (162 positions) with the 5 FoVs π/3, π/4, π/5, π/6, π/7.5 (810 views), T3Bench's up vectors,
      512 px, black background, flat lighting.
    * ``t3bench-caption``: T3Bench's alignment (captioning) views, ``render/meshrender_cap.py``:
      the 12 icosahedron vertices, FoV π/3, at radius 2.2 × 2.2 = 4.84 (upstream scales the
      icosphere by the radius twice), 512 px, black, flat.

    >>> r = rig_preset("t3bench")
    >>> len(r), r.image_size, r.background, r.lighting
    (810, 512, 'black', 'flat')
    """
    if name == "mate3d":
        return mate3d_rig()
    if name == "t3bench":
        return t3bench_rig(
            2, T3BENCH_RADIUS, T3BENCH_FOVS, "black", "flat", T3BENCH_IMAGE_SIZE, up_rule="t3bench"
        )
    if name == "t3bench-caption":
        rig = t3bench_rig(
            0, T3BENCH_RADIUS * T3BENCH_RADIUS, (math.pi / 3,), "black", "flat", T3BENCH_IMAGE_SIZE, "t3bench"
        )
        return replace(rig, name="t3bench-caption")
    raise ValueError(f"unknown rig preset {name!r}; choose one of {', '.join(RIG_PRESETS)}")


def smooth_vertex_scores(
    scores: Sequence[float] | np.ndarray,
    adjacency: Sequence[Sequence[int]],
    iterations: int = 3,
) -> np.ndarray:
    """Average each score with its neighbours' scores, ``iterations`` times (T3Bench's "convolution").

    ``s'_p = (s_p + Σ_{n ∈ N(p)} s_n) / (|N(p)| + 1)``.

    Args:
        scores: per-position scores, ``(P,)`` or ``(P, K)``.
        adjacency: ``adjacency[p]`` = neighbour indices of position ``p``.
        iterations: number of smoothing passes (T3Bench uses 3).

    Returns:
        Smoothed scores, same shape as ``scores`` (float64).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[0] != len(adjacency):
        raise ValueError(f"scores has {s.shape[0]} rows but adjacency has {len(adjacency)} positions")
    for _ in range(iterations):
        s = np.stack([(s[p] + s[list(nb)].sum(axis=0)) / (len(nb) + 1) for p, nb in enumerate(adjacency)])
    return s
