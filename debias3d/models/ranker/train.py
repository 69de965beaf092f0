"""Contrastive training of the embedded ShapeWorld ranker (CLIP-style InfoNCE + hard negatives).

Data: the rendered ShapeWorld set the evaluator trains on (``dataset/data.npz`` with views,
prompts and corruption labels; :func:`debias3d.models.evaluator.data.load_or_build_dataset`). Only
the *renders* are shared; the ranker has its own image tower and projection, so it shares no weight
with the evaluator.

Per step, ``B`` prompts; for each a view of its clean shape (positive) and the same view of one of
its corrupted shapes (hard negative). Loss (CLIP, Radford et al. 2021, Eq. in §2.3):

    L = ½ [CE(s · I⁺ Tᵀ, diag) + CE(s · T [I⁺; I⁻]ᵀ, diag)]

so text→image retrieval must prefer the right shape over a corrupted version of it. Reported:
held-out pairwise accuracy ``P(score(clean) > score(corrupted))`` over prompts never trained on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from debias3d.models.ranker.model import RankerModelConfig, ShapeWorldRanker

__all__ = ["RankerTrainConfig", "pairwise_accuracy", "train_ranker"]

logger = logging.getLogger(__name__)


@dataclass
class RankerTrainConfig:
    """Ranker training settings."""

    model: RankerModelConfig = field(default_factory=RankerModelConfig, metadata={"help": "architecture"})
    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "prompts per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate (cosine decay)"})
    heldout_fraction: float = field(default=0.15, metadata={"help": "prompts kept out for the report"})
    hard_negative_max_alignment: float = field(
        default=0.9,
        metadata={"help": "a corrupted sample is a negative when its overall rating is below this"},
    )
    num_threads: int = field(default=1, metadata={"help": "torch threads"})
    seed: int = field(default=0, metadata={"help": "seed"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(
                f"RankerTrainConfig.heldout_fraction must be in [0, 1), got {self.heldout_fraction}"
            )
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("RankerTrainConfig.steps must be >= 1 and batch_size >= 2")


def _pairs(ds: dict[str, np.ndarray], max_overall: float) -> dict[int, tuple[int, list[int]]]:
    """prompt -> (clean sample index, corrupted sample indices)."""
    out: dict[int, tuple[int, list[int]]] = {}
    clean = ds["corruptions"] == "clean"
    for p in np.unique(ds["prompt_index"]):
        idx = np.flatnonzero(ds["prompt_index"] == p)
        pos = idx[clean[idx]]
        neg = [int(i) for i in idx[~clean[idx]] if ds["ratings"][i, 3] < max_overall]
        if len(pos) and neg:
            out[int(p)] = (int(pos[0]), neg)
    return out


def _images(views: np.ndarray, idx: np.ndarray, view: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(views[idx, view])  # (B, H, W, 3) uint8
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def pairwise_accuracy(
    model: ShapeWorldRanker, ds: dict[str, np.ndarray], pairs: dict, prompts: list[int]
) -> float:
    """Share of (clean, corrupted) pairs of ``prompts`` where the clean shape scores higher."""
    wins, total = 0, 0
    names = [str(p) for p in ds["prompts"]]
    for p in prompts:
        pos, negs = pairs[p]
        idx = [pos, *negs]
        views = [torch.from_numpy(ds["views"][i]).permute(0, 3, 1, 2).float() / 255.0 for i in idx]
        s = model.score_many(views, [names[p]] * len(idx))
        wins += int((s[0] > s[1:]).sum())
        total += len(negs)
    return wins / max(total, 1)


def train_ranker(
    cfg: RankerTrainConfig,
    dataset: dict[str, np.ndarray],
    out_dir: str | os.PathLike,
    text_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    text_encoder: Any = None,
) -> dict[str, Any]:
    """Train and save the ranker to ``out_dir`` (``model.safetensors``, ``config.json``,
    ``training_record.json``, ``train_log.jsonl``); returns the record."""
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = ShapeWorldRanker(cfg.model, text_encoder=text_encoder)
    names = [str(p) for p in dataset["prompts"]]
    if text_features is None:
        from debias3d.models.text_encoder import pad_features

        text_features = pad_features(model.text_encoder.encode_one_by_one(names))
    feats, mask = text_features
    pairs = _pairs(dataset, cfg.hard_negative_max_alignment)
    prompts = np.array(sorted(pairs))
    rng.shuffle(prompts)
    n_held = int(round(len(prompts) * cfg.heldout_fraction))
    held, train = prompts[:n_held].tolist(), prompts[n_held:]
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("text_encoder.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    n_views = dataset["views"].shape[1]
    log = (out / "train_log.jsonl").open("a", encoding="utf-8")
    t0 = time.time()
    model.train()
    for step in range(cfg.steps):
        ps = rng.choice(train, size=min(cfg.batch_size, len(train)), replace=False)
        pos = np.array([pairs[p][0] for p in ps])
        neg = np.array([rng.choice(pairs[p][1]) for p in ps])
        view = rng.integers(0, n_views, len(ps))
        imgs = torch.cat([_images(dataset["views"], pos, view), _images(dataset["views"], neg, view)])
        img = model.encode_images(imgs)
        txt = model.encode_text_features(feats[ps], mask[ps])
        b = len(ps)
        s = model.logit_scale.clamp(max=4.6).exp()
        target = torch.arange(b)
        loss = 0.5 * (F.cross_entropy(s * img[:b] @ txt.T, target) + F.cross_entropy(s * txt @ img.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "loss": float(loss), "seconds": round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            logger.info("ranker %s", rec)
    model.eval()
    record = {
        "heldout_prompts": len(held),
        "heldout_pairwise_accuracy": pairwise_accuracy(model, dataset, pairs, held) if held else None,
        "train_pairwise_accuracy": pairwise_accuracy(model, dataset, pairs, train[:60].tolist()),
        "steps": cfg.steps,
        "seconds": round(time.time() - t0, 1),
        "objective": "CLIP InfoNCE (image->text, text->[clean; corrupted] image)",
    }
    log.write(json.dumps({"final": record}) + "\n")
    log.close()
    model.save_pretrained(out, metadata={"training": record})
    (out / "training_record.json").write_text(json.dumps(record, indent=2))
    return record
