"""Training samples for the evaluator: ShapeWorld shapes, controlled corruptions, measured ratings.

Every sample is a 16^3 voxel grid meshed with :func:`voxels_to_mesh` (clean and corrupted samples go
through the *same* meshing, so the model cannot tell them apart by mesh smoothness) and rendered once
with the MATE-3D rig.

Corruptions (0–2 per sample, the first variant of each prompt is clean):

* spec level (rebuilt): ``drop_word`` (a part/size/colour/action word is not built), ``swap_word``
  (``long``↔``short``, ``tall``↔``flat``, ``narrow``↔``thick``, ``small``↔``large``),
  ``wrong_colour``, ``wrong_count``;
* grid level: ``fragments`` (floating blobs), ``split`` (the object is cut and its top displaced),
  ``noise`` (surface voxels removed + colour noise), ``colour_noise``, ``stretch`` (z rescaled).

Ratings in ``[0, 1]`` (the evaluator's targets):

* **alignment** — share of the prompt's attribute words the shape shows. Read back by the ShapeWorld
  measurer (``measurer.fidelity``), else from the spec the sample was built
  from (a word counts when the built spec still carries it and no grid corruption touched it);
* **geometry** — well-formedness: one connected part per expected object, no fragments.
  ``g = clip(1 − 0.15·extra_parts − 0.35·missing_parts − 2.5·stray_fraction, 0, 1)`` with
  ``stray_fraction`` the share of voxels outside the expected number of largest parts;
* **texture** — colour agreement: ``t = clip(1 − 2.5·mean_v d_v, 0, 1)``, ``d_v`` the RGB distance
  (÷√3) of voxel ``v``'s colour to the nearest colour the prompt asks for (stated colour words, or
  each noun's default colour);
* **overall** — ``0.5·alignment + 0.25·geometry + 0.25·texture``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CORRUPTIONS",
    "EvaluatorDataConfig",
    "Sample",
    "build_dataset",
    "geometry_rating",
    "load_or_build_dataset",
    "make_samples",
    "overall_rating",
    "texture_rating",
]

logger = logging.getLogger(__name__)

SPEC_CORRUPTIONS = ("drop_word", "swap_word", "wrong_colour", "wrong_count")
GRID_CORRUPTIONS = ("fragments", "split", "noise", "colour_noise", "stretch")
CORRUPTIONS = SPEC_CORRUPTIONS + GRID_CORRUPTIONS
_SWAPS = {
    "long": "short",
    "short": "long",
    "tall": "flat",
    "flat": "tall",
    "narrow": "thick",
    "thick": "narrow",
}
_SIZE_SWAP = {"small": "large", "large": "small"}
OVERALL_WEIGHTS = (0.5, 0.25, 0.25)


@dataclass
class EvaluatorDataConfig:
    """How the evaluator's training set is made."""

    n_prompts: int = field(default=450, metadata={"help": "ShapeWorld prompts (uniform over categories)"})
    variants: int = field(
        default=6, metadata={"help": "samples per prompt: 1 clean + (variants-1) corrupted"}
    )
    max_corruptions: int = field(default=2, metadata={"help": "corruptions stacked on one sample (1..)"})
    generator_samples: int = field(
        default=0, metadata={"help": "extra samples from the mini generator when its weights exist"}
    )
    resolution: int = field(default=16, metadata={"help": "voxel grid resolution"})
    seed: int = field(default=0, metadata={"help": "seed for prompts, jitter and corruptions"})

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.variants < 1 or self.max_corruptions < 1:
            raise ValueError("EvaluatorDataConfig.n_prompts, variants and max_corruptions must be >= 1")
        if self.generator_samples < 0:
            raise ValueError(
                f"EvaluatorDataConfig.generator_samples must be >= 0, got {self.generator_samples}"
            )


@dataclass
class Sample:
    """One rated sample (before rendering)."""

    prompt: str
    category: str
    grid: Any  # VoxelGrid
    ratings: np.ndarray  # (4,) alignment, geometry, texture, overall
    corruptions: tuple[str, ...] = ()
    source: str = "builder"


# ---------------------------------------------------------------------------------------------- ratings
def overall_rating(alignment: float, geometry: float, texture: float) -> float:
    """``0.5·alignment + 0.25·geometry + 0.25·texture``."""
    a, g, t = OVERALL_WEIGHTS
    return a * alignment + g * geometry + t * texture


def geometry_rating(occupancy: np.ndarray, expected_parts: int) -> float:
    """Well-formedness of an occupancy grid with ``expected_parts`` objects (see module doc)."""
    from scipy import ndimage

    occ = np.asarray(occupancy, bool)
    total = int(occ.sum())
    if total == 0:
        return 0.0
    labels, n = ndimage.label(occ, structure=np.ones((3, 3, 3)))
    sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
    main = int(sizes[:expected_parts].sum())
    stray = 1.0 - main / total
    extra = max(0, n - expected_parts)
    missing = max(0, expected_parts - n)
    return float(np.clip(1.0 - 0.15 * extra - 0.35 * missing - 2.5 * stray, 0.0, 1.0))


def expected_palette(spec: Any) -> np.ndarray:
    """Colours the prompt asks for, ``(C, 3)``: stated colour words, else each noun's default."""
    from debias3d.data.shapeworld import vocab

    names = {o.colour or vocab.DEFAULT_COLOUR[o.noun] for o in spec.objects}
    return np.array([vocab.NAMED_COLOURS[n] for n in sorted(names)], np.float32)


def texture_rating(grid: Any, palette: np.ndarray) -> float:
    """Colour agreement of occupied voxels with ``palette`` ``(C, 3)`` (see module doc)."""
    occ = np.asarray(grid.occupancy, bool)
    if not occ.any():
        return 0.0
    cols = np.asarray(grid.colors, np.float32)[occ]  # (N, 3)
    d = np.linalg.norm(cols[:, None, :] - palette[None], axis=-1).min(1) / math.sqrt(3.0)
    return float(np.clip(1.0 - 2.5 * d.mean(), 0.0, 1.0))


def _spec_alignment(prompt_spec: Any, built_spec: Any, touched: set[str]) -> float:
    """Share of ``prompt_spec``'s words that ``built_spec`` still carries and no grid corruption hit."""
    words: list[bool] = []
    if prompt_spec.count > 1:
        words.append(built_spec.count == prompt_spec.count and "count" not in touched)
    for i, obj in enumerate(prompt_spec.objects):
        got = built_spec.objects[i] if i < len(built_spec.objects) else None
        for w in obj.words():
            ok = got is not None and w in got.words()
            if w == obj.colour:
                ok = ok and "colour" not in touched
            elif w in ("tall", "flat", "long", "short", "large", "small", "lying", "leaning"):
                ok = ok and "proportion" not in touched
            else:
                ok = ok and "shape" not in touched
            words.append(ok)
    if prompt_spec.relation is not None:
        words.append(built_spec.relation == prompt_spec.relation and "relation" not in touched)
    return float(np.mean(words)) if words else 1.0


def _measurer_alignment() -> Callable[[Any, Any], float] | None:
    """``(prompt or spec, grid) -> share of attribute words shown`` (ShapeWorld measurer), if present."""
    try:
        from debias3d.data.shapeworld.measurer import fidelity
    except ImportError:
        return None
    return lambda prompt, grid: float(fidelity(prompt, grid))


# ---------------------------------------------------------------------------------------------- corruptions
def _spec_corruption(kind: str, spec: Any, rng: np.random.Generator) -> Any | None:
    """A corrupted copy of ``spec`` or None when ``kind`` does not apply / is not buildable."""
    from debias3d.data.shapeworld import vocab
    from debias3d.data.shapeworld.builder import scene_problems

    i = int(rng.integers(len(spec.objects)))
    obj = spec.objects[i]
    new = None
    if kind == "drop_word":
        words = obj.words()
        if words:
            new = spec.without(words[int(rng.integers(len(words)))], object_index=i)
    elif kind == "swap_word":
        opts = [m for m in obj.modifiers if m in _SWAPS] + ([obj.size] if obj.size else [])
        if opts:
            w = opts[int(rng.integers(len(opts)))]
            if w in _SIZE_SWAP:
                new_obj = replace(obj, size=_SIZE_SWAP[w])
            else:
                new_obj = replace(obj, modifiers=tuple(m for m in obj.modifiers if m != w) + (_SWAPS[w],))
            new = replace(spec, objects=tuple(new_obj if j == i else o for j, o in enumerate(spec.objects)))
    elif kind == "wrong_colour":
        current = obj.colour or vocab.DEFAULT_COLOUR[obj.noun]
        choices = [c for c in vocab.COLOURS if c != current]
        new_obj = replace(obj, colour=choices[int(rng.integers(len(choices)))])
        new = replace(spec, objects=tuple(new_obj if j == i else o for j, o in enumerate(spec.objects)))
    elif kind == "wrong_count" and len(spec.objects) == 1 and spec.count > 1:
        count = 5 - spec.count  # 2 <-> 3
        new = replace(spec, count=count)
    if new is None:
        return None
    try:
        if scene_problems(new):
            return None
    except ValueError:
        return None
    return new


def _grid_corruption(kind: str, grid: Any, rng: np.random.Generator) -> tuple[Any, set[str]]:
    """Apply a grid-level corruption; returns the new grid and what it touched."""
    from scipy import ndimage

    from debias3d.data.assets import VoxelGrid

    occ = grid.occupancy.copy()
    col = grid.colors.copy()
    r = occ.shape[0]
    touched: set[str] = set()
    if kind == "fragments":
        dil = ndimage.binary_dilation(occ, iterations=2)
        free = np.argwhere(~dil)
        base = col[occ].mean(0) if occ.any() else np.full(3, 0.5, np.float32)
        for _ in range(int(rng.integers(1, 5))):
            c = free[int(rng.integers(len(free)))]
            size = int(rng.integers(1, 3))
            sl = tuple(slice(max(0, c[k]), min(r, c[k] + size)) for k in range(3))
            occ[sl] = True
            col[sl] = np.clip(base + rng.normal(0, 0.05, 3), 0, 1)
        # floating blobs make the shape ill-formed but leave every prompt word true
    elif kind == "split":
        zs = np.flatnonzero(occ.any((0, 1)))
        if len(zs) >= 4:
            cut = int(rng.integers(zs[0] + 2, zs[-1]))
            top_o, top_c = occ[:, :, cut:].copy(), col[:, :, cut:].copy()
            occ[:, :, cut:] = False
            col[:, :, cut:] = 0
            dx = int(rng.choice([-3, 3]))
            top_o, top_c = np.roll(top_o, dx, axis=0), np.roll(top_c, dx, axis=0)
            z1 = min(r, cut + 1)
            n = r - z1
            occ[:, :, z1:] |= top_o[:, :, :n]
            col[:, :, z1:] = np.where(top_o[:, :, :n, None], top_c[:, :, :n], col[:, :, z1:])
            touched |= {"shape", "relation"}
    elif kind == "noise":
        surface = occ & ~ndimage.binary_erosion(occ)
        idx = np.argwhere(surface)
        drop = idx[rng.random(len(idx)) < rng.uniform(0.15, 0.35)]
        occ[tuple(drop.T)] = False
        col = np.clip(col + rng.normal(0, rng.uniform(0.08, 0.2), col.shape).astype(np.float32), 0, 1)
        touched.add("shape")
    elif kind == "colour_noise":
        sigma = float(rng.uniform(0.05, 0.3))
        col = np.clip(col + rng.normal(0, sigma, col.shape).astype(np.float32), 0, 1)
        if sigma > 0.2:  # the stated colour is no longer recognisable
            touched.add("colour")
    elif kind == "stretch":
        f = float(rng.choice([0.6, 0.75, 1.35, 1.6]))
        z = np.arange(r)
        src = np.clip(np.round(z / f).astype(int), 0, r - 1)
        valid = (z / f) < r
        occ = occ[:, :, src] & valid[None, None]
        col = col[:, :, src] * occ[..., None]
        touched.add("proportion")
    col = col * occ[..., None]
    return VoxelGrid(occ, col.astype(np.float32)), touched


# ---------------------------------------------------------------------------------------------- samples
def make_samples(cfg: EvaluatorDataConfig) -> list[Sample]:
    """Build the rated (not yet rendered) samples; see the module doc for corruptions and ratings."""
    from debias3d.data.shapeworld.builder import build_voxels
    from debias3d.data.shapeworld.grammar import sample_prompts

    rng = np.random.default_rng(cfg.seed)
    measured = _measurer_alignment()
    if measured is None:
        logger.info("ShapeWorld measurer not available: alignment from the built spec")
    prompts = sample_prompts(cfg.n_prompts, rng=cfg.seed)
    samples: list[Sample] = []
    for p in prompts:
        palette = expected_palette(p.spec)
        n_exp = p.spec.n_instances
        for v in range(cfg.variants):
            built, touched, kinds = p.spec, set(), []
            if v > 0:
                k = int(rng.integers(1, cfg.max_corruptions + 1))
                for kind in rng.permutation(CORRUPTIONS)[:k]:
                    kinds.append(str(kind))
            spec_kinds = [k for k in kinds if k in SPEC_CORRUPTIONS]
            for kind in spec_kinds:
                new = _spec_corruption(kind, built, rng)
                if new is not None:
                    built = new
                else:
                    kinds.remove(kind)
            try:
                grid = build_voxels(built, cfg.resolution, rng)
            except ValueError as exc:
                logger.debug("skipping unbuildable corruption of %r: %s", p.text, exc)
                continue
            for kind in [k for k in kinds if k in GRID_CORRUPTIONS]:
                grid, t = _grid_corruption(kind, grid, rng)
                touched |= t
            if not grid.occupancy.any():
                continue
            if measured is not None:
                align = measured(p.spec, grid)
            else:
                align = _spec_alignment(p.spec, built, touched)
            geo = geometry_rating(grid.occupancy, n_exp)
            tex = texture_rating(grid, palette)
            ratings = np.array([align, geo, tex, overall_rating(align, geo, tex)], np.float32)
            samples.append(Sample(p.text, p.category, grid, ratings, tuple(kinds)))
    samples += _generator_samples(cfg, measured)
    return samples


def _generator_samples(cfg: EvaluatorDataConfig, measured: Callable | None) -> list[Sample]:
    """Mini generator outputs (rated like the rest) when its shipped weights exist."""
    if cfg.generator_samples <= 0:
        return []
    try:
        from debias3d.data.shapeworld.grammar import sample_prompts
        from debias3d.models.backbone.generator import MiniTrellisGenerator

        gen = MiniTrellisGenerator.from_pretrained()
    except (ImportError, FileNotFoundError, OSError, ValueError) as exc:
        logger.warning("no generator samples for the evaluator (%s)", exc)
        return []
    from debias3d.progress import tqdm

    prompts = sample_prompts(cfg.generator_samples, rng=cfg.seed + 1)
    texts, seeds, chunk = [p.text for p in prompts], list(range(len(prompts))), 64
    assets = []  # seed = prompt position, so the chunking (for the progress bar) changes no sample
    for s in tqdm(range(0, len(texts), chunk), desc="generator samples", unit="batch", leave=False):
        assets += gen.generate(texts[s : s + chunk], seeds[s : s + chunk], num_samples=1)
    out = []
    for p, a in zip(prompts, assets, strict=False):
        if a.voxels is None or not a.voxels.occupancy.any():
            continue
        align = measured(p.text, a.voxels) if measured is not None else float("nan")
        if not np.isfinite(align):
            continue
        geo = geometry_rating(a.voxels.occupancy, p.spec.n_instances)
        tex = texture_rating(a.voxels, expected_palette(p.spec))
        r = np.array([align, geo, tex, overall_rating(align, geo, tex)], np.float32)
        out.append(Sample(p.text, p.category, a.voxels, r, (), "generator"))
    return out


# ---------------------------------------------------------------------------------------------- dataset
def build_dataset(
    cfg: EvaluatorDataConfig, image_size: int, progress: bool = True, rig: Any = None
) -> dict[str, np.ndarray]:
    """Samples rendered with the MATE-3D rig at ``image_size``.

    Returns:
        ``views`` ``(N, 6, H, W, 3)`` uint8, ``ratings`` ``(N, 4)`` float32, ``prompt_index`` ``(N,)``,
        ``prompts`` ``(P,)``, ``categories`` ``(N,)``, ``corruptions`` ``(N,)`` ("+"-joined),
        ``source`` ``(N,)``.
    """
    from debias3d.data.shapeworld.voxelize import voxels_to_mesh
    from debias3d.models.evaluator.views import ViewCache

    samples = make_samples(cfg)
    cache = ViewCache(rig=rig, image_size=image_size, max_items=1)
    views = np.empty((len(samples), 6, image_size, image_size, 3), np.uint8)
    keep = np.ones(len(samples), bool)
    it: Any = range(len(samples))
    if progress:
        from debias3d.progress import tqdm

        it = tqdm(it, desc="render evaluator set", leave=False)
    for i in it:
        vb = cache.get([voxels_to_mesh(samples[i].grid)])
        keep[i] = bool(vb.valid[0])
        views[i] = (vb.views[0].permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    samples = [s for s, k in zip(samples, keep, strict=True) if k]
    views = views[keep]
    prompts = list(dict.fromkeys(s.prompt for s in samples))
    index = {p: i for i, p in enumerate(prompts)}
    return {
        "views": views,
        "ratings": np.stack([s.ratings for s in samples]).astype(np.float32),
        "prompt_index": np.array([index[s.prompt] for s in samples], np.int64),
        "prompts": np.array(prompts),
        "categories": np.array([s.category for s in samples]),
        "corruptions": np.array(["+".join(s.corruptions) or "clean" for s in samples]),
        "source": np.array([s.source for s in samples]),
    }


def load_or_build_dataset(
    cfg: EvaluatorDataConfig, image_size: int, folder: str | Path, rig: Any = None
) -> dict[str, np.ndarray]:
    """Load ``folder/data.npz`` if it was built with the same config and size, else build and save it."""
    import json
    from dataclasses import asdict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"data": asdict(cfg), "image_size": image_size}
    if rig is not None and rig.name != "mate3d":
        spec["rig"] = [rig.name, rig.normalize, [list(map(float, c.position)) for c in rig.cameras]]
    key = json.dumps(spec, sort_keys=True)
    path, key_path = folder / "data.npz", folder / "data_key.json"
    if path.is_file() and key_path.is_file() and key_path.read_text() == key:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    ds = build_dataset(cfg, image_size, rig=rig)
    np.savez_compressed(path, **ds)
    key_path.write_text(key)
    logger.info("evaluator dataset: %d samples cached in %s", len(ds["ratings"]), path)
    return ds
