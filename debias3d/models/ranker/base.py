"""Reward-ranker protocol: ``score(views, prompt) -> float`` for one asset, batched over assets.

A ranker scores single rendered images against a prompt (HPSv2 style); an asset's score aggregates
its views (mean by default). Algorithm 1 of the paper keeps an augmented mesh ``x_nc`` only when its
ranker score beats the original ``x_n``'s.

Subclasses implement :meth:`RankerBase.image_scores`; batching, rendering and aggregation live here
so that every backend shares them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["AGGREGATIONS", "OPENAI_MEAN", "OPENAI_STD", "Ranker", "RankerBase", "normalize_openai"]

logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "max", "min")
#: OpenAI CLIP's per-channel image mean / std (HPSv2 and ImageReward normalise with them).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_openai(x: Tensor) -> Tensor:
    """``(x - mean) / std`` with :data:`OPENAI_MEAN` / :data:`OPENAI_STD`; ``x``: ``(M, 3, H, W)``."""
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@runtime_checkable
class Ranker(Protocol):
    """What the augmentation filter needs from a ranker."""

    def score(self, views: Tensor, prompt: str) -> float:
        """Score of one asset from its views ``(V, 3, H, W)`` in ``[0, 1]``."""
        ...

    def score_many(self, views: Tensor | Sequence[Tensor], prompts: Sequence[str]) -> np.ndarray:
        """Scores ``(N,)`` of ``N`` assets."""
        ...


class RankerBase:
    """Shared glue. Subclasses define :meth:`image_scores` and may set ``image_size``.

    Args:
        batch_size: images per forward pass (views of several assets are packed together).
        aggregation: how views of one asset combine, one of :data:`AGGREGATIONS`.
        image_size: render size used by :meth:`render_views`.
    """

    image_size: int = 224

    def __init__(
        self, batch_size: int = 32, aggregation: str = "mean", image_size: int | None = None
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.aggregation = aggregation
        if image_size is not None:
            self.image_size = int(image_size)
        self._renderer: Any = None

    # ----------------------------------------------------------------- backend hook
    def image_scores(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-image scores ``(M,)`` for images ``(M, 3, H, W)`` in ``[0, 1]`` and ``M`` prompts."""
        raise NotImplementedError

    # ----------------------------------------------------------------- protocol
    def _aggregate(self, s: Tensor) -> float:
        if self.aggregation == "mean":
            return float(s.mean())
        if self.aggregation == "max":
            return float(s.max())
        return float(s.min())

    @torch.no_grad()
    def view_scores(self, views: Tensor | Sequence[Tensor], prompts: Sequence[str]) -> list[Tensor]:
        """Per-view scores of each asset: ``N`` tensors ``(V_n,)``, computed in packed batches."""
        views = list(views)
        if len(views) != len(prompts):
            raise ValueError(f"{len(views)} view sets but {len(prompts)} prompts")
        flat = [(n, v) for n, vs in enumerate(views) for v in vs]
        scores = torch.empty(len(flat))
        for s in range(0, len(flat), self.batch_size):
            chunk = flat[s : s + self.batch_size]
            images = torch.stack([v for _, v in chunk]).float()
            scores[s : s + len(chunk)] = (
                self.image_scores(images, [prompts[n] for n, _ in chunk]).float().cpu()
            )
        out, s = [], 0
        for vs in views:
            out.append(scores[s : s + len(vs)])
            s += len(vs)
        return out

    def score(self, views: Tensor, prompt: str) -> float:
        """Score of one asset: aggregate of its per-view scores. ``views`` ``(V, 3, H, W)``."""
        return self._aggregate(self.view_scores([views], [prompt])[0])

    def score_many(self, views: Tensor | Sequence[Tensor], prompts: Sequence[str]) -> np.ndarray:
        """Scores ``(N,)`` of ``N`` assets; ``views`` ``(N, V, 3, H, W)`` or a list of ``(V_n, 3, H, W)``."""
        return np.array([self._aggregate(s) for s in self.view_scores(views, prompts)], dtype=np.float64)

    # ----------------------------------------------------------------- rendering
    def render_views(self, assets: Sequence[Any], rig: Any = None) -> list[Tensor]:
        """Render assets (or meshes) with ``rig`` (default MATE-3D's 6 views) at ``image_size``.

        Raises:
            debias3d.render.renderer.RenderError: naming the item, for an unrenderable mesh.
        """
        from debias3d.render.cameras import mate3d_rig
        from debias3d.render.renderer import Renderer, RenderError

        if self._renderer is None:
            self._renderer = Renderer(image_size=self.image_size)
        rig = rig or mate3d_rig()
        out = []
        for i, a in enumerate(assets):
            try:
                out.append(self._renderer.render_tensor(getattr(a, "mesh", a), rig))
            except RenderError as exc:
                raise RenderError(f"ranker: item {i}: {exc}") from exc
        return out

    def score_assets(self, assets: Sequence[Any], prompts: Sequence[str] | str | None = None) -> np.ndarray:
        """Render then score assets; ``prompts`` defaults to each asset's ``.prompt``."""
        assets = list(assets)
        if prompts is None:
            prompts = [a.prompt for a in assets]
        elif isinstance(prompts, str):
            prompts = [prompts] * len(assets)
        return self.score_many(self.render_views(assets), list(prompts))
