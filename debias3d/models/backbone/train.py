"""Train both mini-TRELLIS flow stages on a ShapeWorld corpus with ``accelerate``.

Each stage minimises the rectified-flow velocity loss (see :mod:`.sampler`)::

    L = E_{x0, ε, t ~ logit-N, c} ‖ v_θ(x_t, 1000·t, c) − ((1 − σ_min)·ε − x0) ‖²

with the condition c dropped to the encoding of ``""`` with probability ``p_uncond``. Stage 1's x0
is the occupancy grid in ``{−1, 1}``; stage 2's x0 is the colour of each active voxel in
``[−1, 1]`` (a random subset of at most ``stage2_max_voxels`` voxels per shape, masked loss).

The text encoder is frozen, so each unique prompt is encoded once before training. Batches are
drawn from a generator seeded by ``(seed, stage, step)``: a run resumed from a checkpoint sees the
same batches as an uninterrupted one.

Outputs in ``out_dir``: ``train_log.jsonl``, ``checkpoints/<stage>/step_<n>/`` (``save_state``),
``<stage>.safetensors`` after each stage, and ``final/`` (config.json, model.safetensors,
training_record.json) — the folder :meth:`MiniTrellisGenerator.from_pretrained` loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debias3d.config import check_bounds
from debias3d.data.shapeworld.corpus import CorpusConfig, corpus_word_counts

from .flow import FlowModelConfig, SLatFlowModel, SparseStructureFlowModel
from .generator import CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME, MiniTrellisConfig, build_text_encoder
from .sampler import SIGMA_MIN, add_noise, drop_condition, sample_logit_normal_t, velocity_target

logger = logging.getLogger(__name__)

__all__ = ["BackboneTrainConfig", "train_backbone", "export_pretrained", "TextFeatureTable", "WeightEMA"]

STAGES = ("stage1", "stage2")


@dataclass
class BackboneTrainConfig:
    """Training config of the embedded generator (``configs/shapeworld/backbone.yaml``)."""

    seed: int = field(default=0, metadata={"help": "Seed of init, batches, noise and t."})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={"help": "Stages to train."})
    text_encoder: str = field(default="minilm", metadata={"help": "Text encoder backend (minilm or clip)."})
    text_encoder_path: str | None = field(default=None, metadata={"help": "Local folder of the encoder."})
    resolution: int = field(default=16, metadata={"help": "Voxel grid resolution R."})
    patch_size: int = field(default=4, metadata={"help": "Stage-1 patch size p ((R/p)^3 tokens)."})
    stage1_channels: int = field(default=96, metadata={"help": "Stage-1 transformer width."})
    stage1_blocks: int = field(default=4, metadata={"help": "Stage-1 transformer depth."})
    stage1_heads: int = field(default=4, metadata={"help": "Stage-1 attention heads."})
    stage2_channels: int = field(default=64, metadata={"help": "Stage-2 transformer width."})
    stage2_blocks: int = field(default=2, metadata={"help": "Stage-2 transformer depth."})
    stage2_heads: int = field(default=4, metadata={"help": "Stage-2 attention heads."})
    stage1_steps: int = field(default=1500, metadata={"help": "Optimiser steps of stage 1."})
    stage2_steps: int = field(default=1000, metadata={"help": "Optimiser steps of stage 2."})
    batch_size: int = field(default=24, metadata={"help": "Stage-1 batch size (all processes)."})
    stage2_batch_size: int = field(default=12, metadata={"help": "Stage-2 batch size (all processes)."})
    stage2_max_voxels: int = field(
        default=128, metadata={"help": "Active voxels sampled per shape (stage 2)."}
    )
    lr: float = field(default=6e-4, metadata={"help": "AdamW peak learning rate."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Final LR as a share of lr (cosine decay)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear LR warmup steps."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max gradient norm (0 = off)."})
    ema_rate: float = field(
        default=0.0,
        metadata={"help": "Decay of an EMA of the weights (TRELLIS ema_rate); the EMA is exported. 0 = off."},
    )
    p_uncond: float = field(default=0.1, metadata={"help": "Probability of dropping the text (CFG)."})
    t_mean: float = field(default=1.0, metadata={"help": "Mean of the logit-normal t distribution."})
    t_std: float = field(default=1.0, metadata={"help": "Std of the logit-normal t distribution."})
    sigma_min: float = field(default=SIGMA_MIN, metadata={"help": "σ_min of the rectified flow."})
    log_every: int = field(default=10, metadata={"help": "Steps between train_log.jsonl rows."})
    checkpoint_every: int = field(default=250, metadata={"help": "Steps between save_state checkpoints."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Checkpoints kept per stage."})
    resume: bool = field(default=True, metadata={"help": "Resume from the latest checkpoint in out_dir."})
    mixed_precision: str = field(
        default="no", metadata={"help": "accelerate mixed precision: no, fp16, bf16."}
    )
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)."})
    export_dtype: str = field(default="float16", metadata={"help": "dtype of final/model.safetensors."})
    init_from: str | None = field(
        default=None, metadata={"help": "Run folder whose <stage>.safetensors warm-start the stages."}
    )
    corpus: CorpusConfig = field(
        default_factory=CorpusConfig,
        metadata={"help": "the corpus to write when no corpus folder is given."},
    )

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"stages: expected a non-empty subset of {list(STAGES)}, got {self.stages}")
        check_bounds(self, ("resolution", "patch_size", "stage1_channels", "stage1_blocks", "stage1_heads",
                            "stage2_channels", "stage2_blocks", "stage2_heads", "batch_size", "stage2_batch_size",
                            "stage2_max_voxels", "log_every", "checkpoint_every", "keep_checkpoints"))  # fmt: skip
        check_bounds(self, ("stage1_steps", "stage2_steps", "warmup_steps", "num_threads"), lower=0)
        if self.resolution % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} must divide resolution {self.resolution}")
        for name, ch, h in (("stage1_heads", self.stage1_channels, self.stage1_heads),
                            ("stage2_heads", self.stage2_channels, self.stage2_heads)):  # fmt: skip
            if ch % h:
                raise ValueError(f"{name}: {h} heads must divide the width {ch}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond: must be in [0, 1), got {self.p_uncond}")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"lr / min_lr_ratio: need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}"
            )
        if self.t_std <= 0 or not 0 < self.sigma_min < 1:
            raise ValueError(
                f"t_std / sigma_min: need t_std > 0 and 0 < sigma_min < 1 (got {self.t_std}, {self.sigma_min})"
            )
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate: must be in [0, 1), got {self.ema_rate}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip / weight_decay: must be >= 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision: expected no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.export_dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(
                f"export_dtype: expected float16, float32 or bfloat16, got {self.export_dtype!r}"
            )

    def model_config(self, cond_channels: int) -> MiniTrellisConfig:
        """The :class:`MiniTrellisConfig` this training config builds."""
        r = self.resolution
        s1 = FlowModelConfig(r, 1, 1, self.stage1_channels, cond_channels, self.stage1_blocks, self.stage1_heads,
                             patch_size=self.patch_size)  # fmt: skip
        s2 = FlowModelConfig(
            r, 3, 3, self.stage2_channels, cond_channels, self.stage2_blocks, self.stage2_heads
        )
        return MiniTrellisConfig(
            stage1=s1,
            stage2=s2,
            text_encoder=self.text_encoder,
            text_encoder_path=self.text_encoder_path,
            sigma_min=self.sigma_min,
        )


# ------------------------------------------------------------------------------------- data
class TextFeatureTable:
    """Precomputed frozen-encoder features of every unique prompt: ``(U, L_max, D)`` + lengths."""

    def __init__(self, encoder: nn.Module, prompts: list[str], chunk: int = 256):
        self.unique = list(dict.fromkeys(prompts))
        index = {p: i for i, p in enumerate(self.unique)}
        self.prompt_index = torch.tensor([index[p] for p in prompts], dtype=torch.long)
        feats: list[Tensor] = []
        t0 = time.time()
        for s in range(0, len(self.unique), chunk):
            feats += encoder.encode_one_by_one(self.unique[s : s + chunk])
            encoder._cache.clear()  # the table is the cache
        self.lengths = torch.tensor([f.shape[0] for f in feats])
        from debias3d.models.text_encoder import pad_features

        self.features, self.mask = pad_features(feats)
        self.null, self.null_mask = encoder.null_condition()
        logger.info("encoded %d unique prompts in %.1fs -> %s", len(self.unique), time.time() - t0,
                    tuple(self.features.shape))  # fmt: skip

    def batch(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Condition of corpus rows ``(B,)`` → ``(B, L, D)``, ``(B, L)`` trimmed to the longest."""
        u = self.prompt_index[rows]
        length = int(self.lengths[u].max())
        return self.features[u, :length], self.mask[u, :length]


def load_corpus(corpus: Any) -> dict[str, Any]:
    """A HF dataset (or its ``save_to_disk`` folder) → prompts, occupancy ``(N, R, R, R)`` bool,
    colours ``(N, R, R, R, 3)`` uint8."""
    from datasets import Dataset, load_from_disk

    ds = corpus if isinstance(corpus, Dataset) else load_from_disk(str(corpus))
    ds = ds.with_format("numpy", columns=["occupancy", "colors"])
    occ = np.asarray(ds["occupancy"]).astype(bool)
    r = round(occ[0].size ** (1 / 3))
    occ = occ.reshape(-1, r, r, r)  # the corpus stores flat R^3 rows in [x, y, z] C order
    col = np.asarray(ds["colors"]).astype(np.uint8).reshape(-1, r, r, r, 3)
    prompts = list(ds.with_format(None)["prompt"])
    return {"prompts": prompts, "occupancy": torch.from_numpy(occ), "colors": torch.from_numpy(col)}


def _stage_generator(seed: int, stage: str, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(
        ((seed * 1_000_003 + STAGES.index(stage)) * 10_000_019 + step) * 97 + rank
    )


def _stage2_batch(
    occ: Tensor, colors: Tensor, max_voxels: int, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random active-voxel subsets → ``x0 (B, N, 3)`` in [-1, 1], ``coords (B, N, 3)``, ``mask (B, N)``."""
    coords_l, x0_l = [], []
    for o, c in zip(occ, colors, strict=True):
        idx = torch.nonzero(o)
        if idx.shape[0] > max_voxels:
            idx = idx[torch.randperm(idx.shape[0], generator=g)[:max_voxels]]
        coords_l.append(idx)
        x0_l.append(c[idx[:, 0], idx[:, 1], idx[:, 2]].float() / 127.5 - 1.0)
    n = max(1, max(int(x.shape[0]) for x in coords_l))
    b = len(coords_l)
    x0 = torch.zeros((b, n, 3))
    coords = torch.zeros((b, n, 3), dtype=torch.long)
    mask = torch.zeros((b, n), dtype=torch.bool)
    for i, (cc, xx) in enumerate(zip(coords_l, x0_l, strict=True)):
        k = cc.shape[0]
        coords[i, :k], x0[i, :k], mask[i, :k] = cc, xx, True
    return x0, coords, mask


def stage_loss(
    stage: str,
    model: nn.Module,
    rows: Tensor,
    data: dict[str, Any],
    text: TextFeatureTable,
    cfg: BackboneTrainConfig,
    g: torch.Generator,
    device: torch.device,
) -> Tensor:
    """Rectified-flow velocity MSE of one batch (rows of the corpus)."""
    b = rows.shape[0]
    cond, cond_mask = text.batch(rows)
    drop = torch.rand(b, generator=g) < cfg.p_uncond
    cond, cond_mask = drop_condition(cond, cond_mask, text.null, text.null_mask, drop)
    t = sample_logit_normal_t(b, cfg.t_mean, cfg.t_std, generator=g)
    if stage == "stage1":
        x0 = data["occupancy"][rows].float()[:, None] * 2 - 1  # (B, 1, R, R, R)
        eps = torch.randn(x0.shape, generator=g)
        x_t = add_noise(x0, t, eps, cfg.sigma_min)
        x_t, t, cond, cond_mask = (x.to(device) for x in (x_t, t, cond, cond_mask))
        pred = model(x_t, t * 1000, cond, cond_mask)
        return F.mse_loss(pred, velocity_target(x0, eps, cfg.sigma_min).to(device))
    x0, coords, mask = _stage2_batch(data["occupancy"][rows], data["colors"][rows], cfg.stage2_max_voxels, g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = add_noise(x0, t, eps, cfg.sigma_min)
    target = velocity_target(x0, eps, cfg.sigma_min)
    x_t, t, cond, cond_mask, coords, mask, target = (
        x.to(device) for x in (x_t, t, cond, cond_mask, coords, mask, target)
    )
    pred = model(x_t, t * 1000, cond, cond_mask, coords=coords, mask=mask)
    m = mask[..., None].float()
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


# --------------------------------------------------------------------------------- training
def _lr_lambda(cfg: BackboneTrainConfig, total: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    return f


class WeightEMA:
    """Exponential moving average of a model's parameters (TRELLIS ``ema_rate``).

    The decay warms up as ``min(rate, (1 + n) / (10 + n))`` over the ``n`` updates so far, so a short
    run is not dominated by its random initialisation. Buffers are copied, not averaged.
    """

    FILE = "ema.safetensors"

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.named_parameters()}

    def decay(self) -> float:
        return min(self.rate, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        torch._foreach_lerp_(
            [self.shadow[k] for k, _ in named], [v.detach().float() for _, v in named], 1.0 - self.decay()
        )
        self.updates += 1

    def state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (a model's CPU state dict) with the averaged parameters in place of the raw ones."""
        return {**state, **{k: v.cpu().contiguous() for k, v in self.shadow.items()}}

    def save(self, d: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(d / self.FILE),
                  metadata={"updates": str(self.updates), "rate": str(self.rate)})  # fmt: skip

    def load(self, d: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(d / self.FILE), "pt") as f:
            self.updates = int(f.metadata()["updates"])
            for k in f.keys():
                self.shadow[k] = f.get_tensor(k).float()


def _latest_checkpoint(d: Path) -> tuple[Path, int] | None:
    steps = sorted((int(p.name.split("_")[1]), p) for p in d.glob("step_*") if (p / "done").is_file())
    return (steps[-1][1], steps[-1][0]) if steps else None


def _train_stage(
    stage: str,
    cfg: BackboneTrainConfig,
    mcfg: MiniTrellisConfig,
    data: dict[str, Any],
    text: TextFeatureTable,
    out_dir: Path,
) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from debias3d.progress import tqdm

    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed + STAGES.index(stage))
    model = SparseStructureFlowModel(mcfg.stage1) if stage == "stage1" else SLatFlowModel(mcfg.stage2)
    if cfg.init_from is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(cfg.init_from) / f"{stage}.safetensors")))
        logger.info("%s: initialised from %s", stage, cfg.init_from)
    total = cfg.stage1_steps if stage == "stage1" else cfg.stage2_steps
    batch = cfg.batch_size if stage == "stage1" else cfg.stage2_batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    model, opt, sched = acc.prepare(model, opt, sched)

    ckpt_root = out_dir / "checkpoints" / stage
    start, resumed = 0, None
    if cfg.resume and (found := _latest_checkpoint(ckpt_root)) is not None:
        resumed, start = found
        acc.load_state(str(resumed))
        logger.info("%s: resumed from %s (step %d)", stage, resumed, start)
    # The average starts from the (resumed) weights, unless the checkpoint carries one.
    ema_w = WeightEMA(acc.unwrap_model(model), cfg.ema_rate) if cfg.ema_rate > 0 else None
    if ema_w is not None and resumed is not None and (resumed / WeightEMA.FILE).is_file():
        ema_w.load(resumed)

    n = data["occupancy"].shape[0]
    per_proc = max(1, batch // acc.num_processes)
    log_path = out_dir / "train_log.jsonl"
    t0 = time.time()
    ema, last = None, float("nan")
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=stage, disable=not acc.is_main_process)
    for step in bar:
        g = _stage_generator(cfg.seed, stage, step)
        rows = torch.randint(n, (batch,), generator=g)[acc.process_index :: acc.num_processes][:per_proc]
        g_proc = _stage_generator(cfg.seed, stage, step, rank=1 + acc.process_index)
        with acc.accumulate(model):
            loss = stage_loss(stage, model, rows, data, text, cfg, g_proc, acc.device)
            acc.backward(loss)
            if acc.sync_gradients and cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        if ema_w is not None and acc.sync_gradients:
            ema_w.update(acc.unwrap_model(model))
        last = float(loss.detach())
        ema = last if ema is None else 0.98 * ema + 0.02 * last
        bar.set_postfix(loss=f"{ema:.4f}")
        if acc.is_main_process and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            row = {"stage": stage, "step": step + 1, "loss": last, "loss_ema": ema,
                   "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 2)}  # fmt: skip
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            d = ckpt_root / f"step_{step + 1}"
            acc.save_state(str(d))
            acc.wait_for_everyone()
            if acc.is_main_process:
                if ema_w is not None:
                    ema_w.save(d)
                (d / "done").write_text(str(step + 1))
                _prune(ckpt_root, cfg.keep_checkpoints)
    bar.close()
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(model)
    if acc.is_main_process:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().float().contiguous() for k, v in unwrapped.state_dict().items()}
        if ema_w is not None:  # the EMA is the model; the raw weights are kept beside it
            save_file(state, str(out_dir / f"{stage}.raw.safetensors"))
            state = ema_w.state_dict(state)
        save_file(state, str(out_dir / f"{stage}.safetensors"))
    acc.free_memory()
    return {"steps": total, "resumed_from": start, "final_loss_ema": ema, "final_loss": last,
            "weights": "ema" if ema_w is not None else "raw", "seconds": round(time.time() - t0, 1)}  # fmt: skip


def _prune(root: Path, keep: int) -> None:
    import shutil

    done = sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*") if (p / "done").is_file())
    for _, p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def export_pretrained(out_dir: str | os.PathLike, dest: str | os.PathLike, dtype: str = "float16") -> Path:
    """Combine ``stage1/2.safetensors`` + config + record of a run into a ``from_pretrained`` folder."""
    from safetensors.torch import load_file, save_file

    out_dir, dest = Path(out_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    state: dict[str, Tensor] = {}
    for stage in STAGES:
        f = out_dir / f"{stage}.safetensors"
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing: train {stage} first")
        for k, v in load_file(str(f)).items():
            state[f"{stage}.{k}"] = v.to(getattr(torch, dtype)).contiguous()
    save_file(state, str(dest / WEIGHTS_NAME), metadata={"format": "pt", "model": "mini-trellis"})
    (dest / CONFIG_NAME).write_text((out_dir / CONFIG_NAME).read_text())
    if (out_dir / RECORD_NAME).is_file():
        (dest / RECORD_NAME).write_text((out_dir / RECORD_NAME).read_text())
    return dest


def train_backbone(
    cfg: BackboneTrainConfig, corpus_dir_or_dataset: Any | None, out_dir: str | os.PathLike
) -> Path:
    """Train the stages in ``cfg.stages`` and export ``out_dir/final`` when both stages exist.

    Args:
        cfg: the training config.
        corpus_dir_or_dataset: a ``save_to_disk`` folder, a ``datasets.Dataset``, or ``None`` to
            write the corpus from ``cfg.corpus`` (a ``CorpusConfig``) into ``out_dir/corpus``.
        out_dir: run folder (resumable).

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    corpus_info: dict[str, Any] = {
        "source": str(corpus_dir_or_dataset) if corpus_dir_or_dataset is not None else None
    }
    if corpus_dir_or_dataset is None:
        from debias3d.data.shapeworld.corpus import write_corpus

        ccfg = cfg.corpus
        corpus_dir_or_dataset = out / "corpus"
        if not (Path(corpus_dir_or_dataset) / "dataset_info.json").is_file():
            write_corpus(ccfg, corpus_dir_or_dataset)
        corpus_info = {"source": str(corpus_dir_or_dataset), "config": asdict(ccfg)}
    data = load_corpus(corpus_dir_or_dataset)
    cc = Path(str(corpus_dir_or_dataset)) / "corpus_config.json"
    if "config" not in corpus_info and isinstance(corpus_dir_or_dataset, (str, os.PathLike)) and cc.is_file():
        corpus_info["config"] = json.loads(cc.read_text())
    corpus_info["n"] = len(data["prompts"])
    corpus_info["word_counts"] = corpus_word_counts(data["prompts"])
    encoder = build_text_encoder(cfg.text_encoder, cfg.text_encoder_path)
    text = TextFeatureTable(encoder, data["prompts"])
    mcfg = cfg.model_config(cond_channels=int(text.features.shape[-1]))
    (out / CONFIG_NAME).write_text(json.dumps(mcfg.to_dict(), indent=2))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    record_path = out / RECORD_NAME
    for stage in cfg.stages:
        result = _train_stage(stage, cfg, mcfg, data, text, out)
        # Re-read: the two stages may train in two processes sharing out_dir.
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        record.update({"seed": cfg.seed, "corpus": corpus_info, "train_config": asdict(cfg)})
        record.setdefault("stages", {})[stage] = result
        record_path.write_text(json.dumps(record, indent=2, default=str))
    if all((out / f"{s}.safetensors").is_file() for s in STAGES):
        export_pretrained(out, out / "final", cfg.export_dtype)
        logger.info("exported %s", out / "final")
    return out
