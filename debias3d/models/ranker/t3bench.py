"""T3Bench's quality aggregation of per-view ranker scores (He et al., T3Bench §3.2).

1. Cameras at every vertex of an icosphere (level 2: 162 vertices), each rendered with several
   fields of view (π/3, π/4, π/5, π/6, π/7.5);
2. per vertex, the best score over the FoVs;
3. vertex scores smoothed 3 times over icosphere neighbours
   (``s'_p = (s_p + Σ_{n∈N(p)} s_n) / (|N(p)| + 1)``);
4. the top vertex, reported as ``score * 20 + 50``.

Levels and FoVs can be reduced (``T3BenchConfig``) to keep CPU runs short.

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

from debias3d.render.cameras import T3BENCH_FOVS, smooth_vertex_scores, t3bench_rig

__all__ = ["T3BenchConfig", "T3BenchQuality", "T3BenchResult", "t3bench_aggregate"]


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
    """T3Bench quality settings (defaults = the benchmark's)."""

    level: int = field(default=2, metadata={"help": "icosphere subdivisions (2 → 162 cameras)"})
    fovs: tuple[float, ...] = field(default=T3BENCH_FOVS, metadata={"help": "vertical FoVs (radians)"})
    radius: float = field(default=2.2, metadata={"help": "camera distance"})
    smooth_iterations: int = field(default=3, metadata={"help": "neighbour smoothing passes"})
    scale: float = field(default=20.0, metadata={"help": "reported = best * scale + offset"})
    offset: float = field(default=50.0, metadata={"help": "reported = best * scale + offset"})

    def __post_init__(self) -> None:
        self.fovs = tuple(float(f) for f in self.fovs)
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
        self.rig = t3bench_rig(self.config.level, self.config.radius, self.config.fovs)
        self._renderer = renderer

    @property
    def renderer(self) -> Any:
        if self._renderer is None:
            from debias3d.render.renderer import Renderer

            self._renderer = Renderer(image_size=getattr(self.ranker, "image_size", 224))
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
