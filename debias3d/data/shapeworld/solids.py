"""ShapeWorld's dimensions and the analytic solids that objects are made of.

A solid's ``inside(p)`` takes (N, 3) local points and returns (N,) bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from debias3d.data.assets import DEFAULT_RESOLUTION

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
