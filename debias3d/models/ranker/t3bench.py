"""T3Bench's quality aggregation of per-view ranker scores (He et al., T3Bench §3.2).

1. Cameras at every vertex of an icosphere (level 2: 162 vertices), each rendered with several
   fields of view (π/3, π/4, π/5, π/6, π/7.5);
2. per vertex, the best score over the FoVs;
3. vertex scores smoothed 3 times over icosphere neighbours
   (``s'_p = (s_p + Σ_{n∈N(p)} s_n) / (|N(p)| + 1)``);
4. the top vertex, reported as ``score * 20 + 50``.

Levels and FoVs can be reduced (``T3BenchConfig``) to keep CPU runs short. ``preset="t3bench"``
sets every camera, render and aggregation setting to T3Bench's own (level 2, 5 FoVs, radius 2.2,
512 px on black with flat lighting, T3Bench's up vectors, ``× 20 + 50``). T3Bench's ``× 20 + 50``
is calibrated on ImageReward-v1.0 scores, so a T3Bench-style number is comparable with published
T3Bench numbers only with the ``imagereward`` ranker and that preset (:func:`t3bench_label` says
which ranker and settings produced a number).

>>> import numpy as np
>>> adj = ((1, 2), (0, 2), (0, 1), ())          # a triangle and an isolated vertex
>>> t3bench_aggregate(np.array([0.0, 0.0, 3.0, 1.0]), np.arange(4), adj, iterations=1)
70.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from debias3d.render.cameras import (
    T3BENCH_FOVS,
    T3BENCH_IMAGE_SIZE,
    T3BENCH_RADIUS,
    smooth_vertex_scores,
    t3bench_rig,
)

__all__ = [
    "T3BENCH_PRESETS",
    "T3BenchConfig",
    "T3BenchQuality",
    "T3BenchResult",
    "t3bench_aggregate",
    "t3bench_comparable",
    "t3bench_label",
]

#: ``T3BenchConfig.preset`` values: ``""`` (the fields as given) or ``"t3bench"``.
T3BENCH_PRESETS = ("", "t3bench")
#: Every setting of T3Bench's quality metric (``run_eval_quality.py``, ``render/meshrender.py``).
_T3BENCH_SETTINGS: dict[str, Any] = {
    "level": 2,
    "fovs": T3BENCH_FOVS,
    "radius": T3BENCH_RADIUS,
    "smooth_iterations": 3,
    "scale": 20.0,
    "offset": 50.0,
    "image_size": T3BENCH_IMAGE_SIZE,
    "background": "black",
    "lighting": "flat",
    "up_rule": "t3bench",
}
#: Rankers whose scores T3Bench's ``× 20 + 50`` was calibrated on.
T3BENCH_CALIBRATED_RANKERS = ("imagereward",)


def t3bench_aggregate(
    view_scores: Sequence[float] | np.ndarray,
    view_position: Sequence[int] | np.ndarray,
    adjacency: Sequence[Sequence[int]],
    iterations: int = 3,
    scale: float = 20.0,
    offset: float = 50.0,
) -> float:
    """T3Bench quality from per-view scores.

    Args:
        view_scores: ``(V,)`` ranker score of each view.
        view_position: ``(V,)`` icosphere vertex of each view (several FoVs share a vertex).
        adjacency: ``P`` neighbour lists.
        iterations: smoothing passes (T3Bench: 3).
        scale, offset: reported as ``max_p smoothed_p * scale + offset`` (T3Bench: 20, 50).

    Returns:
        The quality score (float).
    """
    return float(_vertex_scores(view_scores, view_position, adjacency, iterations).max() * scale + offset)


def _vertex_scores(view_scores: Any, view_position: Any, adjacency: Any, iterations: int) -> np.ndarray:
    s = np.asarray(view_scores, dtype=np.float64)
    pos = np.asarray(view_position, dtype=np.int64)
    if s.shape != pos.shape:
        raise ValueError(f"view_scores {s.shape} and view_position {pos.shape} differ")
    per_vertex = np.full(len(adjacency), -np.inf)
    np.maximum.at(per_vertex, pos, s)  # best FoV per vertex
    if not np.isfinite(per_vertex).all():
        raise ValueError("every icosphere vertex needs at least one view score")
    return smooth_vertex_scores(per_vertex, adjacency, iterations)


@dataclass
class T3BenchConfig:
    """T3Bench quality settings: cameras and aggregation default to T3Bench's, the render look to the
    project's (white, soft light, the ranker's size); ``preset="t3bench"`` makes every setting T3Bench's."""

    preset: str = field(
        default="",
        metadata={
            "help": "'t3bench' = T3Bench's settings for every field (512 px, black, flat); '' = as given"
        },
    )

    level: int = field(default=2, metadata={"help": "icosphere subdivisions (2 → 162 cameras)"})
    fovs: tuple[float, ...] = field(default=T3BENCH_FOVS, metadata={"help": "vertical FoVs (radians)"})
    radius: float = field(default=2.2, metadata={"help": "camera distance"})
    smooth_iterations: int = field(default=3, metadata={"help": "neighbour smoothing passes"})
    scale: float = field(default=20.0, metadata={"help": "reported = best * scale + offset"})
    offset: float = field(default=50.0, metadata={"help": "reported = best * scale + offset"})
    image_size: int = field(
        default=0, metadata={"help": "render size in px (0 = the ranker's; T3Bench: 512)"}
    )
    background: str = field(default="white", metadata={"help": "render background (T3Bench: black)"})
    lighting: str = field(default="soft", metadata={"help": "soft or flat (T3Bench: flat, ambient only)"})
    up_rule: str = field(default="resolve", metadata={"help": "camera up vectors: resolve or t3bench"})

    def __post_init__(self) -> None:
        from dataclasses import fields

        if self.preset not in T3BENCH_PRESETS:
            raise ValueError(f"T3BenchConfig.preset must be one of {T3BENCH_PRESETS}, got {self.preset!r}")
        self.fovs = tuple(float(f) for f in self.fovs)
        if self.preset == "t3bench":
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in _T3BENCH_SETTINGS.items():
                cur = getattr(self, name)
                if cur != defaults[name] and cur != value:
                    raise ValueError(
                        f"T3BenchConfig.{name}={cur!r} conflicts with preset 't3bench' ({value!r}); "
                        "drop the field or the preset"
                    )
                setattr(self, name, value)
        if not 0 <= self.image_size <= 4096:
            raise ValueError(f"T3BenchConfig.image_size must be in [0, 4096] px, got {self.image_size}")
        if self.lighting not in ("soft", "flat"):
            raise ValueError(f"T3BenchConfig.lighting must be 'soft' or 'flat', got {self.lighting!r}")
        if self.up_rule not in ("resolve", "t3bench"):
            raise ValueError(f"T3BenchConfig.up_rule must be 'resolve' or 't3bench', got {self.up_rule!r}")
        if not 0 <= self.level <= 4:
            # level 4 is already 2562 cameras per field of view; each level multiplies them by ~4
            raise ValueError(f"T3BenchConfig.level must be in [0, 4] (4 = 2562 cameras), got {self.level}")
        if len(self.fovs) > 16:
            raise ValueError(f"T3BenchConfig.fovs: at most 16 fields of view, got {len(self.fovs)}")
        if not self.fovs or any(not 0 < f < math.pi for f in self.fovs):
            raise ValueError(f"T3BenchConfig.fovs must be non-empty, each in (0, pi), got {self.fovs}")
        if not 0 <= self.smooth_iterations <= 1000:
            raise ValueError(
                f"T3BenchConfig.smooth_iterations must be in [0, 1000], got {self.smooth_iterations}"
            )


@dataclass
class T3BenchResult:
    """Quality of one asset: ``score``, the smoothed ``vertex_scores`` ``(P,)``, ``best_vertex``."""

    score: float
    vertex_scores: np.ndarray
    best_vertex: int


class T3BenchQuality:
    """T3Bench quality of meshes with any ranker (``ranker.view_scores``).

    Args:
        ranker: a :class:`debias3d.models.ranker.base.RankerBase`.
        config: rig and aggregation settings.
        renderer: a renderer with ``render_tensor(mesh, rig)``; default one at ``ranker.image_size``.
    """

    def __init__(self, ranker: Any, config: T3BenchConfig | None = None, renderer: Any = None) -> None:
        self.ranker = ranker
        self.config = config or T3BenchConfig()
        c = self.config
        self.rig = t3bench_rig(
            c.level, c.radius, c.fovs, c.background, c.lighting, c.image_size or None, c.up_rule
        )
        self._renderer = renderer

    @property
    def renderer(self) -> Any:
        """The renderer (default: the rig's size / background / lighting, else the ranker's size)."""
        if self._renderer is None:
            from debias3d.render.renderer import Renderer

            size = self.rig.image_size or getattr(self.ranker, "image_size", 224)
            self._renderer = Renderer(
                image_size=size, background=self.rig.background, lighting=self.rig.lighting
            )
        return self._renderer

    def from_view_scores(self, view_scores: Sequence[float] | np.ndarray) -> T3BenchResult:
        """Aggregate ``(V,)`` scores ordered like ``self.rig`` (position-major)."""
        c = self.config
        v = _vertex_scores(view_scores, self.rig.position_index, self.rig.adjacency, c.smooth_iterations)
        best = int(np.argmax(v))
        return T3BenchResult(float(v[best] * c.scale + c.offset), v, best)

    def __call__(self, asset: Any, prompt: str | None = None) -> T3BenchResult:
        """Render ``asset`` (or a mesh) on the icosphere rig and aggregate the ranker's scores."""
        prompt = prompt if prompt is not None else asset.prompt
        views = self.renderer.render_tensor(getattr(asset, "mesh", asset), self.rig)
        scores = self.ranker.view_scores([views], [prompt])[0]
        return self.from_view_scores(scores.numpy())


def t3bench_comparable(ranker: str, config: T3BenchConfig) -> bool:
    """True when numbers from ``ranker`` (registry name) with ``config`` compare with published T3Bench."""
    return ranker in T3BENCH_CALIBRATED_RANKERS and all(
        getattr(config, k) == v for k, v in _T3BENCH_SETTINGS.items()
    )


def t3bench_label(ranker: str, config: T3BenchConfig) -> str:
    """One line saying which ranker and settings produced T3Bench-style quality numbers.

    >>> t3bench_label("imagereward", T3BenchConfig(preset="t3bench"))
    'imagereward, T3Bench settings (162 cameras x 5 FoVs, 512 px, black, flat); comparable with published T3Bench'
    >>> t3bench_label("hpsv2", T3BenchConfig(level=0, fovs=(1.0,)))
    'hpsv2, 12 cameras x 1 FoV, ranker-size px, white, soft; x20+50 is calibrated for ImageReward: not comparable with published T3Bench'
    """
    c = config
    n = 10 * 4**c.level + 2
    fov = "FoV" if len(c.fovs) == 1 else "FoVs"
    px = f"{c.image_size} px" if c.image_size else "ranker-size px"
    rig = f"{n} cameras x {len(c.fovs)} {fov}, {px}, {c.background}, {c.lighting}"
    if t3bench_comparable(ranker, c):
        return f"{ranker}, T3Bench settings ({rig}); comparable with published T3Bench"
    if ranker not in T3BENCH_CALIBRATED_RANKERS:
        why = "x20+50 is calibrated for ImageReward"
    else:
        why = "settings differ from T3Bench's (use ranking.preset: t3bench)"
    return f"{ranker}, {rig}; {why}: not comparable with published T3Bench"
