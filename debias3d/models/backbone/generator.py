"""Mini TRELLIS: the embedded two-stage rectified-flow text-to-3D generator.

Pipeline (TRELLIS-text at miniature size)::

    prompt ──frozen text encoder──▶ cond (L, D_text)         (once per unique prompt)
    noise (1, R, R, R) ──Stage 1 flow + CFG──▶ occupancy x0 ──> active voxels (N, 3)
    noise (N, 3) ──Stage 2 flow over active voxels + CFG──▶ colours (N, 3)
    occupancy + colours ──▶ VoxelGrid ──▶ watertight coloured mesh ──▶ Asset

>>> gen = MiniTrellisGenerator.from_pretrained()
>>> assets = gen.generate(["a red vase"], seeds=[0], num_samples=4)
>>> len(assets), all(a.mesh.is_watertight for a in assets)
(4, True)
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from debias3d.data.assets import Asset
from debias3d.models.generator import GeneratorBase, SampleRequest

from .decoder import occupancy_from_latent, voxels_from_latents, voxels_to_mesh
from .flow import FlowModelConfig, SLatFlowModel, SparseStructureFlowModel
from .sampler import SIGMA_MIN, FlowEulerGuidanceIntervalSampler

logger = logging.getLogger(__name__)

__all__ = ["MiniTrellisConfig", "MiniTrellisGenerator", "DEFAULT_WEIGHTS_DIR", "WEIGHTS_NAME", "CONFIG_NAME"]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "mini_trellis"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RECORD_NAME = "training_record.json"


def _default_sampler_params() -> dict[str, Any]:
    return {"steps": 20, "cfg_strength": 3.0, "cfg_interval": [0.0, 1.0], "rescale_t": 1.0}


@dataclass
class MiniTrellisConfig:
    """Architecture + sampler defaults of a mini-TRELLIS model (the shipped ``config.json``).

    The sampler param dicts use TRELLIS's keys (``steps``, ``cfg_strength``, ``cfg_interval``,
    ``rescale_t``) and names (``sparse_structure_sampler_params``, ``slat_sampler_params``).
    """

    stage1: FlowModelConfig = field(default_factory=lambda: FlowModelConfig(model_channels=96))
    stage2: FlowModelConfig = field(
        default_factory=lambda: FlowModelConfig(
            in_channels=3, out_channels=3, model_channels=64, num_blocks=2
        )
    )
    text_encoder: str = "minilm"
    text_encoder_path: str | None = None
    sigma_min: float = SIGMA_MIN
    occupancy_threshold: float = 0.0
    sparse_structure_sampler_params: dict[str, Any] = field(default_factory=_default_sampler_params)
    slat_sampler_params: dict[str, Any] = field(default_factory=_default_sampler_params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiniTrellisConfig:
        d = dict(d)
        d["stage1"] = FlowModelConfig(**d.get("stage1", {}))
        d["stage2"] = FlowModelConfig(**d.get("stage2", {}))
        return cls(**d)


def build_text_encoder(name: str, path: str | None = None, device: str = "cpu"):
    """Text encoder by registry name (``minilm`` or ``clip``)."""
    from debias3d.registry import find

    cls = find("text_encoder", name)
    return cls(path, device=device) if path is not None or name != "minilm" else cls(device=device)


class MiniTrellisGenerator(GeneratorBase):
    """The embedded generator (a :class:`~debias3d.models.generator.GeneratorBase`).

    Args:
        config: architecture and sampler defaults.
        stage1: :class:`SparseStructureFlowModel`.
        stage2: :class:`SLatFlowModel`.
        text_encoder: frozen :class:`~debias3d.models.text_encoder.TextEncoder` (built from the
            config when omitted).
        device: torch device for the flow models.
    """

    name = "mini-trellis"
    shares_text_encoder = True

    def cannot_represent(self, prompt: str) -> str | None:
        """The ShapeWorld parse error of ``prompt`` (the only prompts this generator learned), else None."""
        from debias3d.data.shapeworld.parser import ParseError, parse

        try:
            parse(prompt)
        except (ParseError, ValueError, KeyError) as exc:
            return f"outside ShapeWorld's vocabulary, which is all {self.name} can represent ({exc})"
        return None

    #: stage-2 padded tokens per sampler batch (items are bucketed by voxel count)
    stage2_tokens_per_batch: int = 8192

    def __init__(
        self,
        config: MiniTrellisConfig,
        stage1: SparseStructureFlowModel | None = None,
        stage2: SLatFlowModel | None = None,
        text_encoder: nn.Module | None = None,
        device: str | torch.device = "cpu",
    ):
        self.config = config
        self.device = torch.device(device)
        self.stage1 = (stage1 or SparseStructureFlowModel(config.stage1)).to(self.device).eval()
        self.stage2 = (stage2 or SLatFlowModel(config.stage2)).to(self.device).eval()
        self.text_encoder = text_encoder or build_text_encoder(
            config.text_encoder, config.text_encoder_path, device=str(self.device)
        )
        self.sampler = FlowEulerGuidanceIntervalSampler(config.sigma_min)
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction / IO
    @property
    def flow_models(self) -> dict[str, nn.Module]:
        """The trainable flow transformers (LoRA targets): ``{"stage1": ..., "stage2": ...}``."""
        return {"stage1": self.stage1, "stage2": self.stage2}

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = "cpu",
        text_encoder: nn.Module | None = None,
    ) -> MiniTrellisGenerator:
        """Load ``config.json`` + ``model.safetensors`` from ``path`` (default: the shipped weights).

        ``text_encoder`` shares an already-loaded encoder; one of another kind than the config's
        (e.g. an evaluator's CLIP for a MiniLM-conditioned model) is not used.
        """
        from debias3d.models.persistence import load_safetensors, read_json

        d = Path(path) if path is not None else DEFAULT_WEIGHTS_DIR
        if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"no mini-TRELLIS weights in {d} (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
        config = MiniTrellisConfig.from_dict(read_json(d / CONFIG_NAME))
        if getattr(text_encoder, "name", config.text_encoder) != config.text_encoder:
            text_encoder = None
        gen = cls(config, text_encoder=text_encoder, device=device or "cpu")
        state = load_safetensors(d / WEIGHTS_NAME)
        for key, module in gen.flow_models.items():
            sub = {k[len(key) + 1 :]: v.float() for k, v in state.items() if k.startswith(key + ".")}
            module.load_state_dict(sub, strict=True)
        if (d / RECORD_NAME).is_file():
            gen.metadata["training_record"] = read_json(d / RECORD_NAME)
        gen.metadata["weights"] = str(d)
        return gen

    def state_dict(self) -> dict[str, Tensor]:
        """Both stages' weights, prefixed ``stage1.`` / ``stage2.``."""
        return {f"{k}.{n}": p for k, m in self.flow_models.items() for n, p in m.state_dict().items()}

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (``dtype``, e.g. fp16 to halve the size),
        and ``training_record.json`` when the model was loaded with one (its corpus word counts
        split fidelity into frequent and rare words)."""
        from safetensors.torch import save_file

        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "model": "mini-trellis"})
        (d / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        record = self.metadata.get("training_record")
        if record is not None:
            (d / RECORD_NAME).write_text(json.dumps(record, indent=2))
        return d

    def to(self, device: str | torch.device) -> MiniTrellisGenerator:
        self.device = torch.device(device)
        for m in self.flow_models.values():
            m.to(self.device)
        return self

    # ---------------------------------------------------------------------------- generation
    @torch.no_grad()
    def _sample(self, req: SampleRequest) -> list[Asset]:
        """Sample ``batch_size`` (default 64) items per batch; sample d of a prompt with seed s draws
        its noise from ``torch.Generator().manual_seed(s + d)``. Metadata adds ``noise_seed``."""
        prompts, seeds, num_samples, p1, p2 = req.prompts, req.seeds, req.num_samples, req.stage1, req.stage2
        batch_size = 64 if req.batch_size is None else req.batch_size
        if num_samples < 1 or batch_size < 1:
            raise ValueError("num_samples and batch_size must be >= 1")

        # Encode every unique prompt once (the encoder caches too).
        unique = list(dict.fromkeys(prompts))
        feats = dict(zip(unique, self.text_encoder.encode_one_by_one(unique), strict=True))
        null, null_mask = self.text_encoder.null_condition()

        items = [(i, d) for i in range(len(prompts)) for d in range(num_samples)]
        assets: list[Asset] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            conds = [feats[prompts[i]] for i, _ in chunk]
            gens = [torch.Generator().manual_seed(seeds[i] + d) for i, d in chunk]
            grids = self._sample_chunk(conds, gens, (null, null_mask), p1, p2)
            for (i, d), grid in zip(chunk, grids, strict=True):
                assets.append(
                    Asset(
                        prompt=prompts[i],
                        mesh=voxels_to_mesh(grid),
                        voxels=grid,
                        seed=seeds[i],
                        metadata={
                            "sample": d,
                            "backend": self.name,
                            "noise_seed": seeds[i] + d,
                            "sparse_structure_sampler_params": p1,
                            "slat_sampler_params": p2,
                        },
                    )
                )
        return assets

    def _sample_chunk(
        self,
        conds: list[Tensor],
        gens: list[torch.Generator],
        null: tuple[Tensor, Tensor],
        p1: dict[str, Any],
        p2: dict[str, Any],
    ):
        from debias3d.models.text_encoder import pad_features

        dev = self.device
        r = self.stage1.resolution
        c2 = self.stage2.in_channels
        cond, cond_mask = (x.to(dev) for x in pad_features(conds))
        neg, neg_mask = (x.to(dev) for x in null)
        # Per-item noise from the item's own generator: stage-1 grid, then a full grid of stage-2
        # noise gathered at the active voxels (independent of how many voxels are active).
        n1, n2 = [], []
        for g in gens:
            n1.append(torch.randn((1, r, r, r), generator=g))
            n2.append(torch.randn((r, r, r, c2), generator=g))
        noise1 = torch.stack(n1).to(dev)
        x0 = self.sampler.sample(
            self.stage1, noise1, cond, neg, cond_mask=cond_mask, neg_cond_mask=neg_mask, **_norm(p1)
        ).samples
        occ = occupancy_from_latent(x0, self.config.occupancy_threshold)

        coords = [torch.nonzero(o) for o in occ]  # (N_i, 3) each, [x, y, z] order
        feats: list[Tensor | None] = [None] * len(coords)
        # Stage 2 in buckets of similar length: padding is masked (outputs do not depend on it) but
        # costs compute, and voxel counts vary ~10x between shapes.
        for group in _length_buckets([int(c.shape[0]) for c in coords], self.stage2_tokens_per_batch):
            n_max = max(int(coords[i].shape[0]) for i in group)
            b = len(group)
            pc = torch.zeros((b, n_max, 3), dtype=torch.long, device=dev)
            pm = torch.zeros((b, n_max), dtype=torch.bool, device=dev)
            noise2 = torch.zeros((b, n_max, c2), device=dev)
            for j, i in enumerate(group):
                c = coords[i]
                n = c.shape[0]
                pc[j, :n] = c
                pm[j, :n] = True
                noise2[j, :n] = n2[i].to(dev)[c[:, 0], c[:, 1], c[:, 2]]
            idx = torch.tensor(group, device=dev)
            out = self.sampler.sample(
                self.stage2,
                noise2,
                cond[idx],
                neg,
                cond_mask=cond_mask[idx],
                neg_cond_mask=neg_mask,
                coords=pc,
                mask=pm,
                **_norm(p2),
            ).samples
            for j, i in enumerate(group):
                feats[i] = out[j, : coords[i].shape[0]]
        b = len(coords)
        return [voxels_from_latents(occ[i], coords[i], feats[i]) for i in range(b)]

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per stage."""
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.flow_models.items()}


def _length_buckets(lengths: list[int], tokens: int) -> list[list[int]]:
    """Indices grouped by ascending length so that ``len(group) * max_length <= tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _norm(p: dict[str, Any]) -> dict[str, Any]:
    known = {"steps", "cfg_strength", "cfg_interval", "rescale_t"}
    unknown = set(p) - known
    if unknown:
        raise ValueError(f"unknown sampler params {sorted(unknown)}; expected {sorted(known)}")
    out = dict(p)
    if "cfg_interval" in out:
        lo, hi = out["cfg_interval"]
        if not (0.0 <= lo <= hi <= 1.0) or math.isnan(lo):
            raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {out['cfg_interval']}")
        out["cfg_interval"] = (float(lo), float(hi))
    return out
