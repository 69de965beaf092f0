"""Embedded reward ranker (registry: ``ranker`` / ``shapeworld``): a tiny CLIP trained on ShapeWorld.

Image tower: its own small CNN (no weight is shared with the evaluator, so the augmentation filter
is not the audit's probe grading itself). Text tower: the frozen MiniLM, mean-pooled over real
tokens, then a trainable projection. Both are L2-normalised; an image's score is HPSv2's
``100 · cos(f_img, f_txt)``.

Training (:mod:`.train`) is CLIP's symmetric InfoNCE over (view, prompt) pairs plus, for each
prompt, corrupted renders of the same prompt as hard negatives, so a correct shape outranks a
corrupted one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debias3d.models.persistence import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    SavesWithoutTextEncoder,
    load_safetensors,
    read_json,
)
from debias3d.models.ranker.base import RankerBase

__all__ = ["RankerModelConfig", "ShapeWorldRanker", "default_weights_dir"]

logger = logging.getLogger(__name__)


def default_weights_dir() -> Path:
    """``debias3d/assets/ranker/`` — the shipped weights."""
    return Path(__file__).resolve().parents[2] / "assets" / "ranker"


@dataclass
class RankerModelConfig:
    """Architecture of the embedded ranker."""

    image_size: int = field(default=48, metadata={"help": "input size of each view (px)"})
    widths: tuple[int, int, int, int] = field(
        default=(24, 48, 96, 128), metadata={"help": "CNN stage channels"}
    )
    embed_dim: int = field(default=64, metadata={"help": "joint embedding size"})
    text_encoder: str = field(default="minilm", metadata={"help": "frozen text encoder backend"})
    aggregation: str = field(default="mean", metadata={"help": "view aggregation: mean, max or min"})

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if self.image_size < 16:
            raise ValueError(f"RankerModelConfig.image_size must be >= 16, got {self.image_size}")
        if self.embed_dim < 1:
            raise ValueError(f"RankerModelConfig.embed_dim must be >= 1, got {self.embed_dim}")


class _ImageTower(nn.Module):
    """``(M, 3, H, W)`` in [0, 1] → ``(M, E)`` (not normalised)."""

    def __init__(self, widths: Sequence[int], dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, dim)

    def forward(self, x: Tensor) -> Tensor:
        f = self.net((x - 0.5) / 0.25)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1))


class ShapeWorldRanker(SavesWithoutTextEncoder, RankerBase, nn.Module):
    """Small image–text ranker; ``score(views (V, 3, H, W), prompt) -> float``.

    Args:
        config: architecture.
        text_encoder: a frozen text encoder (default MiniLM).
        batch_size: images per forward pass.
    """

    def __init__(
        self, config: RankerModelConfig | None = None, text_encoder: Any = None, batch_size: int = 64
    ):
        self.config = config = config or RankerModelConfig()
        nn.Module.__init__(self)
        RankerBase.__init__(
            self, batch_size=batch_size, aggregation=config.aggregation, image_size=config.image_size
        )
        if text_encoder is None:
            from debias3d.registry import build

            text_encoder = build("text_encoder", config.text_encoder)
        self.text_encoder = text_encoder
        self.image_tower = _ImageTower(config.widths, config.embed_dim)
        d = int(text_encoder.dim)
        self.text_proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.66))  # log(1/0.07), CLIP's init

    # ---------------------------------------------------------------- towers
    def encode_images(self, images: Tensor) -> Tensor:
        """``(M, 3, H, W)`` in [0, 1] → unit vectors ``(M, E)``; resized to ``image_size`` if needed."""
        s = self.config.image_size
        if images.shape[-1] != s or images.shape[-2] != s:
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return F.normalize(self.image_tower(images), dim=-1)

    def encode_text_features(self, feats: Tensor, mask: Tensor) -> Tensor:
        """Frozen token features ``(P, T, Dt)`` + mask → unit vectors ``(P, E)``."""
        m = mask.to(feats.dtype).unsqueeze(-1)
        pooled = (feats * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Prompts → unit vectors ``(P, E)`` (text encoder features are cached by the encoder)."""
        feats, mask = self.text_encoder.encode(list(prompts))
        return self.encode_text_features(feats.to(self.logit_scale.device), mask.to(self.logit_scale.device))

    def image_scores(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """HPSv2-style ``100 · cos`` of each image with its prompt, ``(M,)``."""
        uniq = list(dict.fromkeys(prompts))
        t = self.encode_text(uniq)
        idx = torch.tensor([uniq.index(p) for p in prompts])
        return 100.0 * (self.encode_images(images.to(t.device)) * t[idx]).sum(-1)

    @torch.no_grad()
    def view_scores(self, views: Any, prompts: Sequence[str]) -> list[Tensor]:
        was = self.training
        self.eval()
        try:
            return super().view_scores(views, prompts)
        finally:
            self.train(was)

    # ---------------------------------------------------------------- persistence

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, text_encoder: Any = None, device: str = "cpu"
    ) -> ShapeWorldRanker:
        """Load weights from ``path`` (a folder or safetensors file; default: the shipped ones)."""
        from debias3d.config import from_dict

        p = Path(path) if path is not None else default_weights_dir()
        folder = p if p.is_dir() else p.parent
        weights = folder / WEIGHTS_NAME if p.is_dir() else p
        if not weights.is_file():
            raise FileNotFoundError(
                f"ranker weights {weights} not found; train them with debias3d.models.ranker.train"
            )
        cfg = RankerModelConfig()
        if (folder / CONFIG_NAME).is_file():
            cfg = from_dict(RankerModelConfig, read_json(folder / CONFIG_NAME)["config"])
        model = cls(cfg, text_encoder=text_encoder)
        missing, unexpected = model.load_state_dict(load_safetensors(weights), strict=False)
        missing = [k for k in missing if not k.startswith("text_encoder.")]
        if missing or unexpected:
            raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        return model.to(device).eval()
