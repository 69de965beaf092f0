"""ShapeWorld builder: :class:`SceneSpec` -> coloured mesh + voxel grid.

Every object is a union of analytic solids (surfaces of revolution, boxes, ellipsoids, cones) with
an exact ``inside(points)`` test, so the voxel grid is exact at voxel centres. The grid is what a
generator learns, so each word is built to be visible at 16^3:

* thin parts (necks, stems, trunks, legs) have quantised widths that do not shrink with size:
  default neck 12 voxels per slice, narrow neck 4; stems/trunks 4, thick 12; legs 1 voxel, thick 2x2;
* ``long``/``short`` change the thin part's length by about x2 / x0.3; ``tall``/``flat`` scale z by
  1.6 / 0.5; ``small``/``large`` scale by 0.6 / 1.4; spikes stick out 3 voxels;
* objects stand on the floor (z = -1) unless ``floating`` (3 voxels up); objects in a row are at
  least one voxel apart and stacked objects leave one empty slice, so connected components are objects.

Placement keeps every object axis on a voxel corner and moves objects by whole voxels only, so the
discretisation of a part does not depend on where the object stands. The seeded jitter changes
proportions by a few percent, colours slightly and positions by whole voxels.

>>> from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec
>>> asset = build(SceneSpec((ObjectSpec("vase", colour="red", modifiers=("long",)),)))
>>> asset.voxels.occupancy.shape
(16, 16, 16)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from debias3d.data.assets import DEFAULT_RESOLUTION, Asset, VoxelGrid
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.phrasing import canonical_prompt
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec
from debias3d.data.shapeworld.voxelize import voxels_to_mesh
from debias3d.registry import register

logger = logging.getLogger(__name__)

V = 2.0 / DEFAULT_RESOLUTION  # world size of one voxel at the reference resolution (0.125)
DEFAULT_MESH_RESOLUTION = 48  # mesh is marching cubes of the analytic solids at this resolution

TALL_Z, FLAT_Z = 1.6, 0.5
FLOAT_LIFT_VOXELS = 3
ROW_GAP_VOXELS = (1, 2)  # min/max empty voxels between objects in a row
STACK_GAP_VOXELS = 1  # empty slices between stacked objects
LEAN_DEG = 35.0
SPIKE_LEN = 3.0 * V
#: Part words need a large enough object to show at 16^3 (a 3-voxel-wide vase has no room for a
#: narrow neck); the grammar only writes them when the object's scale is at least this.
MIN_DETAIL_SCALE = 0.85
#: Free voxels the jitter-free scene must leave at the sides and top (position jitter is +-1 voxel).
FIT_MARGIN_VOXELS = 1
#: Rotating actions: which modifiers stay measurable (z-scaling and roundness are read along z).
ROTATED_ALLOWED = {
    "upside-down": frozenset({"tall", "flat", "round"}),
    "leaning": frozenset(),
    "lying": frozenset(),
}
DETAIL_WORDS = frozenset({"narrow", "thick", "wide", "round"})
#: Thin-part lengths (long / short) need at least this scale: smaller parts are 1-2 slices long.
MIN_PART_SCALE = 0.65
#: Slender nouns need this scale before their shape words (modifiers, actions) are readable.
NOUN_MIN_SHAPE_SCALE = {"snowman": 0.85, "rocket": 0.65, "lamp": 0.65, "bottle": 0.65}
#: Below this scale objects are 2-3 voxels wide and no word is readable.
MIN_SCALE = 0.35
#: Layout scale by scene kind: objects shrink so that rows and stacks fit in [-1, 1]^3.
LAYOUT_SCALE = {
    ("single", 1): 1.0,
    ("row", 2): 0.7,
    ("row", 3): 0.55,
    ("next to", 2): 0.7,
    ("on top of", 2): 0.62,
    ("stacked", 2): 0.6,
    ("stacked", 3): 0.5,
}


# ------------------------------------------------------------------------------------------------
# Analytic solids. inside(p) takes (N, 3) local points and returns (N,) bool.
# ------------------------------------------------------------------------------------------------
@dataclass
class Revolve:
    """Solid of revolution about the local z axis: radius ``np.interp(z, zs, rs)``."""

    zs: Sequence[float]
    rs: Sequence[float]

    def inside(self, p: np.ndarray) -> np.ndarray:
        z = p[:, 2]
        rho = np.hypot(p[:, 0], p[:, 1])
        zs = np.asarray(self.zs)
        return (z >= zs[0]) & (z <= zs[-1]) & (rho <= np.interp(z, zs, np.asarray(self.rs)))


@dataclass
class Box:
    lo: Sequence[float]
    hi: Sequence[float]

    def inside(self, p: np.ndarray) -> np.ndarray:
        return ((p >= np.asarray(self.lo)) & (p <= np.asarray(self.hi))).all(1)


@dataclass
class Ellipsoid:
    centre: Sequence[float]
    radii: Sequence[float]

    def inside(self, p: np.ndarray) -> np.ndarray:
        return (((p - np.asarray(self.centre)) / np.asarray(self.radii)) ** 2).sum(1) <= 1.0


@dataclass
class Cone:
    """Truncated cone along the segment p0 -> p1 with radii r0 -> r1."""

    p0: Sequence[float]
    p1: Sequence[float]
    r0: float
    r1: float

    def inside(self, p: np.ndarray) -> np.ndarray:
        a, b = np.asarray(self.p0, float), np.asarray(self.p1, float)
        d = b - a
        t = ((p - a) @ d) / float(d @ d)
        rad = np.linalg.norm(p - a - t[:, None] * d[None], axis=1)
        return (t >= 0) & (t <= 1) & (rad <= self.r0 + (self.r1 - self.r0) * t)


@dataclass
class Shape:
    """One object in local coordinates: base at z = 0, axis through x = y = 0.

    ``hx, hy, h`` give the nominal bounding box ``[-hx, hx] x [-hy, hy] x [0, h]``.
    """

    parts: list
    holes: list = field(default_factory=list)
    hx: float = 0.5
    hy: float = 0.5
    h: float = 1.0

    def inside(self, p: np.ndarray) -> np.ndarray:
        m = np.zeros(len(p), bool)
        for part in self.parts:
            m |= part.inside(p)
        for hole in self.holes:
            m &= ~hole.inside(p)
        return m


# ------------------------------------------------------------------------------------------------
# Templates: (scale, z factor, modifiers, jitter) -> Shape
# ------------------------------------------------------------------------------------------------
def _snap_centre(x: float) -> float:
    """Nearest voxel-centre coordinate of the reference lattice (local = world up to whole voxels)."""
    return (math.floor(x / V) + 0.5) * V


def _snap_edge(x: float) -> float:
    return round(x / V) * V


@dataclass
class _Ctx:
    s: float  # uniform scale
    zf: float  # z factor from tall/flat
    mods: frozenset[str]
    jit: Callable[[float], float]  # jit(a) -> factor in [1 - a, 1 + a]

    def thin_len(self, default: float, long: float, short: float) -> float:
        """Length of the thin part (tall / flat stretch and squash it with the body)."""
        base = long if "long" in self.mods else short if "short" in self.mods else default
        return base * self.s * self.zf * self.jit(0.06)


def _spikes(z: float, r_in: float, r_out: float, n: int = 8) -> list:
    """n horizontal spikes from radius r_in to r_out at height z.

    Each spike is a 1-voxel-thick line through voxel centres (the local lattice equals the world
    lattice up to whole voxels), so it shows as a clean row of voxels rather than a staircase that
    fades at the tip.
    """
    zc = _snap_centre(z)
    out = []
    for k in range(n):
        a = 2 * math.pi * k / n
        dx, dy = round(math.cos(a), 6), round(math.sin(a), 6)
        ox = math.copysign(0.5 * V, dx) if dx else 0.5 * V
        oy = math.copysign(0.5 * V, dy) if dy else 0.5 * V
        d = np.array([dx, dy]) / math.hypot(dx, dy)
        p0 = (ox + r_in * d[0], oy + r_in * d[1], zc)
        p1 = (ox + r_out * d[0], oy + r_out * d[1], zc)
        out.append(Cone(p0, p1, 0.08, 0.08))
    return out


def _neck_radius(c: _Ctx) -> float:
    if "narrow" in c.mods:
        return float(np.clip(0.12 * c.s, 0.1, 0.15))
    return float(np.clip(0.23 * c.s, 0.21, 0.3))


def _stem_radius(c: _Ctx) -> float:
    return 0.23 if "thick" in c.mods else 0.12


def _vase(c: _Ctx) -> Shape:
    rb = 0.41 * c.s * c.jit(0.03)
    hb = 0.66 * c.s * c.zf * c.jit(0.04)
    rn = _neck_radius(c)
    ln = c.thin_len(0.375, 0.75, 0.08)
    zs = [0.0, 0.2 * hb, 0.48 * hb, 0.85 * hb, hb, hb + ln]
    rs = [0.24 * c.s, 0.85 * rb, rb, 0.75 * rb, rn, rn]
    parts: list = [Revolve(zs, rs)]
    hx = rb
    if "wide" in c.mods:
        # a flared foot at least 1.5 voxels high, so it shows on a flat vase too
        rfoot = 0.52 * c.s
        parts.append(Revolve([0.0, max(0.16 * hb, 1.5 * V)], [rfoot, 0.9 * rfoot]))
        hx = max(rb, rfoot)
    if "spiky" in c.mods:
        parts += _spikes(0.48 * hb, 0.7 * rb, rb + SPIKE_LEN)
        hx = rb + SPIKE_LEN
    return Shape(parts, hx=hx, hy=hx, h=hb + ln)


def _bottle(c: _Ctx) -> Shape:
    rb = 0.4 * c.s * c.jit(0.03)
    hb = 0.6 * c.s * c.zf * c.jit(0.04)
    rn = _neck_radius(c)
    ln = c.thin_len(0.35, 0.7, 0.08)
    sh = 0.15 * c.s * c.zf
    parts: list = [Revolve([0.0, hb, hb + sh, hb + sh + ln], [rb, rb, rn, rn])]
    hx = rb
    if "wide" in c.mods:
        parts.append(Revolve([0.0, 0.16 * c.s * c.zf], [0.56 * c.s, 0.56 * c.s]))
        hx = 0.56 * c.s
    return Shape(parts, hx=hx, hy=hx, h=hb + sh + ln)


def _cup(c: _Ctx) -> Shape:
    r = 0.40 * c.s * c.jit(0.03)
    h = 0.5 * c.s * c.zf * c.jit(0.04)
    # hollow only when a one-voxel wall and a hole both fit
    holes = [Revolve([V, h + 1], [r - V, r - V])] if r - V >= 0.15 else []
    return Shape([Revolve([0.0, h], [r, r])], holes=holes, hx=r, hy=r, h=h)


def _bowl(c: _Ctx) -> Shape:
    r = 0.5 * c.s * c.jit(0.03)
    h = 0.45 * c.s * c.zf * c.jit(0.04)
    parts: list = [Revolve([0.0, 0.3 * h, h], [0.45 * r, 0.85 * r, r])]
    holes = [Revolve([V, 0.3 * h, h + 1], [0.2 * r, 0.6 * r, 0.78 * r])]
    hx = r
    if "spiky" in c.mods:
        parts += _spikes(0.6 * h, 0.7 * r, 0.95 * r + SPIKE_LEN)
        hx = r + SPIKE_LEN
    return Shape(parts, holes, hx=hx, hy=hx, h=h)


def _legs(c: _Ctx, half: float, leg_h: float) -> list:
    """Four vertical legs under a square of half-size ``half``; 1 voxel wide, 2x2 when thick."""
    out = []
    if "thick" in c.mods:
        pos = _snap_edge(half - V)
        hw = 0.99 * V
    else:
        pos = _snap_centre(half - 0.5 * V)
        hw = 0.45 * V
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * pos, sy * pos
            out.append(Box((x - hw, y - hw, 0.0), (x + hw, y + hw, leg_h)))
    return out


def _slab(z_bottom: float) -> tuple[float, float]:
    """z range of a one-slice-thick slab starting at the voxel boundary nearest ``z_bottom``."""
    b = _snap_edge(z_bottom)
    return b + 0.05 * V, b + 0.95 * V


def _table(c: _Ctx) -> Shape:
    half = 0.5 * c.s * c.jit(0.03)
    leg_h = c.thin_len(0.55, 0.95, 0.2)
    z0, z1 = _slab(leg_h)
    legs = _legs(c, half * (0.72 if "round" in c.mods else 1.0), z0 + 0.01)
    if "round" in c.mods:
        r = max(half, 0.47)
        top: list = [Revolve([z0, z1], [r, r])]
        half = r
    else:
        top = [Box((-half, -half, z0), (half, half, z1))]
    return Shape(top + legs, hx=half, hy=half, h=z1)


def _chair(c: _Ctx) -> Shape:
    half = 0.4 * c.s * c.jit(0.03)
    leg_h = c.thin_len(0.45, 0.8, 0.15)
    z0, z1 = _slab(leg_h)
    back_h = 0.5 * c.s * c.zf * c.jit(0.04)
    y0 = _snap_edge(half) - V
    parts = [
        Box((-half, -half, z0), (half, half, z1)),
        Box((-half, y0 + 0.05 * V, z1), (half, y0 + 0.95 * V, z1 + back_h)),
        *_legs(c, half, z0 + 0.01),
    ]
    return Shape(parts, hx=half, hy=half, h=z1 + back_h)


def _lamp(c: _Ctx) -> Shape:
    rbase = (0.56 if "wide" in c.mods else 0.34) * c.s
    z0, z1 = _slab(0.0)
    stem = c.thin_len(0.5, 0.9, 0.16)
    rs = _stem_radius(c)
    shade_h = 0.35 * c.s * c.zf * c.jit(0.04)
    rshade = 0.41 * c.s * c.jit(0.03)
    parts = [
        Revolve([0.0, z1], [rbase, rbase]),
        Revolve([0.0, z1 + stem + 0.02], [rs, rs]),
        Revolve([z1 + stem, z1 + stem + shade_h], [rshade, 0.55 * rshade]),
    ]
    return Shape(parts, hx=max(rbase, rshade), hy=max(rbase, rshade), h=z1 + stem + shade_h)


def _tower(c: _Ctx) -> Shape:
    h = 0.95 * c.s * c.zf * c.jit(0.04)
    roof = 0.3 * c.s * c.zf
    if "round" in c.mods:
        r = max(0.45 * c.s, 0.45)
        body: list = [Revolve([0.0, h], [r, r])]
        half = r
    else:
        half = 0.34 * c.s * c.jit(0.03)
        body = [Box((-half, -half, 0.0), (half, half, h))]
    parts = body + [Revolve([h, h + roof], [1.2 * half, 0.05])]
    hx = 1.2 * half
    if "wide" in c.mods:
        # the plinth has the body's cross-section, so roundness still reads the body
        plinth = 1.75 * half
        zp = max(0.16 * c.s * c.zf, 1.5 * V)
        if "round" in c.mods:
            parts.append(Revolve([0.0, zp], [plinth, plinth]))
        else:
            parts.append(Box((-plinth, -plinth, 0.0), (plinth, plinth, zp)))
        hx = max(hx, plinth)
    if "spiky" in c.mods:
        parts += _spikes(0.5 * h, 0.6 * half, half + SPIKE_LEN)
        hx = half + SPIKE_LEN
    return Shape(parts, hx=hx, hy=hx, h=h + roof)


def _tree(c: _Ctx) -> Shape:
    trunk = c.thin_len(0.35, 0.7, 0.12)
    rs = _stem_radius(c)
    crown_h = 0.8 * c.s * c.zf * c.jit(0.04)
    rc = 0.5 * c.s * c.jit(0.03)
    parts: list = [Revolve([0.0, trunk + 0.02], [rs, rs]), Revolve([trunk, trunk + crown_h], [rc, 0.03])]
    hx = rc
    if "spiky" in c.mods:
        parts += _spikes(trunk + 0.3 * crown_h, 0.5 * rc, 0.7 * rc + SPIKE_LEN)
        hx = 0.7 * rc + SPIKE_LEN
    return Shape(parts, hx=hx, hy=hx, h=trunk + crown_h)


def _dome(z0: float, r: float, h: float, n: int = 12) -> Revolve:
    """Upper half of an ellipsoid (radius r, height h) standing on z0, as a solid of revolution."""
    t = np.linspace(0.0, 1.0, n)
    return Revolve(z0 + h * t, r * np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0)))


def _mushroom(c: _Ctx) -> Shape:
    stem = c.thin_len(0.35, 0.7, 0.12)
    rs = _stem_radius(c)
    cap_h = 0.35 * c.s * c.zf * c.jit(0.04)
    rc = 0.5 * c.s * c.jit(0.03)
    parts: list = [Revolve([0.0, stem + 0.02], [rs, rs]), _dome(stem, rc, cap_h)]
    hx = rc
    if "spiky" in c.mods:
        parts += _spikes(stem + 0.3 * cap_h, 0.6 * rc, rc + SPIKE_LEN)
        hx = rc + SPIKE_LEN
    return Shape(parts, hx=hx, hy=hx, h=stem + cap_h)


def _snowman(c: _Ctx) -> Shape:
    # balls overlap by 20% of their radii and keep a minimum size, so the snowman stays one
    # connected component even at the smallest layout scale
    r1 = max(0.3 * c.s, 0.16) * c.jit(0.03)
    r2 = max(0.22 * c.s, 0.13) * c.jit(0.03)
    r3 = max(0.15 * c.s, 0.1) * c.jit(0.03)
    zf = c.zf
    z1 = r1 * zf
    z2 = z1 + 0.75 * (r1 + r2) * zf
    z3 = z2 + 0.7 * (r2 + r3) * zf
    parts: list = [
        Ellipsoid((0, 0, z1), (r1, r1, r1 * zf)),
        Ellipsoid((0, 0, z2), (r2, r2, r2 * zf)),
        Ellipsoid((0, 0, z3), (r3, r3, r3 * zf)),
    ]
    hx = r1
    if "spiky" in c.mods:
        parts += _spikes(z2, 0.5 * r2, r2 + SPIKE_LEN)
        hx = max(r1, r2 + SPIKE_LEN)
    return Shape(parts, hx=hx, hy=hx, h=z3 + r3 * zf)


def _rocket(c: _Ctx) -> Shape:
    r = 0.23 * c.s * c.jit(0.03)
    h = 0.85 * c.s * c.zf * c.jit(0.04)
    nose = 0.35 * c.s * c.zf
    fin_r = (0.62 if "wide" in c.mods else 0.45) * c.s
    fin_h = 0.3 * c.s * c.zf
    parts: list = [Revolve([0.0, h, h + nose], [r, r, 0.03])]
    for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        lo = (min(0, sx * fin_r), min(0, sy * fin_r), 0.0)
        hi = (max(0, sx * fin_r), max(0, sy * fin_r), fin_h)
        # 1-voxel-thick vertical plates centred on a voxel column
        if sx == 0:
            lo, hi = (-0.45 * V + 0.5 * V, lo[1], 0.0), (0.45 * V + 0.5 * V, hi[1], fin_h)
        else:
            lo, hi = (lo[0], -0.45 * V + 0.5 * V, 0.0), (hi[0], 0.45 * V + 0.5 * V, fin_h)
        parts.append(Box(lo, hi))
    hx = fin_r + V
    if "spiky" in c.mods:
        parts += _spikes(0.6 * h, 0.5 * r, r + SPIKE_LEN)
        hx = max(hx, r + SPIKE_LEN)
    return Shape(parts, hx=hx, hy=hx, h=h + nose)


def _box(c: _Ctx) -> Shape:
    h = 0.75 * c.s * c.zf * c.jit(0.04)
    if "round" in c.mods:
        half = max(0.45 * c.s, 0.47)
        parts: list = [Revolve([0.0, h], [half, half])]
    else:
        half = 0.4 * c.s * c.jit(0.03)
        parts = [Box((-half, -half, 0.0), (half, half, h))]
    hx = half
    if "spiky" in c.mods:
        parts += _spikes(0.5 * h, 0.5 * half, half + SPIKE_LEN)
        hx = half + SPIKE_LEN
    return Shape(parts, hx=hx, hy=hx, h=h)


TEMPLATES: dict[str, Callable[[_Ctx], Shape]] = {
    "vase": _vase,
    "cup": _cup,
    "table": _table,
    "lamp": _lamp,
    "tower": _tower,
    "tree": _tree,
    "mushroom": _mushroom,
    "snowman": _snowman,
    "chair": _chair,
    "bottle": _bottle,
    "bowl": _bowl,
    "rocket": _rocket,
    "box": _box,
}


# ------------------------------------------------------------------------------------------------
# Objects in the world
# ------------------------------------------------------------------------------------------------
def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


@dataclass
class PlacedObject:
    """A shape with a rigid transform ``world = R @ local + t`` (t includes whole-voxel shifts)."""

    shape: Shape
    rotation: np.ndarray
    t: np.ndarray
    rgb: np.ndarray  # (3,)

    def inside_world(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N,) bool."""
        local = (pts - self.t) @ self.rotation  # R^T (p - t) for row vectors
        return self.shape.inside(local)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.shape
        corners = np.array([[x, y, z] for x in (-s.hx, s.hx) for y in (-s.hy, s.hy) for z in (0.0, s.h)])
        w = corners @ self.rotation.T + self.t
        return w.min(0), w.max(0)


def object_occupancy(o: PlacedObject, n: int, pitch: float, origin: float = -1.0) -> np.ndarray:
    """(n, n, n) occupancy of one object on the lattice ``origin + (i + 0.5) * pitch``.

    Only the voxels inside the object's nominal world box plus a margin of 0.25 (spike tips and
    cone radii may poke out of the nominal box by up to 0.15) are evaluated.
    """
    lo, hi = o.world_bounds()
    i0 = np.clip(np.floor((lo - 0.25 - origin) / pitch).astype(int), 0, n)
    i1 = np.clip(np.ceil((hi + 0.25 - origin) / pitch).astype(int), 0, n)
    occ = np.zeros((n, n, n), bool)
    if (i1 <= i0).any():
        return occ
    axes = [origin + (np.arange(a, b) + 0.5) * pitch for a, b in zip(i0, i1, strict=True)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    shape = pts.shape[:3]
    occ[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]] = o.inside_world(pts.reshape(-1, 3)).reshape(shape)
    return occ


def _jitter_fn(rng: np.random.Generator | None, worst_case: bool = False) -> Callable[[float], float]:
    if worst_case:
        return lambda a: 1.0 + a
    if rng is None:
        return lambda a: 1.0
    return lambda a: float(1.0 + rng.uniform(-a, a))


def object_scale(spec: SceneSpec, obj: ObjectSpec) -> float:
    """Effective scale of one object: layout scale x size factor."""
    return layout_scale(spec) * vocab.SIZES.get(obj.size or "", 1.0)


def layout_scale(spec: SceneSpec) -> float:
    """Scale that makes the scene's objects fit side by side / stacked (size words excluded)."""
    if spec.relation in ("on top of", "next to"):
        return LAYOUT_SCALE[(spec.relation, 2)]
    if spec.relation == "stacked":
        return LAYOUT_SCALE[("stacked", spec.count)]
    return LAYOUT_SCALE[("row", spec.count)] if spec.count > 1 else 1.0


def make_shape(
    obj: ObjectSpec, scale: float, rng: np.random.Generator | None = None, worst_case: bool = False
) -> Shape:
    """Local analytic shape of one object (inapplicable words are ignored with a debug log).

    ``worst_case=True`` stretches every jittered proportion to its maximum (used by fit checks).
    """
    bad = obj.inapplicable()
    if bad:
        logger.debug("builder: %s cannot show %s; ignored", obj.noun, bad)
    mods = frozenset(m for m in obj.modifiers if m not in bad)
    zf = TALL_Z if "tall" in mods else FLAT_Z if "flat" in mods else 1.0
    return TEMPLATES[obj.noun](_Ctx(scale, zf, mods, _jitter_fn(rng, worst_case)))


def _orient(obj: ObjectSpec, shape: Shape) -> np.ndarray:
    action = obj.action if obj.action not in obj.inapplicable() else None
    if action == "upside-down":
        return _rot_x(180.0)
    if action == "leaning":
        return _rot_y(LEAN_DEG)
    if action == "lying":
        return _rot_y(90.0)
    return np.eye(3)


def _place_default(shape: Shape, rot: np.ndarray) -> np.ndarray:
    """Translation that puts the rotated nominal box on the floor; identity keeps the axis at 0."""
    po = PlacedObject(shape, rot, np.zeros(3), np.zeros(3))
    lo, hi = po.world_bounds()
    t = np.array([0.0, 0.0, -1.0 - lo[2]])
    if not np.allclose(rot, np.eye(3)):
        # centre the rotated box horizontally (whole-voxel placement follows)
        t[:2] = -0.5 * (lo[:2] + hi[:2])
    return t


def _voxel_bbox(occ: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    idx = np.argwhere(occ)
    if len(idx) == 0:
        return None
    return idx.min(0), idx.max(0)


def _object_rgb(obj: ObjectSpec, rng: np.random.Generator | None) -> np.ndarray:
    name = obj.colour or vocab.DEFAULT_COLOUR[obj.noun]
    rgb = np.asarray(vocab.NAMED_COLOURS[name], np.float32)
    if rng is not None:
        rgb = rgb + rng.normal(0.0, 0.025, 3).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0)


def _layout(spec: SceneSpec, objs: list[PlacedObject], res: int, rng: np.random.Generator | None) -> int:
    """Move objects by whole voxels into their scene positions.

    Returns the smallest number of free voxels between an object and the grid's sides or top
    (negative when an object is clipped).
    """
    boxes = []
    for o in objs:
        bb = _voxel_bbox(object_occupancy(o, res, 2.0 / res))
        if bb is None:
            raise ValueError(f"builder: object {spec} rasterised to nothing")
        boxes.append(bb)

    def ri(lo: int, hi: int) -> int:
        return 0 if rng is None else int(rng.integers(lo, hi + 1))

    mid = res // 2
    shifts = []
    if spec.relation in ("on top of", "stacked"):
        # bottom first: "A on top of B" lists A first
        order = list(range(len(objs)))[::-1] if spec.relation == "on top of" else list(range(len(objs)))
        z_next = 0
        cx = mid + ri(-1, 1)
        cy = mid + ri(-1, 1)
        shifts = [None] * len(objs)
        for i in order:
            lo, hi = boxes[i]
            c = (lo + hi + 1) // 2
            shifts[i] = np.array([cx - c[0], cy - c[1], z_next - lo[2]])
            z_next = hi[2] + shifts[i][2] + 1 + STACK_GAP_VOXELS
    elif len(objs) > 1:
        gaps = [ri(*ROW_GAP_VOXELS) if rng is not None else ROW_GAP_VOXELS[0] for _ in objs[1:]]
        widths = [int(hi[0] - lo[0] + 1) for lo, hi in boxes]
        total = sum(widths) + sum(gaps)
        x = mid - total // 2 + (ri(-1, 1) if total < res - 2 else 0)
        for i, (lo, hi) in enumerate(boxes):
            cy = mid + ri(-1, 1)
            c = (lo + hi + 1) // 2
            shifts.append(np.array([x - lo[0], cy - c[1], -lo[2]]))
            x += widths[i] + (gaps[i] if i < len(gaps) else 0)
    else:
        lo, hi = boxes[0]
        c = (lo + hi + 1) // 2
        lift = FLOAT_LIFT_VOXELS if spec.objects[0].action == "floating" else 0
        shifts.append(np.array([mid + ri(-1, 1) - c[0], mid + ri(-1, 1) - c[1], lift - lo[2]]))
    margin = res
    for o, (lo, hi), sh in zip(objs, boxes, shifts, strict=True):
        o.t = o.t + sh * V
        lo_w, hi_w = lo + sh, hi + sh
        # objects stand on the floor by design, so the floor side counts only when clipped
        margin = min(
            margin, int(lo_w[:2].min()), int((res - 1 - hi_w).min()), int(lo_w[2]) if lo_w[2] < 0 else res
        )
    return margin


def place(
    spec: SceneSpec, rng: np.random.Generator | None = None, worst_case: bool = False
) -> tuple[list[PlacedObject], int]:
    """Placed objects of a scene (one per instance) and the free margin in voxels (< 0: clipped).

    ``worst_case=True`` builds every proportion at its largest jitter (for fit checks).
    """
    objs = []
    for obj in spec.instances():
        shape = make_shape(obj, object_scale(spec, obj), rng, worst_case)
        rot = _orient(obj, shape)
        objs.append(PlacedObject(shape, rot, _place_default(shape, rot), _object_rgb(obj, rng)))
    margin = _layout(spec, objs, DEFAULT_RESOLUTION, rng)
    return objs, margin


def rasterize(
    objs: Sequence[PlacedObject], resolution: int, rng: np.random.Generator | None = None
) -> VoxelGrid:
    """Voxel grid of placed objects at ``resolution``: occupancy (R,R,R), colours (R,R,R,3)."""
    r = resolution
    occ = np.zeros((r, r, r), bool)
    col = np.zeros((r, r, r, 3), np.float32)
    for o in objs:
        m = object_occupancy(o, r, 2.0 / r)
        occ |= m
        col[m] = o.rgb
    if rng is not None:
        col = np.clip(col + rng.normal(0.0, 0.015, col.shape).astype(np.float32), 0, 1) * occ[..., None]
    return VoxelGrid(occ, col)


def build_voxels(
    spec: SceneSpec, resolution: int = DEFAULT_RESOLUTION, rng: np.random.Generator | int | None = None
) -> VoxelGrid:
    """Voxel grid only (what the corpus stores). ``rng=None`` builds the canonical, jitter-free shape."""
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    objs, margin = place(spec, rng)
    ok = margin >= 0
    if not ok:
        logger.warning("builder: scene does not fit in the grid and is clipped: %s", spec)
    return rasterize(objs, resolution, rng)


def build(
    spec: SceneSpec,
    resolution: int = DEFAULT_RESOLUTION,
    rng: np.random.Generator | int | None = None,
    mesh_resolution: int | None = DEFAULT_MESH_RESOLUTION,
    prompt: str | None = None,
) -> Asset:
    """Build one scene.

    Args:
        spec: the scene to build.
        resolution: voxel grid resolution R (default 16).
        rng: generator or seed for the jitter; ``None`` builds the canonical shape.
        mesh_resolution: resolution at which the analytic solids are meshed (marching cubes); ``None``
            meshes the R^3 grid itself.
        prompt: text stored on the asset (defaults to the canonical prompt of ``spec``).

    Returns:
        :class:`Asset` with a vertex-coloured ``trimesh.Trimesh`` (z up, inside [-1, 1]^3),
        ``voxels`` (R^3 occupancy + RGB) and ``metadata`` (spec JSON, clipped flag).
    """
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    objs, margin = place(spec, rng)
    ok = margin >= 0
    if not ok:
        logger.warning("builder: scene does not fit in the grid and is clipped: %s", spec)
    grid = rasterize(objs, resolution, rng)
    fine = rasterize(objs, mesh_resolution) if mesh_resolution else grid
    mesh = voxels_to_mesh(fine)
    if prompt is None:
        prompt = canonical_prompt(spec)
    return Asset(
        prompt, mesh, grid, metadata={"backend": "shapeworld", "spec": spec.to_json(), "clipped": not ok}
    )


def scene_problems(spec: SceneSpec, check_fit: bool = True) -> list[str]:
    """Why a scene cannot be shown faithfully at 16^3 (empty list when it can).

    Checks word/noun applicability, part words on objects too small to show them, combinations the
    measurer cannot read (part words with actions) and whether the jitter-free scene fits in the grid.
    """
    problems = []
    for obj in spec.objects:
        problems += [f"{obj.noun} cannot be {w}" for w in obj.inapplicable()]
        if object_scale(spec, obj) < MIN_DETAIL_SCALE:
            problems += [f"{w} needs a larger {obj.noun}" for w in obj.modifiers if w in DETAIL_WORDS]
        if obj.action is not None and obj.action != "floating":
            allowed = ROTATED_ALLOWED[obj.action]
            problems += [f"{w} with {obj.action}" for w in obj.modifiers if w not in allowed]
        if object_scale(spec, obj) < MIN_SCALE:
            problems.append(f"a {obj.noun} at scale {object_scale(spec, obj):.2f} is too small to read")
        shape_words = [w for w in obj.modifiers] + (
            [obj.action] if obj.action not in (None, "floating") else []
        )
        if object_scale(spec, obj) < NOUN_MIN_SHAPE_SCALE.get(obj.noun, 0.0):
            problems += [f"{w} needs a larger {obj.noun}" for w in shape_words]
        if object_scale(spec, obj) < MIN_PART_SCALE:
            problems += [f"{w} needs a larger {obj.noun}" for w in obj.modifiers if w in ("long", "short")]
        if "flat" in obj.modifiers and object_scale(spec, obj) < MIN_DETAIL_SCALE:
            problems += [f"{w} on a small flat {obj.noun}" for w in obj.modifiers if w in ("long", "short")]
        if "short" in obj.modifiers:
            problems += [
                f"a short part is too short to look {w}" for w in obj.modifiers if w in ("narrow", "thick")
            ]
        if obj.action is not None and (spec.count > 1 or len(spec.objects) > 1):
            problems.append("actions need a single object")
    if spec.relation == "stacked" and spec.objects[0].noun not in vocab.STACKABLE_NOUNS:
        problems.append(f"{spec.objects[0].noun} does not stack")
    if spec.relation == "on top of" and spec.objects[1].noun not in vocab.SUPPORT_NOUNS:
        problems.append(f"nothing stands on a {spec.objects[1].noun}")
    if spec.relation == "on top of" and spec.objects[0].noun not in vocab.CARRIED_NOUNS:
        problems.append(f"a {spec.objects[0].noun} does not stand on things")
    if problems or not check_fit:
        return problems
    _objs, margin = place(spec, None, worst_case=True)
    if margin < FIT_MARGIN_VOXELS:
        problems.append("does not fit in [-1, 1]^3 with room for the jitter")
    return problems


@register("external_generator", "shapeworld")
class ShapeWorldExternalGenerator:
    """External generator backend that parses prompts and builds them procedurally.

    Args:
        resolution: voxel resolution of the returned assets (default 16).
        mesh_resolution: meshing resolution (default 48; ``None`` meshes the voxel grid).

    >>> gen = ShapeWorldExternalGenerator()
    >>> [a.voxels.resolution for a in gen.generate(["a red cup"], [0])]
    [16]
    """

    name = "shapeworld"

    def __init__(
        self, resolution: int = DEFAULT_RESOLUTION, mesh_resolution: int | None = DEFAULT_MESH_RESOLUTION
    ):
        self.resolution = int(resolution)
        self.mesh_resolution = mesh_resolution

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Asset]:
        """One asset per (prompt, seed) pair; raises ``ValueError`` on an unreadable prompt."""
        from debias3d.data.shapeworld.parser import parse

        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            spec = parse(prompt)
            asset = build(
                spec, self.resolution, np.random.default_rng(seed), self.mesh_resolution, prompt=prompt
            )
            asset.seed = int(seed)
            out.append(asset)
        return out
