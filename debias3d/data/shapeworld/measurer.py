"""ShapeWorld measurer: reads attributes back from any voxel grid or mesh (the ground truth).

:func:`measure` is reference-free: it splits the grid into objects (connected components), and for
each one reports its colour, size, proportions, thin-part (neck / legs / stem) length and width,
base width, roundness, spikes, lean, floor gap and vertical profile, plus the scene's relations.

:func:`score_prompt` decides, word by word, whether a shape *shows* a prompt. Most words are judged
relative to a **reference**: the jitter-free ShapeWorld build of the same prompt without that word.
"a tall vase with a long neck" shows ``long`` when its neck is clearly longer than the neck of
"a tall vase". This makes one threshold per word work for every noun, size and layout, and it is
what a text-to-3D model should learn: the word's effect, all else equal. Thresholds sit between the
built effect size (e.g. tall = x1.45 height) and 1, with a margin for the seeded jitter and for
voxel quantisation; each has a comment.

>>> from debias3d.data.shapeworld.parser import parse
>>> from debias3d.data.shapeworld.builder import build_voxels
>>> spec = parse("a red vase with a long neck")
>>> score_prompt(spec, build_voxels(spec, rng=0))
{'red': True, 'long': True}
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from debias3d.data.assets import Asset, VoxelGrid
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Thresholds (why each value: see the comment next to it)
# ------------------------------------------------------------------------------------------------
#: Generated grids leave specks; an object has at least this many voxels ...
MIN_COMPONENT_VOXELS = 3
#: ... and at least this share of the largest object (a small cup next to a large vase is ~5%).
MIN_COMPONENT_FRACTION = 0.03
#: A slice belongs to a thin part when its area is at most this share of the widest slice
#: (built necks/stems are <= 0.5 of the body, lamp bases and bodies >= 0.55).
THIN_FRACTION = 0.52
#: The bottom thin part (legs, stem, trunk) may start above a base of at most this many slices.
BASE_SLICES = 2
#: An object is matched to a spec object only if its voxel count is within this factor of the
#: jitter-free build (built size words change volume by 0.2x-2.7x; garbage and noise do not fit).
PRESENCE_RANGE = (0.25, 4.0)
#: small / large scale the object by 0.6 / 1.4; the cube root of the volume ratio is compared.
SMALL_MAX, LARGE_MIN = 0.82, 1.18
#: tall / flat scale z by 1.6 / 0.5; measured height relative to the reference's analytic height
#: (rounding moves a measured height by up to half a slice either way).
TALL_RATIO, FLAT_RATIO = 1.3, 0.72
#: long / short scale the thin part by ~2 / ~0.3 (in slices, relative to the reference).
LONG_RATIO, LONG_MIN_GAIN = 1.4, 1.0
SHORT_RATIO, SHORT_MIN_LOSS = 0.65, 1.0
#: narrow necks have 4 voxels per slice (default 12); thick legs/stems 4-12 (default 1-4).
NARROW_RATIO, THICK_RATIO = 0.6, 1.8
#: a wide base is ~1.6-2x the reference base extent.
WIDE_RATIO = 1.25
#: a square slice fills its bounding box (1.0), a circle ~0.8 of it.
ROUND_DROP = 0.08
#: spiky objects gain 8 spike tips; noise and body corners add at most a couple.
SPIKE_GAIN = 3
#: floating objects are lifted 3 voxels; the floor gap must be at least 2 empty slices.
FLOAT_MIN_GAP = 2
#: leaning tilts by 35 deg, moving the top quarter's centroid >= 0.2 height sideways from the bottom's
#: (wide tops such as lamp shades move least); upright objects measure < 0.05.
LEAN_GAIN = 0.1
#: lying swaps height and width of a tall object: aspect drops far below the upright one, or the
#: upright vertical profile shows up along x or y (correlation at least LYING_MIN_CORR).
LYING_RATIO, LYING_MIN_CORR = 0.6, 0.7
#: upside-down: the vertical profile must match the flipped reference better by this margin.
FLIP_MARGIN = 0.1
#: relations: stacked objects leave 1 empty slice; allow up to this many.
STACK_MAX_GAP = 3
#: a colour is shown if the object's median colour is nearest to it among all named colours.
PROFILE_BINS = 12

_CROSS2 = ndimage.generate_binary_structure(2, 1)
_FULL2 = np.ones((3, 3), bool)
_FULL3 = np.ones((3, 3, 3), bool)


@dataclass
class ComponentMeasurement:
    """Measured attributes of one object (a connected component), in voxel units.

    ``bbox_min``/``bbox_max`` are inclusive ``[x, y, z]`` indices; ``profile`` is the slice-area
    profile (PROFILE_BINS,) from bottom to top, normalised to max 1; ``profile_x``/``profile_y`` are
    the same along x and y (a lying object shows its upright profile there). ``nominal_height`` is
    set on references only: the analytic height in voxels, free of quantisation.
    """

    voxels: int
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    centroid: np.ndarray
    height: int
    width: int
    aspect: float
    colour: str
    rgb: np.ndarray
    neck_length: int
    neck_area: float
    leg_length: int
    leg_area: float
    base_width: int
    roundness: float
    spikes: int
    lean: float
    floor_gap: int
    profile: np.ndarray
    profile_x: np.ndarray
    profile_y: np.ndarray
    nominal_height: float | None = None

    def thin_length(self, noun: str) -> int:
        return self.neck_length if vocab.THIN_PART_SIDE.get(noun) == "top" else self.leg_length

    def thin_area(self, noun: str) -> float:
        return self.neck_area if vocab.THIN_PART_SIDE.get(noun) == "top" else self.leg_area


@dataclass
class Measurement:
    """Everything :func:`measure` reads from a shape.

    Attributes:
        components: objects, largest first.
        count: number of objects (components that are not specks).
        dominant_colour: named colour of the median occupied voxel colour (None when empty).
        relations: ``(i, j, kind)`` with kind ``"on top of"`` (i rests on j) or ``"next to"``.
        occupied: total occupied voxels.
    """

    components: list[ComponentMeasurement]
    count: int
    dominant_colour: str | None
    relations: list[tuple[int, int, str]] = field(default_factory=list)
    occupied: int = 0


# ------------------------------------------------------------------------------------------------
# measure
# ------------------------------------------------------------------------------------------------
def _as_grid(shape: VoxelGrid | Asset | Any, resolution: int = 16) -> VoxelGrid:
    if isinstance(shape, VoxelGrid):
        return shape
    if isinstance(shape, Asset):
        if shape.voxels is not None:
            return shape.voxels
        shape = shape.mesh
    from debias3d.data.shapeworld.voxelize import mesh_to_voxels

    return mesh_to_voxels(shape, resolution)


def nearest_colour(rgb: np.ndarray) -> str:
    """Name of the nearest colour among vocabulary and extra named colours."""
    names = list(vocab.NAMED_COLOURS)
    table = np.array([vocab.NAMED_COLOURS[n] for n in names])
    return names[int(np.argmin(((table - np.asarray(rgb)[None]) ** 2).sum(1)))]


def _slice_components(sl: np.ndarray) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(sl, structure=_FULL2)
    return lab, n


def _thin_runs(areas: np.ndarray, occ: np.ndarray) -> tuple[int, float, int, float]:
    """(neck_length, neck_area, leg_length, leg_area) from slice areas (H,) and the (X, Y, H) crop."""
    h = len(areas)
    # legs and stems are thin against the widest slice; necks against the widest slice above the
    # base, so that a wide foot does not make a bottle's body look like a neck
    thin = areas <= THIN_FRACTION * areas.max()
    above_base = areas[BASE_SLICES:].max() if h > BASE_SLICES + 1 else areas.max()
    thin_top = areas <= THIN_FRACTION * above_base

    def area_per_part(ks: list[int]) -> float:
        if not ks:
            return 0.0
        vals = []
        for k in ks:
            _lab, n = _slice_components(occ[:, :, k])
            vals.append(areas[k] / max(n, 1))
        return float(np.median(vals))

    top = []
    k = h - 1
    while k >= 0 and thin_top[k]:
        top.append(k)
        k -= 1
    bottom = []
    k = 0
    while k < min(BASE_SLICES, h) and not thin[k]:
        k += 1
    while k < h and thin[k]:
        bottom.append(k)
        k += 1
    if len(bottom) == h:  # all thin: no body, no parts
        bottom, top = [], []
    return len(top), area_per_part(top), len(bottom), area_per_part(bottom)


def _spike_count(occ: np.ndarray) -> int:
    """Number of spike tips: per slice, voxels at the end of a thin line sticking out of the body.

    A tip has exactly one in-slice neighbour (8-connectivity), and that neighbour has at most three
    (a line, not a blob surface), so corners of boxes, specks on a rough surface and isolated legs
    do not count. Holes are filled first so that hollow bodies (bowls) behave like solid ones.
    """
    n_tips = 0
    for k in range(occ.shape[2]):
        sl = ndimage.binary_fill_holes(occ[:, :, k])
        if sl.sum() < 3:
            continue
        nb = ndimage.convolve(sl.astype(np.int16), _FULL2.astype(np.int16), mode="constant") - sl
        tips = sl & (nb == 1)
        if not tips.any():
            continue
        linelike = sl & (nb <= 3)
        n_tips += int((tips & ndimage.binary_dilation(linelike & ~tips, structure=_FULL2)).sum())
    return n_tips


def _roundness(occ: np.ndarray, areas: np.ndarray) -> float:
    """Median fill of the bounding box of the body's slices: 1.0 square, ~0.8 disc.

    Only slices with at least half the largest area count (legs and roofs are not the body).
    """
    fills = []
    for k in np.flatnonzero((areas >= 12) & (areas >= 0.5 * areas.max())):
        lab, n = _slice_components(occ[:, :, k])
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        piece = lab == (int(np.argmax(sizes)) + 1)
        idx = np.argwhere(piece)
        ext = idx.max(0) - idx.min(0) + 1
        fills.append(piece.sum() / float(ext[0] * ext[1]))
    return float(np.median(fills)) if fills else 1.0


def _profile(areas: np.ndarray) -> np.ndarray:
    if len(areas) == 1:
        return np.ones(PROFILE_BINS)
    x = np.linspace(0, len(areas) - 1, PROFILE_BINS)
    p = np.interp(x, np.arange(len(areas)), areas.astype(float))
    return p / max(p.max(), 1e-9)


def measure_component(mask: np.ndarray, colors: np.ndarray) -> ComponentMeasurement:
    """Measure one object given its (R, R, R) mask and the grid colours (R, R, R, 3)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    crop = mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    areas = crop.sum((0, 1))
    height = int(hi[2] - lo[2] + 1)
    width = int(max(hi[0] - lo[0] + 1, hi[1] - lo[1] + 1))
    rgb = np.median(colors[mask], axis=0)
    neck_l, neck_a, leg_l, leg_a = _thin_runs(areas, crop)
    base = 0
    for k in range(min(2, crop.shape[2])):
        lab, n = _slice_components(crop[:, :, k])
        if n:
            sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
            p = np.argwhere(lab == int(np.argmax(sizes)) + 1)
            base = max(base, int((p.max(0) - p.min(0) + 1).max()))
    # lean: horizontal shift between the centroids of the top and bottom quarter of the height
    if height >= 3:
        q = max(1, height // 4)
        z = idx[:, 2] - lo[2]
        bottom_c = idx[z < q, :2].mean(0)
        top_c = idx[z >= height - q, :2].mean(0)
        lean = float(np.linalg.norm(top_c - bottom_c) / height)
    else:
        lean = 0.0
    return ComponentMeasurement(
        voxels=int(mask.sum()),
        bbox_min=lo,
        bbox_max=hi,
        centroid=idx.mean(0),
        height=height,
        width=width,
        aspect=height / max(width, 1),
        colour=nearest_colour(rgb),
        rgb=rgb,
        neck_length=neck_l,
        neck_area=neck_a,
        leg_length=leg_l,
        leg_area=leg_a,
        base_width=base,
        roundness=_roundness(crop, areas),
        spikes=_spike_count(crop),
        lean=lean,
        floor_gap=int(lo[2]),
        profile=_profile(areas),
        profile_x=_profile(crop.sum((1, 2))),
        profile_y=_profile(crop.sum((0, 2))),
    )


def _on_top(a: ComponentMeasurement, b: ComponentMeasurement) -> bool:
    """a rests on (or just above) b: a starts above b's top and their footprints overlap."""
    gap = int(a.bbox_min[2]) - int(b.bbox_max[2]) - 1
    if gap < 0 or gap > STACK_MAX_GAP:
        return False
    cx, cy = a.centroid[:2]
    return bool(b.bbox_min[0] - 1 <= cx <= b.bbox_max[0] + 1 and b.bbox_min[1] - 1 <= cy <= b.bbox_max[1] + 1)


def _next_to(a: ComponentMeasurement, b: ComponentMeasurement) -> bool:
    """Side by side: both near the floor (within 2 slices of each other) and footprints apart."""
    if abs(int(a.bbox_min[2]) - int(b.bbox_min[2])) > 2:
        return False
    apart_x = a.bbox_min[0] > b.bbox_max[0] or b.bbox_min[0] > a.bbox_max[0]
    apart_y = a.bbox_min[1] > b.bbox_max[1] or b.bbox_min[1] > a.bbox_max[1]
    return bool(apart_x or apart_y)


def measure(shape: VoxelGrid | Asset | Any, resolution: int = 16) -> Measurement:
    """Measure a voxel grid, an :class:`Asset` or a mesh (voxelised at ``resolution``).

    Returns:
        :class:`Measurement` (components largest first). An empty grid gives no components.
    """
    grid = _as_grid(shape, resolution)
    occ = np.asarray(grid.occupancy, bool)
    if not occ.any():
        return Measurement([], 0, None, [], 0)
    lab, n = ndimage.label(occ, structure=_FULL3)
    sizes = ndimage.sum_labels(occ, lab, index=np.arange(1, n + 1)).astype(int)
    order = np.argsort(-sizes, kind="stable")
    keep_min = max(MIN_COMPONENT_VOXELS, MIN_COMPONENT_FRACTION * sizes.max())
    comps = [measure_component(lab == (i + 1), grid.colors) for i in order if sizes[i] >= keep_min]
    rels = []
    for i, j in itertools.permutations(range(len(comps)), 2):
        if _on_top(comps[i], comps[j]):
            rels.append((i, j, "on top of"))
        elif i < j and _next_to(comps[i], comps[j]):
            rels.append((i, j, "next to"))
    dom = nearest_colour(np.median(grid.colors[occ], axis=0))
    return Measurement(comps, len(comps), dom, rels, int(occ.sum()))


# ------------------------------------------------------------------------------------------------
# References: jitter-free builds of the same prompt without one word
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=8192)
def reference_components(spec: SceneSpec) -> tuple[ComponentMeasurement, ...]:
    """Per-instance measurements of the jitter-free build of ``spec`` (instance order)."""
    from debias3d.data.shapeworld.builder import object_occupancy, place

    objs, _margin = place(spec, None)
    # a reference may be larger than the grid (the prompt's word made it fit); measure it on the
    # same voxel lattice extended to [-2, 2]^3 so that it is never clipped
    out = []
    for o in objs:
        occ = object_occupancy(o, 32, 2.0 / 16, origin=-2.0)
        if not occ.any():
            raise ValueError(f"reference build of {spec} is empty")
        col = np.broadcast_to(o.rgb, occ.shape + (3,))
        cm = measure_component(occ, col)
        if abs(abs(o.rotation[2, 2]) - 1.0) < 1e-9:  # upright or flipped: analytic height is exact
            cm.nominal_height = o.shape.h / (2.0 / 16)
        out.append(cm)
    return tuple(out)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 1e-9 else 0.0


def _ref_height(ref: ComponentMeasurement) -> float:
    return float(ref.nominal_height if ref.nominal_height is not None else ref.height)


def _size_ratio(m: ComponentMeasurement, ref: ComponentMeasurement) -> float:
    """Linear size relative to the reference: mean of the volume and height estimates.

    Volume alone under-reads objects made of fixed-thickness slabs (a table top stays one voxel
    thick); the height is compared with the reference's analytic height to avoid rounding twice.
    """
    vol = (m.voxels / max(ref.voxels, 1)) ** (1 / 3)
    return 0.5 * (vol + m.height / _ref_height(ref))


def _shows(word: str, obj: ObjectSpec, m: ComponentMeasurement, ref: ComponentMeasurement) -> bool:
    """Does component ``m`` show ``word`` of ``obj``, given ``ref`` = reference without ``word``?"""
    kind = vocab.WORD_KIND[word]
    noun = obj.noun
    if kind == "colour":
        return m.colour == word
    if kind == "size":
        ratio = _size_ratio(m, ref)
        return ratio < SMALL_MAX if word == "small" else ratio > LARGE_MIN
    if word == "tall":
        return m.height >= TALL_RATIO * _ref_height(ref)
    if word == "flat":
        return m.height <= FLAT_RATIO * _ref_height(ref)
    if word == "long":
        ml, rl = m.thin_length(noun), ref.thin_length(noun)
        return ml >= LONG_RATIO * rl and ml >= rl + LONG_MIN_GAIN
    if word == "short":
        ml, rl = m.thin_length(noun), ref.thin_length(noun)
        return ml <= SHORT_RATIO * rl and ml <= rl - SHORT_MIN_LOSS
    if word == "narrow":
        return m.thin_length(noun) >= 1 and m.thin_area(noun) <= NARROW_RATIO * ref.thin_area(noun)
    if word == "thick":
        return m.thin_length(noun) >= 1 and m.thin_area(noun) >= THICK_RATIO * max(ref.thin_area(noun), 1.0)
    if word == "wide":
        return m.base_width >= WIDE_RATIO * ref.base_width
    if word == "round":
        return m.roundness <= ref.roundness - ROUND_DROP
    if word == "spiky":
        return m.spikes >= ref.spikes + SPIKE_GAIN
    if word == "floating":
        return m.floor_gap >= FLOAT_MIN_GAP
    if word == "upside-down":
        return _corr(m.profile, ref.profile[::-1]) > _corr(m.profile, ref.profile) + FLIP_MARGIN
    if word == "leaning":
        return m.lean >= ref.lean + LEAN_GAIN
    if word == "lying":
        upright = ref.profile
        sideways = max(_corr(p, r) for p in (m.profile_x, m.profile_y) for r in (upright, upright[::-1]))
        return m.aspect <= LYING_RATIO * ref.aspect or (
            sideways >= LYING_MIN_CORR and sideways > _corr(m.profile, upright) + FLIP_MARGIN
        )
    raise ValueError(f"not an object word: {word!r}")


@dataclass
class WordScore:
    """One attribute word of a prompt and whether the shape shows it."""

    word: str
    kind: str
    object_index: int | None
    shown: bool


def _object_words(spec: SceneSpec) -> list[tuple[int, str]]:
    out = []
    for i, o in enumerate(spec.objects):
        bad = set(o.inapplicable())
        for w in o.words():
            if w in bad:
                logger.debug("score: %r cannot be shown on a %s; not scored", w, o.noun)
                continue
            out.append((i, w))
    return out


def _instance_object(spec: SceneSpec) -> list[int]:
    """Object index of each instance (a group repeats object 0)."""
    return [0] * spec.count if len(spec.objects) == 1 else list(range(len(spec.objects)))


def word_scores(prompt_or_spec: str | SceneSpec, shape: VoxelGrid | Asset | Any) -> list[WordScore]:
    """Per-word verdicts for a prompt on a shape (see :func:`score_prompt`)."""
    from debias3d.data.shapeworld.parser import parse

    spec = parse(prompt_or_spec) if isinstance(prompt_or_spec, str) else prompt_or_spec
    m = measure(shape)
    inst_obj = _instance_object(spec)
    n_inst = len(inst_obj)
    full_ref = reference_components(spec)
    words = _object_words(spec)
    refs = {(i, w): reference_components(spec.without(w, i)) for i, w in words}
    comps = m.components[:n_inst]

    def verdicts(assign: tuple[int, ...]) -> dict[tuple[int, str], list[bool]]:
        """assign[k] = component index for instance k (or -1 when missing)."""
        out: dict[tuple[int, str], list[bool]] = {(i, w): [] for i, w in words}
        for k, ci in enumerate(assign):
            i = inst_obj[k]
            present = False
            if ci >= 0:
                ratio = comps[ci].voxels / max(full_ref[k].voxels, 1)
                present = PRESENCE_RANGE[0] <= ratio <= PRESENCE_RANGE[1]
            for oi, w in words:
                if oi != i:
                    continue
                ok = present and _shows(w, spec.objects[i], comps[ci], refs[(oi, w)][k])
                out[(oi, w)].append(ok)
        return out

    slots = list(range(len(comps))) + [-1] * max(0, n_inst - len(comps))
    best, best_score, best_assign = None, -1.0, None
    for assign in set(itertools.permutations(slots, n_inst)):
        v = verdicts(assign)
        sc = sum(np.mean(x) for x in v.values() if x)
        if spec.relation == "on top of" and len(comps) >= 2 and assign[0] >= 0 and assign[1] >= 0:
            sc += 0.5 * _on_top(comps[assign[0]], comps[assign[1]])
        if sc > best_score:
            best, best_score, best_assign = v, sc, assign
    assert best is not None and best_assign is not None

    scores: list[WordScore] = []
    if spec.count > 1:
        scores.append(WordScore(vocab.COUNT_WORDS[spec.count], "count", None, m.count == spec.count))
    for (i, w), vals in best.items():
        # a group shows a word when at least half of its members do
        shown = bool(vals) and float(np.mean(vals)) >= 0.5
        scores.append(WordScore(w, vocab.WORD_KIND[w], i, shown))
    if spec.relation is not None:
        scores.append(WordScore(spec.relation, "relation", None, _relation_shown(spec, m, best_assign)))
    return scores


def _relation_shown(spec: SceneSpec, m: Measurement, assign: tuple[int, ...]) -> bool:
    comps = m.components
    if m.count != spec.n_instances or any(a < 0 for a in assign):
        return False
    if spec.relation == "on top of":
        return _on_top(comps[assign[0]], comps[assign[1]])
    if spec.relation == "next to":
        a, b = comps[assign[0]], comps[assign[1]]
        return _next_to(a, b) and not _on_top(a, b) and not _on_top(b, a)
    if spec.relation == "stacked":
        chain = sorted(comps[: spec.count], key=lambda c: int(c.bbox_min[2]))
        return all(_on_top(chain[k + 1], chain[k]) for k in range(len(chain) - 1))
    return False


def score_prompt(prompt_or_spec: str | SceneSpec, shape: VoxelGrid | Asset | Any) -> dict[str, bool]:
    """Which attribute words of a prompt the shape shows.

    Args:
        prompt_or_spec: prompt text (parsed) or a :class:`SceneSpec`.
        shape: :class:`VoxelGrid`, :class:`Asset` or mesh (voxelised at 16^3).

    Returns:
        ``{word: shown}`` for every colour, size, modifier, action, count word and relation phrase
        of the prompt (a word used twice is shown only if both uses are). Filler words and nouns
        are not keys; words a noun cannot show are skipped.
    """
    out: dict[str, bool] = {}
    for s in word_scores(prompt_or_spec, shape):
        out[s.word] = out.get(s.word, True) and s.shown
    return out


def fidelity(prompt_or_spec: str | SceneSpec, shape: VoxelGrid | Asset | Any) -> float:
    """Share of the prompt's attribute words the shape shows, in [0, 1].

    A prompt without attribute words ("a vase") scores 1 when a matching object is present
    (voxel count within :data:`PRESENCE_RANGE` of the reference), else 0.
    """
    scores = word_scores(prompt_or_spec, shape)
    if scores:
        return float(np.mean([s.shown for s in scores]))
    from debias3d.data.shapeworld.parser import parse

    spec = parse(prompt_or_spec) if isinstance(prompt_or_spec, str) else prompt_or_spec
    m = measure(shape)
    if not m.components:
        return 0.0
    ratio = m.components[0].voxels / max(reference_components(spec)[0].voxels, 1)
    return float(PRESENCE_RANGE[0] <= ratio <= PRESENCE_RANGE[1])


# ------------------------------------------------------------------------------------------------
# Self-check: how well the measurer reads freshly built shapes
# ------------------------------------------------------------------------------------------------
@dataclass
class MeasurerReport:
    """Recall per word on built shapes and false-positive rate per claimed-but-absent word.

    ``recall[w] = (shown, total)`` over prompts containing ``w``; ``false_positive[w] = (shown,
    total)`` over shapes built *without* ``w`` and scored against the same prompt plus ``w``.
    """

    recall: dict[str, tuple[int, int]]
    false_positive: dict[str, tuple[int, int]]

    @property
    def total_recall(self) -> float:
        hit = sum(h for h, _n in self.recall.values())
        return hit / max(1, sum(n for _h, n in self.recall.values()))

    def fpr(self, word: str) -> float:
        h, n = self.false_positive.get(word, (0, 0))
        return h / n if n else 0.0


def self_check(n_shapes: int = 300, seed: int = 0, fpr_shapes: int | None = None) -> MeasurerReport:
    """Build ``n_shapes`` prompts over all categories with jitter and read them back.

    For the first ``fpr_shapes`` single-object shapes (default all), each applicable modifier,
    action and size word that the prompt lacks is added to the prompt and scored on the unchanged
    shape: that is a false positive when the measurer reports it.
    """
    from dataclasses import replace

    from debias3d.data.shapeworld.builder import build_voxels, scene_problems
    from debias3d.data.shapeworld.grammar import sample_prompts

    prompts = sample_prompts(n_shapes, rng=seed)
    rec: dict[str, list[int]] = {}
    fp: dict[str, list[int]] = {}
    n_fp = n_shapes if fpr_shapes is None else fpr_shapes
    for k, p in enumerate(prompts):
        grid = build_voxels(p.spec, rng=np.random.default_rng([seed, k]))
        for s in word_scores(p.spec, grid):
            r = rec.setdefault(s.word, [0, 0])
            r[0] += int(s.shown)
            r[1] += 1
        if k >= n_fp or len(p.spec.objects) != 1:
            continue
        obj = p.spec.objects[0]
        for w in (*vocab.MODIFIERS, *vocab.ACTIONS, *vocab.SIZES):
            if w in obj.words():
                continue
            try:
                if w in vocab.MODIFIERS:
                    o2 = replace(obj, modifiers=(*obj.modifiers, w))
                elif w in vocab.ACTIONS:
                    if obj.action is not None:
                        continue
                    o2 = replace(obj, action=w)
                else:
                    if obj.size is not None:
                        continue
                    o2 = replace(obj, size=w)
            except ValueError:  # excluded pair such as tall + flat
                continue
            claimed = replace(p.spec, objects=(o2,))
            if scene_problems(claimed, check_fit=False):
                continue
            f = fp.setdefault(w, [0, 0])
            f[0] += int(score_prompt(claimed, grid)[w])
            f[1] += 1
    return MeasurerReport({w: (a, b) for w, (a, b) in rec.items()}, {w: (a, b) for w, (a, b) in fp.items()})
