"""The generator contract: one base class for every text-to-3D backend, one builder for all of them.

A backend (the embedded mini TRELLIS, real TRELLIS) subclasses :class:`GeneratorBase`, the shape of
TRELLIS's ``Pipeline`` (``from_pretrained``) and peft's ``BaseTuner`` (adapters on named modules):

- ``from_pretrained(weights, device=..., **options)`` builds it from a weights folder or hub id;
- ``generate(prompts, seeds, num_samples, steps, cfg)`` returns ``P·D`` assets, prompt-major;
- ``flow_models`` names the flow transformers that LoRA fine-tunes (``{"stage1": ..., "stage2": ...}``);
- ``load_adapter(path)`` applies a peft LoRA adapter written by ``debias3d finetune``;
- ``merge_adapter(out_dir)`` writes the adapted weights as a new ``from_pretrained`` folder.

Callers never probe a backend for methods: :func:`build_generator` turns one
:class:`GeneratorSpec` (name, weights, device, options) into a generator through the registry::

    gen = build_generator(GeneratorSpec("mini-trellis"), adapter="runs/ft")
    assets = gen.generate(["a red vase"], seeds=[0], num_samples=2)
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from debias3d.data.assets import Asset

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_INFO_NAME",
    "MERGE_RECORD_NAME",
    "GeneratorBase",
    "GeneratorSpec",
    "SampleRequest",
    "build_generator",
    "check_adapter_dir",
    "flow_container",
    "read_adapter_info",
    "write_adapter_info",
]

#: Beside the peft files: which generator (backend + weights) an adapter was trained on.
ADAPTER_INFO_NAME = "debias3d_adapter.json"
#: In a merged weights folder: the adapter's record plus the folder it was merged from.
MERGE_RECORD_NAME = "merge_record.json"


@dataclass
class GeneratorSpec:
    """What :func:`build_generator` needs to build any generator backend.

    Attributes:
        name: registry name (``mini-trellis``, ``trellis``, or a registered plug-in).
        weights: weights folder or hub id; ``None`` is the backend's default (the shipped mini
            model, ``microsoft/TRELLIS-text-xlarge``).
        device: torch device string; ``None`` is the backend's default (mini TRELLIS: CPU,
            TRELLIS: CUDA).
        options: backend-specific keyword arguments for ``from_pretrained``.
    """

    name: str = "mini-trellis"
    weights: str | None = None
    device: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"GeneratorSpec.name: a registered generator name is needed, got {self.name!r}")
        if self.weights is not None:
            self.weights = str(self.weights) or None


def build_generator(
    spec: GeneratorSpec | str, *, text_encoder: Any = None, adapter: str | os.PathLike | None = None
) -> GeneratorBase:
    """Build the generator named by ``spec`` (``find("generator", name).from_pretrained(...)``).

    Args:
        spec: a :class:`GeneratorSpec` or just a registry name.
        text_encoder: an already-loaded text encoder to share; a backend uses it only when it
            declares :attr:`GeneratorBase.shares_text_encoder` (and it matches its own encoder).
        adapter: a LoRA adapter folder to apply (merged) after loading. When ``spec.weights`` is
            ``None`` and the adapter records the weights it was trained on, those are loaded, so
            an adapter is always applied to the model it was trained from.

    Raises:
        KeyError: no generator registered under the name (the message lists the choices).
    """
    from debias3d.registry import find

    if isinstance(spec, str):
        spec = GeneratorSpec(spec)
    if adapter is not None and spec.weights is None:
        spec = GeneratorSpec(
            spec.name, read_adapter_info(adapter).get("generator_weights"), spec.device, spec.options
        )
    cls = find("generator", spec.name)
    options = dict(spec.options)
    if text_encoder is not None and getattr(cls, "shares_text_encoder", False):
        options.setdefault("text_encoder", text_encoder)
    if spec.device is not None:
        options["device"] = spec.device
    gen = cls.from_pretrained(spec.weights, **options)
    if adapter is not None:
        gen.load_adapter(adapter)
    return gen


@dataclass
class SampleRequest:
    """What :meth:`GeneratorBase.generate` hands a backend's ``_sample``, resolved.

    Attributes:
        prompts: P prompts.
        seeds: one seed per prompt.
        num_samples: D samples per prompt.
        stage1 / stage2: sparse-structure / structured-latent sampler settings (TRELLIS's keys).
        batch_size: items per sampler batch (``None``: the backend's default).
    """

    prompts: list[str]
    seeds: list[int]
    num_samples: int
    stage1: dict[str, Any]
    stage2: dict[str, Any]
    batch_size: int | None = None


class GeneratorBase(ABC):
    """Base class of the text-to-3D generator backends.

    Subclasses implement :meth:`from_pretrained`, :meth:`_sample` and :attr:`flow_models`, and keep
    their sampler defaults in ``config.sparse_structure_sampler_params`` / ``config.slat_sampler_params``
    (TRELLIS's names); :meth:`generate` resolves seeds and settings for them. The adapter methods
    work on ``flow_models`` and need nothing else. :meth:`save_pretrained` writes
    ``<stage>.safetensors`` per flow model unless a backend has its own folder layout.
    """

    #: registry name, recorded in every asset's metadata
    name: ClassVar[str] = ""
    #: whether ``from_pretrained`` takes a ``text_encoder`` to share with other models
    shares_text_encoder: ClassVar[bool] = False
    #: free-form provenance (weights folder, training record, adapter); set by ``from_pretrained``
    metadata: dict[str, Any]
    #: the peft model of an adapter loaded with ``merge=False`` (``merge_adapter`` folds it in)
    _unmerged_adapter: Any = None

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device: str | None = None, **options: Any
    ) -> GeneratorBase:
        """Load the backend from ``path`` (``None``: its default weights) onto ``device``."""

    def generate(
        self,
        prompts: Sequence[str],
        seeds: int | Sequence[int] | None = None,
        num_samples: int = 1,
        steps: int | None = None,
        cfg: float | None = None,
        batch_size: int | None = None,
        sparse_structure_sampler_params: dict[str, Any] | None = None,
        slat_sampler_params: dict[str, Any] | None = None,
    ) -> list[Asset]:
        """``num_samples`` assets per prompt, prompt-major (``assets[p * D + d]``).

        Args:
            prompts: P prompts.
            seeds: one seed per prompt (or one int for all; default 0). An asset is fixed by
                (prompt, seed, sample index) whatever the batching.
            num_samples: D samples per prompt.
            steps / cfg: both stages' sampler ``steps`` / ``cfg_strength`` (``None``: the config's).
            batch_size: items (prompt × sample) per sampler batch (``None``: the backend's default).
            sparse_structure_sampler_params / slat_sampler_params: TRELLIS's per-stage overrides,
                applied last.

        Returns:
            P·D assets, each with mesh, voxels, seed and metadata ``{"sample": d, "backend": name, ...}``.
        """
        prompts = list(prompts)
        if isinstance(seeds, int) or seeds is None:
            seeds = [0 if seeds is None else int(seeds)] * len(prompts)
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        over = {k: v for k, v in (("steps", steps), ("cfg_strength", cfg)) if v is not None}
        stage1 = {
            **self.config.sparse_structure_sampler_params,
            **over,
            **(sparse_structure_sampler_params or {}),
        }
        stage2 = {**self.config.slat_sampler_params, **over, **(slat_sampler_params or {})}
        return self._sample(SampleRequest(prompts, seeds, num_samples, stage1, stage2, batch_size))

    @abstractmethod
    def _sample(self, req: SampleRequest) -> list[Asset]:
        """The backend's sampling for :meth:`generate`, its arguments resolved."""

    @property
    @abstractmethod
    def flow_models(self) -> dict[str, nn.Module]:
        """The flow transformers LoRA fine-tunes, by stage name."""

    def cannot_represent(self, prompt: str) -> str | None:
        """Why this backend cannot represent ``prompt`` (``None``: it can, as far as it knows).

        Open-vocabulary backends keep the default; the embedded ShapeWorld generator names the
        words outside its grammar, so a score of such a prompt is never read without a warning.
        """
        return None

    # ------------------------------------------------------------------------------ adapters
    def load_adapter(self, path: str | os.PathLike, merge: bool = True) -> GeneratorBase:
        """Apply a LoRA adapter folder (peft format, written by ``debias3d finetune``) in place.

        Args:
            path: the adapter folder.
            merge: fold ``W + (alpha/r)·B·A`` into the base weights (no LoRA overhead when
                sampling); ``False`` keeps separate LoRA layers.

        Returns:
            ``self``, its flow models now carrying the adapter, with ``metadata["adapter"] = str(path)``.
        """
        from peft import LoraConfig, PeftModel

        from debias3d.models.sparse_lora import register_sparse_lora

        d = check_adapter_dir(path)
        container = flow_container(self)
        # the SparseLinear → SparseLoraLinear mapping is not in adapter_config.json: register it again
        config = register_sparse_lora(LoraConfig.from_pretrained(str(d)), container)
        peft_model = PeftModel.from_pretrained(container, str(d), is_trainable=False, config=config)
        if merge:
            peft_model.merge_and_unload()
        peft_model.eval()
        self.metadata["adapter"] = str(d)
        self._unmerged_adapter = None if merge else peft_model  # merge_adapter folds it in later
        logger.info("applied LoRA adapter %s (%s)", d, "merged" if merge else "unmerged")
        return self

    def merge_adapter(self, out_dir: str | os.PathLike) -> Path:
        """Write the weights with the loaded adapter folded in, as a ``from_pretrained`` folder.

        The folder keeps what ``from_pretrained`` read besides the weights (mini TRELLIS: the
        training record with the corpus word counts that fidelity reports need) and adds
        :data:`MERGE_RECORD_NAME` (the adapter's record and where it was merged from).

        Raises:
            ValueError: no adapter was loaded.
        """
        adapter = getattr(self, "metadata", {}).get("adapter")
        if adapter is None:
            raise ValueError(f"{type(self).__name__}: load_adapter(path) before merge_adapter(out_dir)")
        peft_model = getattr(self, "_unmerged_adapter", None)
        if peft_model is not None:  # loaded unmerged: fold it in now
            peft_model.merge_and_unload()
            self._unmerged_adapter = None
        out = self.save_pretrained(out_dir)
        info = read_adapter_info(adapter)
        info["merged_from"] = str(adapter)
        (out / MERGE_RECORD_NAME).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        logger.info("wrote merged weights to %s", out)
        return out

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``<stage>.safetensors`` per flow model (backends with a folder layout override this)."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for key, module in self.flow_models.items():
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(out / f"{key}.safetensors"), metadata={"format": "pt"})
        return out


def flow_container(generator: Any) -> nn.ModuleDict:
    """``nn.ModuleDict`` of ``generator.flow_models`` (the same module objects, not copies)."""
    from torch import nn

    models = getattr(generator, "flow_models", None)
    if not isinstance(models, dict) or not models:
        raise TypeError(f"{type(generator).__name__} has no flow_models dict to fine-tune")
    return nn.ModuleDict(dict(models))


def write_adapter_info(adapter_dir: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write :data:`ADAPTER_INFO_NAME` (generator backend, weights path, stages, training summary)."""
    p = Path(adapter_dir) / ADAPTER_INFO_NAME
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return p


def read_adapter_info(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The :data:`ADAPTER_INFO_NAME` record, or ``{}`` when the folder has none.

    The base weights are under ``generator_weights`` (records written before the rename say
    ``generator_path``; they read the same).
    """
    from debias3d.models.persistence import read_json

    p = Path(adapter_dir) / ADAPTER_INFO_NAME
    info = read_json(p) if p.is_file() else {}
    if "generator_path" in info:
        info.setdefault("generator_weights", info.pop("generator_path"))
    return info


def check_adapter_dir(adapter_dir: str | os.PathLike) -> Path:
    """``adapter_dir`` as a Path; FileNotFoundError naming it when it holds no peft adapter."""
    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file() or not (d / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"{d} is not a LoRA adapter folder (expected adapter_config.json and adapter_model.safetensors)"
        )
    return d
