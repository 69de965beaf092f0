"""The noun templates: (scale, z factor, modifiers, jitter) -> :class:`~debias3d.data.shapeworld.solids.Shape`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from debias3d.data.shapeworld.solids import SPIKE_LEN, Box, Cone, Ellipsoid, Revolve, Shape, V


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
