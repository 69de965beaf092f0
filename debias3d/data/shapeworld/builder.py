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
from dataclasses import dataclass

import numpy as np

from debias3d.data.assets import DEFAULT_RESOLUTION, Asset, VoxelGrid
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.phrasing import canonical_prompt
from debias3d.data.shapeworld.solids import (
    DEFAULT_MESH_RESOLUTION,
    DETAIL_WORDS,
    FIT_MARGIN_VOXELS,
    FLAT_Z,
    FLOAT_LIFT_VOXELS,
    LAYOUT_SCALE,
    LEAN_DEG,
    MIN_DETAIL_SCALE,
    MIN_PART_SCALE,
    MIN_SCALE,
    NOUN_MIN_SHAPE_SCALE,
    ROTATED_ALLOWED,
    ROW_GAP_VOXELS,
    STACK_GAP_VOXELS,
    TALL_Z,
    Shape,
    V,
)
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec
from debias3d.data.shapeworld.templates import (
    TEMPLATES,
    _Ctx,
)
from debias3d.data.shapeworld.voxelize import voxels_to_mesh
from debias3d.registry import register

logger = logging.getLogger(__name__)


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
