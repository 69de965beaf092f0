"""Train the embedded evaluator on ShapeWorld ratings with MATE-3D's protocol.

Protocol (MATE-3D §6): prompts are split into ``folds`` groups; each fold trains on the other
prompts and reports SRCC / PLCC per dimension on its held-out prompts (no held-out prompt is ever
seen in training). The shipped model is then trained on all prompts.

Steps of :func:`train_evaluator`:

1. build (or reuse) the dataset: ShapeWorld samples with controlled corruptions, rendered once with
   the MATE-3D rig and cached under ``out_dir/dataset/`` (:mod:`.data`);
2. encode every prompt once with the frozen text encoder (cached next to the views);
3. cross-validate, logging one JSON line per epoch and per fold to ``train_log.jsonl``;
4. train the final model on all prompts and write ``model.safetensors``, ``config.json`` and
   ``training_record.json`` (fold SRCC / PLCC) to ``out_dir``.

Loss: MSE on each dimension plus a pairwise ranking hinge inside the batch (SRCC is a rank metric).
Example (the shipped config without the ``train.epochs`` override takes about 30 min on 2 cores)::

    train_evaluator_command("configs/shapeworld/evaluator.yaml", ["train.epochs=2"], "runs/ev")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from debias3d.config import check_bounds
from debias3d.models.evaluator.config import EvaluatorModelConfig
from debias3d.models.evaluator.data import EvaluatorDataConfig, load_or_build_dataset

__all__ = [
    "EvaluatorTrainConfig",
    "TrainSection",
    "correlations",
    "merge_fold_records",
    "prompt_folds",
    "prompt_groups",
    "summarize_folds",
    "train_evaluator",
    "train_evaluator_command",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainSection:
    """Optimisation settings."""

    folds: int = field(default=5, metadata={"help": "cross-validation folds, split by prompt"})
    run_folds: int | None = field(default=None, metadata={"help": "how many of the folds to run (None: all)"})
    fold_ids: tuple[int, ...] = field(
        default=(),
        metadata={"help": "run exactly these folds (overrides run_folds; to split work over processes)"},
    )
    epochs: int = field(default=16, metadata={"help": "epochs per fold"})
    final_epochs: int = field(
        default=20,
        metadata={"help": "epochs of the shipped model on all prompts; 0 ships fold 0's model instead"},
    )
    batch_size: int = field(default=64, metadata={"help": "samples per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate (cosine decay)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    rank_weight: float = field(default=0.5, metadata={"help": "weight of the pairwise ranking hinge"})
    rank_margin: float = field(default=0.02, metadata={"help": "margin of the ranking hinge"})
    num_threads: int = field(
        default=1,
        metadata={"help": "torch threads; 1 is fastest on a shared 2-core box (no spin contention)"},
    )
    render_size: int = field(
        default=0, metadata={"help": "render the dataset at this size (0: model.image_size); resized once"}
    )
    seed: int = field(default=0, metadata={"help": "seed for folds, init and batches"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"TrainSection.folds must be >= 2, got {self.folds}")
        if self.run_folds is None:
            self.run_folds = self.folds
        if not 0 <= self.run_folds <= self.folds:
            raise ValueError(
                f"TrainSection.run_folds must be in [0, folds={self.folds}], got {self.run_folds}"
            )
        if any(not 0 <= f < self.folds for f in self.fold_ids):
            raise ValueError(f"TrainSection.fold_ids must lie in [0, {self.folds}), got {self.fold_ids}")
        check_bounds(self, ("epochs", "batch_size", "num_threads"))
        if self.lr <= 0:
            raise ValueError(f"TrainSection.lr must be > 0, got {self.lr}")


@dataclass
class EvaluatorTrainConfig:
    """``debias3d world train-evaluator`` config (``configs/shapeworld/evaluator.yaml``)."""

    model: EvaluatorModelConfig = field(
        default_factory=EvaluatorModelConfig, metadata={"help": "architecture"}
    )
    data: EvaluatorDataConfig = field(
        default_factory=EvaluatorDataConfig, metadata={"help": "training samples"}
    )
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "optimisation"})


# ---------------------------------------------------------------------------------------------- metrics
def correlations(pred: np.ndarray, target: np.ndarray, dims: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """SRCC and PLCC per dimension (``scipy.stats``); ``pred``/``target`` ``(N, K)``.

    A constant column (no variance) gives 0.0 instead of NaN.
    """
    from scipy.stats import pearsonr, spearmanr

    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(dims):
        p, t = pred[:, k], target[:, k]
        if len(p) < 3 or np.std(p) == 0 or np.std(t) == 0:
            out[name] = {"srcc": 0.0, "plcc": 0.0}
            continue
        out[name] = {"srcc": float(spearmanr(p, t).statistic), "plcc": float(pearsonr(p, t).statistic)}
    return out


def prompt_folds(prompt_index: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices into ``folds`` groups so that every prompt lies in exactly one group."""
    prompts = np.unique(prompt_index)
    rng = np.random.default_rng(seed)
    rng.shuffle(prompts)
    groups = np.array_split(prompts, folds)
    return [np.flatnonzero(np.isin(prompt_index, g)) for g in groups]


def untied_correlations(
    pred: np.ndarray, target: np.ndarray, dims: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """SRCC / PLCC per dimension on the samples *below* that dimension's top rating.

    Most ratings sit in one tie at the top (clean shapes: alignment = geometry = 1); this reports how
    well the model orders the rest, next to (not instead of) the full-set figures.
    """
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(dims):
        keep = target[:, k] < target[:, k].max() - 1e-6
        res = correlations(pred[keep, k : k + 1], target[keep, k : k + 1], (name,))[name]
        out[name] = {**res, "n": int(keep.sum())}
    return out


def prompt_groups(prompts: list[str]) -> np.ndarray:
    """Group id per prompt: prompts equal up to case, spacing and a final full stop share one."""
    keys = [" ".join(p.lower().split()).rstrip(".") for p in prompts]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([ids[k] for k in keys], np.int64)


def summarize_folds(fold_results: list[dict[str, Any]], dims: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Mean and std over folds of SRCC / PLCC per dimension."""
    summary: dict[str, dict[str, float]] = {}
    for d in dims if fold_results else ():
        for m in ("srcc", "plcc"):
            vals = [r["metrics"][d][m] for r in fold_results]
            summary.setdefault(d, {})[m] = float(np.mean(vals))
            summary[d][m + "_std"] = float(np.std(vals))
    return summary


def merge_fold_records(records: list[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Merge ``training_record.json`` files of runs that split the folds (``train.fold_ids``).

    Per-fold figures and their mean are merged. Pooled figures cannot be (the predictions are not
    kept), so each run's own pooled figures stay under ``runs``, labelled with that run's folds.
    """
    recs = [json.loads(Path(r).read_text()) for r in records]
    folds = sorted((f for r in recs for f in r["folds"]), key=lambda f: f["fold"])
    if len({f["fold"] for f in folds}) != len(folds):
        raise ValueError(f"merge_fold_records: a fold appears twice in {records}")
    dims = tuple(folds[0]["metrics"]) if folds else ()
    merged = {
        k: v
        for k, v in recs[0].items()
        if k not in ("folds", "mean_over_folds", "runs") and not k.startswith("pooled_heldout")
    }
    merged.update(
        folds=folds,
        mean_over_folds=summarize_folds(folds, dims),
        seconds=sum(r.get("seconds", 0.0) for r in recs),
        merged_from=[str(r) for r in records],
        runs=[
            {
                "record": str(path),
                "folds": [f["fold"] for f in r["folds"]],
                **{k: v for k, v in r.items() if k.startswith("pooled_heldout")},
            }
            for path, r in zip(records, recs, strict=True)
        ],
    )
    finals = [r["shipped"] for r in recs if str(r.get("shipped", "")).startswith("final")]
    if finals:  # the run that trained the final model says what ships
        merged["shipped"] = finals[-1]
    Path(out).write_text(json.dumps(merged, indent=2))
    return merged


# ---------------------------------------------------------------------------------------------- training
def _rank_hinge(pred: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Pairwise hinge: for target_i > target_j + eps require pred_i - pred_j >= margin. (B, K)."""
    dt = target[:, None, :] - target[None, :, :]  # (B, B, K)
    dp = pred[:, None, :] - pred[None, :, :]
    sign = torch.sign(dt) * (dt.abs() > 0.05)
    loss = F.relu(margin - sign * dp) * sign.abs()
    return loss.sum() / sign.abs().sum().clamp_min(1.0)


def _resize_uint8(views: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize cached ``(N, V, H, W, 3)`` uint8 renders once (antialiased), e.g. 48 → 32 px."""
    n, v = views.shape[:2]
    out = torch.empty((n, v, size, size, 3), dtype=torch.uint8)
    for s in range(0, n, chunk):
        x = views[s : s + chunk].flatten(0, 1).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = (
            y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).view(-1, v, size, size, 3)
        )
    return out


class _Tensors:
    """In-memory training tensors: uint8 views, fixed view statistics, ratings, text features.

    The view statistics (:meth:`ConvViewEncoder.view_stats`) are read once from the views at render
    size, as the model does at inference before it resizes the views for its CNN; the views are then
    resized once to the CNN's ``image_size``.
    """

    def __init__(
        self, ds: dict[str, Any], text: tuple[torch.Tensor, torch.Tensor], image_size: int | None = None
    ) -> None:
        from debias3d.models.evaluator.layers import ConvViewEncoder

        self.views = torch.from_numpy(ds["views"])  # (N, V, H, W, 3) uint8
        n, v = self.views.shape[:2]
        stats = []
        for s in range(0, n, 256):
            x = self.views[s : s + 256].flatten(0, 1).permute(0, 3, 1, 2).float().div_(255.0)
            stats.append(ConvViewEncoder.view_stats(x).view(-1, v, ConvViewEncoder.N_STATS))
        self.stats = torch.cat(stats) if stats else torch.zeros(0, v, ConvViewEncoder.N_STATS)
        if image_size is not None and self.views.shape[2] != image_size:  # None: the model crops
            self.views = _resize_uint8(self.views, image_size)
        self.ratings = torch.from_numpy(ds["ratings"]).float()  # (N, K)
        self.prompt_index = torch.from_numpy(ds["prompt_index"]).long()
        self.text, self.text_mask = text  # (P, T, Dt), (P, T)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``views, text, mask, ratings, stats`` of the samples ``idx``."""
        i = torch.as_tensor(idx, dtype=torch.long)
        views = self.views[i].permute(0, 1, 4, 2, 3).float().div_(255.0)
        p = self.prompt_index[i]
        mask = self.text_mask[p]
        t = int(mask.any(0).nonzero().max()) + 1  # trim padding common to the batch
        return views, self.text[p][:, :t], mask[:, :t], self.ratings[i], self.stats[i]


def _predict(model: Any, data: _Tensors, idx: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            views, text, mask, _, stats = data.batch(idx[s : s + batch_size])
            out.append(model(views, text, mask, stats=stats).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.dimensions)))


def _fit(
    model: Any,
    data: _Tensors,
    train_idx: np.ndarray,
    cfg: TrainSection,
    epochs: int,
    log: Any,
    tag: str,
    eval_idx: np.ndarray | None = None,
) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    total = epochs * steps_per_epoch
    warm = min(100, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / max(1, warm)
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
        ),
    )
    rng = np.random.default_rng(cfg.seed)
    bar = None
    if cfg.progress:
        from debias3d.progress import tqdm

        bar = tqdm(total=total, desc=f"evaluator {tag}", leave=False)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(train_idx)
        t0, losses = time.time(), []
        for s in range(0, len(order), cfg.batch_size):
            views, text, mask, y, stats = data.batch(order[s : s + cfg.batch_size])
            pred = model(views, text, mask, stats=stats)
            loss = F.mse_loss(pred, y) + cfg.rank_weight * _rank_hinge(pred, y, cfg.rank_margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        record: dict[str, Any] = {
            "phase": tag,
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "lr": float(sched.get_last_lr()[0]),
            "seconds": round(time.time() - t0, 2),
        }
        if eval_idx is not None and (epoch + 1 == epochs or (epoch + 1) % 4 == 0):
            pred = _predict(model, data, eval_idx)
            record["heldout"] = correlations(pred, data.ratings[eval_idx].numpy(), model.dimensions)
        log(record)
    if bar is not None:
        bar.close()


def _encode_prompts(text_encoder: Any, prompts: list[str], cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    if cache.is_file():
        d = load_file(str(cache))
        if d["text"].shape[0] == len(prompts):
            return d["text"], d["mask"].bool()
    from debias3d.models.text_encoder import pad_features

    feats: list[torch.Tensor] = []
    for s in range(0, len(prompts), 256):
        feats += text_encoder.encode_one_by_one(prompts[s : s + 256])
    text, mask = pad_features(feats)
    save_file({"text": text.contiguous(), "mask": mask.to(torch.uint8)}, str(cache))
    return text, mask


def train_evaluator(cfg: EvaluatorTrainConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Cross-validate and train the embedded evaluator; returns the training record.

    Writes to ``out_dir``: ``dataset/`` (cached renders + ratings + text features),
    ``train_log.jsonl``, ``model.safetensors`` + ``config.json`` (the final model),
    ``training_record.json`` (per-fold and mean SRCC / PLCC per dimension).
    """
    from debias3d.config import dump_config
    from debias3d.models.evaluator.model import ShapeWorldHyperScore
    from debias3d.registry import build

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "train_config.yaml")
    torch.set_num_threads(cfg.train.num_threads)
    t_start = time.time()

    render_size = cfg.train.render_size or cfg.model.image_size
    # inference renders at the size the model was trained on
    cfg.model = dataclasses.replace(cfg.model, render_size=render_size)
    from debias3d.models.evaluator.views import evaluator_rig

    rig = evaluator_rig(cfg.model.view_frame, cfg.model.scene_radius)
    ds = load_or_build_dataset(cfg.data, render_size, out / "dataset", rig=rig)
    text_encoder = build("text_encoder", cfg.model.text_encoder)
    prompts = [str(p) for p in ds["prompts"]]
    text = _encode_prompts(text_encoder, prompts, out / "dataset" / "text_features.safetensors")
    # under the "scene" frame the model crops each view at render size itself, as at inference
    data = _Tensors(ds, text, None if cfg.model.view_frame == "scene" else cfg.model.image_size)
    n = len(data.ratings)
    logger.info("evaluator dataset: %d samples, %d prompts", n, len(prompts))

    log_path = out / "train_log.jsonl"
    log_file = log_path.open("a", encoding="utf-8")

    def log(rec: dict[str, Any]) -> None:
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()
        logger.info("%s", rec)

    dims = cfg.model.dimensions
    # folds by *normalised* prompt: "A chair" and "a chair" are one prompt (no leak across folds)
    group = prompt_groups(prompts)
    folds = prompt_folds(group[ds["prompt_index"]], cfg.train.folds, cfg.train.seed)
    fold_results = []
    all_pred, all_true, all_idx = [], [], []
    for f in cfg.train.fold_ids or range(cfg.train.run_folds):
        test_idx = folds[f]
        train_idx = np.setdiff1d(np.arange(n), test_idx)
        torch.manual_seed(cfg.train.seed + f)
        model = ShapeWorldHyperScore(cfg.model, text_encoder=text_encoder)
        _fit(model, data, train_idx, cfg.train, cfg.train.epochs, log, f"fold{f}", eval_idx=test_idx)
        pred = _predict(model, data, test_idx)
        true = data.ratings[test_idx].numpy()
        res = correlations(pred, true, dims)
        fold_results.append({"fold": f, "n_test": len(test_idx), "metrics": res})
        if f == 0 and cfg.train.final_epochs == 0:
            model.save_pretrained(out, metadata={"training": "fold 0 model; see training_record.json"})
        all_pred.append(pred)
        all_true.append(true)
        all_idx.append(test_idx)
        log({"phase": f"fold{f}", "final": res})

    summary = summarize_folds(fold_results, dims)
    pooled, untied, by_source = {}, {}, {}
    if all_pred:  # every held-out sample of this run's folds, once
        pred_all, true_all = np.concatenate(all_pred), np.concatenate(all_true)
        pooled = correlations(pred_all, true_all, dims)
        untied = untied_correlations(pred_all, true_all, dims)
        if "source" in ds:
            src = np.asarray(ds["source"]).astype(str)[np.concatenate(all_idx)]
            for name in sorted(set(src)):
                keep = src == name
                by_source[name] = {"n": int(keep.sum()), **correlations(pred_all[keep], true_all[keep], dims)}

    record: dict[str, Any] = {
        "protocol": f"{cfg.train.folds}-fold split by prompt (MATE-3D); SRCC/PLCC on held-out prompts",
        "n_samples": n,
        "n_prompts": len(prompts),
        "folds": fold_results,
        "mean_over_folds": summary,
        "pooled_heldout": pooled,
        "pooled_heldout_below_max": untied,
        "pooled_heldout_by_source": by_source,
        "overall_formula": "overall = 0.5*alignment + 0.25*geometry + 0.25*texture",
        "shipped": "final model on all prompts" if cfg.train.final_epochs > 0 else "fold 0 model",
    }
    if cfg.train.final_epochs > 0:
        torch.manual_seed(cfg.train.seed)
        model = ShapeWorldHyperScore(cfg.model, text_encoder=text_encoder)
        _fit(model, data, np.arange(n), cfg.train, cfg.train.final_epochs, log, "final")
        model.save_pretrained(out, metadata={"training": "see training_record.json"})
    record["seconds"] = round(time.time() - t_start, 1)
    record["threads"] = cfg.train.num_threads
    (out / "training_record.json").write_text(json.dumps(record, indent=2))
    log({"phase": "done", "seconds": record["seconds"], "mean_over_folds": summary})
    log_file.close()
    return record


def train_evaluator_command(
    config_path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...], out: str | os.PathLike
) -> dict[str, Any]:
    """Entry point for ``debias3d world train-evaluator --config C --out DIR key=value ...``."""
    from debias3d.config import load_config

    cfg = load_config(EvaluatorTrainConfig, config_path, overrides)
    return train_evaluator(cfg, out)
