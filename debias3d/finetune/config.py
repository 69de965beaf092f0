"""``FinetuneConfig``: the typed config of ``debias3d finetune`` (also ``accelerate launch -m debias3d finetune``).

Loaded with :func:`debias3d.config.load_config` from ``configs/shapeworld/finetune.yaml`` or
``configs/trellis/finetune.yaml`` plus ``key.sub=value`` overrides. The field names of
:class:`TrainSettings` follow diffusers' ``train_text_to_image_lora.py`` arguments
(``train_batch_size``, ``gradient_accumulation_steps``, ``lr_scheduler``, ``lr_warmup_steps``,
``checkpointing_steps``, ``checkpoints_total_limit``, ``resume_from_checkpoint``, ...), so a reader
who knows that script knows these keys.

>>> cfg = FinetuneConfig(lora=LoraSettings(rank=4))
>>> cfg.lora.alpha, cfg.train.p_uncond
(16.0, 0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from debias3d.config import check_bounds
from debias3d.models.settings import GeneratorSettings

__all__ = [
    "DEFAULT_TARGETS",
    "DpoSettings",
    "FinetuneConfig",
    "LoraSettings",
    "DataSettings",
    "TrainSettings",
]

#: TRELLIS attention linears: self-attention ``to_qkv``, cross-attention ``to_q`` / ``to_kv``, and
#: ``to_out`` of both. The same names exist in mini TRELLIS and in real TRELLIS (where the sparse
#: blocks' ``SparseLinear`` layers are NOT among them: stock peft LoRA fails on those).
DEFAULT_TARGETS: tuple[str, ...] = ("to_qkv", "to_q", "to_kv", "to_out")

_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
_PRECISIONS = ("no", "fp16", "bf16")


MAX_LORA_RANK = 4096  # no adapted layer of either generator is wider


@dataclass
class LoraSettings:
    """peft ``LoraConfig`` values for the flow transformers."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
    target_modules: tuple[str, ...] = field(
        default=DEFAULT_TARGETS, metadata={"help": "names of the nn.Linear layers that get LoRA"}
    )
    stages: tuple[str, ...] = field(
        default=("stage1", "stage2"),
        metadata={"help": "flow models to adapt (keys of generator.flow_models)"},
    )
    init_lora_weights: str = field(
        default="gaussian", metadata={"help": "peft init: 'gaussian' (diffusers' choice) or 'default'"}
    )

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        self.stages = tuple(self.stages)
        if not 1 <= self.rank <= MAX_LORA_RANK:
            raise ValueError(f"LoraSettings.rank must be in [1, {MAX_LORA_RANK}], got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSettings.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or any(not t for t in self.target_modules):
            raise ValueError("LoraSettings.target_modules must list at least one module name")
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"LoraSettings.stages must be non-empty and unique, got {list(self.stages)}")
        if self.init_lora_weights not in ("gaussian", "default"):
            raise ValueError(
                f"LoraSettings.init_lora_weights must be 'gaussian' or 'default', got {self.init_lora_weights!r}"
            )


@dataclass
class DataSettings:
    """Training data: augmented pairs + a replay share of the original corpus."""

    pairs: str = field(
        default="aug/pairs", metadata={"help": "augmented pairs dataset (save_to_disk folder)"}
    )
    corpus: str | None = field(
        default=None, metadata={"help": "original ShapeWorld corpus folder for replay (null = no replay)"}
    )
    replay_share: float = field(
        default=0.25, metadata={"help": "fraction of the training mix drawn from the corpus, in [0, 1)"}
    )
    winners_only: bool = field(
        default=True, metadata={"help": "train only on pairs whose winner flag is set"}
    )
    check_meshes: bool = field(
        default=True, metadata={"help": "skip (and count) pairs whose mesh file is missing or unreadable"}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "use at most this many pairs (null = all)"})
    latents: str | None = field(
        default=None,
        metadata={"help": "TRELLIS only: folder of ss_latents/ + latents/ .npz files (see docs/finetune.md)"},
    )
    metadata: str | None = field(
        default=None,
        metadata={"help": "TRELLIS only: metadata CSV (sha256, captions); null = <latents>/metadata.csv"},
    )
    ss_latents_model: str | None = field(
        default=None,
        metadata={"help": "TRELLIS only: encoder folder under ss_latents/ (null = the only one there)"},
    )
    latents_model: str | None = field(
        default=None,
        metadata={"help": "TRELLIS only: encoder folder under latents/ (null = the only one there)"},
    )
    max_num_voxels: int = field(
        default=32768,
        metadata={"help": "TRELLIS only: skip SLat latents with more active voxels (TRELLIS's filter)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the replay draw"})

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("DataSettings.pairs must name a dataset folder")
        if not 0.0 <= self.replay_share < 1.0:
            raise ValueError(f"DataSettings.replay_share must be in [0, 1), got {self.replay_share}")
        if self.max_num_voxels < 1:
            raise ValueError(f"DataSettings.max_num_voxels must be >= 1, got {self.max_num_voxels}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"DataSettings.max_pairs must be >= 1 or null, got {self.max_pairs}")
        if self.max_num_voxels > 10_000_000:
            raise ValueError(f"DataSettings.max_num_voxels must be <= 10000000, got {self.max_num_voxels}")


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping (names as in diffusers' LoRA script)."""

    seed: int = field(default=0, metadata={"help": "seed of init, data order, noise, t and dropout"})
    max_train_steps: int = field(default=500, metadata={"help": "optimizer steps in total"})
    train_batch_size: int = field(default=16, metadata={"help": "samples per process per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    scale_lr: bool = field(
        default=False, metadata={"help": "multiply lr by accumulation × batch size × processes (diffusers)"}
    )
    lr_scheduler: str = field(default="cosine", metadata={"help": "one of " + ", ".join(_SCHEDULERS)})
    lr_warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "no / fp16 / bf16; null = the accelerate config's (bf16 is dropped on CPU)"},
    )
    p_uncond: float = field(default=0.1, metadata={"help": "CFG condition dropout probability"})
    logit_normal_mean: float = field(default=1.0, metadata={"help": "t = sigmoid(N(mean, std)): mean"})
    logit_normal_std: float = field(default=1.0, metadata={"help": "t = sigmoid(N(mean, std)): std"})
    stage2_max_voxels: int = field(
        default=192,
        metadata={"help": "active voxels sampled per shape for the stage-2 loss (as in pre-training)"},
    )
    stage_weights: dict[str, float] = field(
        default_factory=lambda: {"stage1": 1.0, "stage2": 1.0},
        metadata={"help": "loss weight per stage (the loss is their weighted sum)"},
    )
    full_finetune: bool = field(
        default=False, metadata={"help": "train every flow parameter instead of LoRA (baseline/benchmark)"}
    )
    checkpointing_steps: int = field(default=100, metadata={"help": "save_state every N optimizer steps"})
    checkpoints_total_limit: int | None = field(
        default=2, metadata={"help": "keep at most this many checkpoint-N folders (null = all)"}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest', a checkpoint-N folder, or null"}
    )
    logging_steps: int = field(default=1, metadata={"help": "write train_log.jsonl every N optimizer steps"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads per process (CPU)"}
    )

    def __post_init__(self) -> None:
        check_bounds(
            self,
            ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
             "stage2_max_voxels", "logging_steps"),
            {"max_train_steps": 10_000_000, "train_batch_size": 65_536, "gradient_accumulation_steps": 65_536,
             "stage2_max_voxels": 10_000_000, "lr_warmup_steps": 10_000_000, "dataloader_num_workers": 256,
             "num_threads": 1024, "checkpoints_total_limit": 100_000},
        )  # fmt: skip
        if self.learning_rate <= 0:
            raise ValueError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_scheduler not in _SCHEDULERS:
            raise ValueError(
                f"TrainSettings.lr_scheduler must be one of {_SCHEDULERS}, got {self.lr_scheduler!r}"
            )
        if self.lr_warmup_steps < 0:
            raise ValueError(f"TrainSettings.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.mixed_precision is not None and self.mixed_precision not in _PRECISIONS:
            raise ValueError(
                f"TrainSettings.mixed_precision must be one of {_PRECISIONS} or null, got {self.mixed_precision!r}"
            )
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"TrainSettings.p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.logit_normal_std <= 0:
            raise ValueError(f"TrainSettings.logit_normal_std must be > 0, got {self.logit_normal_std}")
        if self.max_grad_norm < 0:
            raise ValueError(f"TrainSettings.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(
                f"TrainSettings.checkpoints_total_limit must be >= 1 or null, got {self.checkpoints_total_limit}"
            )
        if any(w < 0 for w in self.stage_weights.values()) or not any(self.stage_weights.values()):
            raise ValueError(
                f"TrainSettings.stage_weights must be >= 0 and not all zero, got {self.stage_weights}"
            )
        if self.dataloader_num_workers < 0:
            raise ValueError(
                f"TrainSettings.dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}"
            )


OBJECTIVE_NAMES: tuple[str, ...] = ("sft", "dpo")


@dataclass
class DpoSettings:
    """Preference fine-tuning (``objective: dpo``, Diffusion-DPO on the flow-matching loss)."""

    beta: float = field(
        default=500.0,
        metadata={"help": "β of −log σ(−β/2·Δ): how far the policy may move from the reference"},
    )

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"DpoSettings.beta must be > 0, got {self.beta}")


@dataclass
class FinetuneConfig(GeneratorSettings):
    """Everything ``debias3d finetune`` needs.

    ``generator`` picks the backend through the registry (``mini-trellis`` or ``trellis``);
    ``generator_weights`` is the mini-TRELLIS weights folder (null = the shipped weights) or the
    TRELLIS model id / local folder.
    """

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"generator_path": "generator_weights"}

    objective: str = field(
        default="sft",
        metadata={"help": "sft (supervised, winning pairs) or dpo (preference, winner vs loser pairs)"},
    )
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    dpo: DpoSettings = field(default_factory=DpoSettings)

    def __post_init__(self) -> None:
        if self.generator not in ("mini-trellis", "trellis"):
            raise ValueError(
                f"FinetuneConfig.generator must be 'mini-trellis' or 'trellis', got {self.generator!r}"
            )
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(
                f"FinetuneConfig.objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {self.objective!r}"
            )
        if self.objective == "dpo" and (self.generator == "trellis" or self.train.full_finetune):
            raise ValueError(
                "FinetuneConfig.objective 'dpo' needs generator 'mini-trellis' with a LoRA adapter "
                "(the reference is the base with the adapter disabled; no full_finetune)"
            )
        # Weights of stages that are not trained are ignored; a name no stage has is a typo.
        unknown = set(self.train.stage_weights) - {"stage1", "stage2"} - set(self.lora.stages)
        if unknown:
            raise ValueError(
                f"FinetuneConfig.train.stage_weights names unknown stages {sorted(unknown)}; "
                f"expected names from {sorted({'stage1', 'stage2'} | set(self.lora.stages))}"
            )
        if self.generator == "trellis" and self.data.latents is None:
            raise ValueError(
                "FinetuneConfig.data.latents must name the TRELLIS latents folder for generator 'trellis' "
                "(see docs/finetune.md)"
            )
