"""Adapter for real TRELLIS-text (microsoft/TRELLIS) behind the generator protocol.

TRELLIS is not on PyPI: the ``trellis-3d*`` packages there do not contain the text-to-3D pipeline.
Install it from a checkout (see :data:`INSTALL_HINT`); it is imported only when this backend is
built, so the rest of the project never needs it.

What the adapter calls (``trellis/pipelines/trellis_text_to_3d.py``)::

    pipe = TrellisTextTo3DPipeline.from_pretrained("microsoft/TRELLIS-text-xlarge")   # or a local dir
    out = pipe.run(prompt, num_samples=D, seed=seed,
                   sparse_structure_sampler_params={...}, slat_sampler_params={...},
                   formats=["gaussian", "mesh"])
    glb = postprocessing_utils.to_glb(out["gaussian"][d], out["mesh"][d], simplify=..., texture_size=...)

TRELLIS exports GLB meshes y-up in ``[-0.5, 0.5]^3``; assets here are z-up in ``[-1, 1]^3``, so each
mesh is rotated back and scaled by 2 before it is voxelised for the measurer.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from debias3d.data.assets import Asset

logger = logging.getLogger(__name__)

__all__ = ["TrellisGenerator", "TrellisConfig", "TrellisNotInstalledError", "INSTALL_HINT", "Y_UP_TO_Z_UP"]

INSTALL_HINT = (
    "The 'trellis' generator needs Microsoft TRELLIS, which is not installable from PyPI "
    "(the PyPI packages named trellis-3d* do not contain the text-to-3D pipeline). Install it from source "
    "on a CUDA machine: `git clone --recurse-submodules https://github.com/microsoft/TRELLIS`, run its "
    "`. ./setup.sh --basic --xformers --diffoctreerast --spconv --mipgaussian --kaolin --nvdiffrast` "
    "(see its README), then add the checkout to PYTHONPATH (`export PYTHONPATH=/path/to/TRELLIS:$PYTHONPATH`). "
    "Weights: microsoft/TRELLIS-text-base, -large or -xlarge (a hub id or a local folder)."
)

# TRELLIS's to_glb rotates z-up → y-up with v @ [[1,0,0],[0,0,-1],[0,1,0]]; this is its inverse.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class TrellisNotInstalledError(ImportError):
    """TRELLIS (the ``trellis`` package from a microsoft/TRELLIS checkout) cannot be imported."""


def _import_trellis():
    try:
        pipelines = importlib.import_module("trellis.pipelines")
        post = importlib.import_module("trellis.utils.postprocessing_utils")
    except ImportError as e:
        raise TrellisNotInstalledError(f"{INSTALL_HINT} (import failed: {e})") from e
    if not hasattr(pipelines, "TrellisTextTo3DPipeline"):
        raise TrellisNotInstalledError(
            f"the installed 'trellis' package has no TrellisTextTo3DPipeline. {INSTALL_HINT}"
        )
    return pipelines, post


@dataclass
class TrellisConfig:
    """Real-TRELLIS settings (``configs/trellis/*.yaml``)."""

    model: str = "microsoft/TRELLIS-text-xlarge"
    device: str = "cuda"
    sparse_structure_sampler_params: dict[str, Any] = field(
        default_factory=lambda: {"steps": 25, "cfg_strength": 7.5}
    )
    slat_sampler_params: dict[str, Any] = field(default_factory=lambda: {"steps": 25, "cfg_strength": 7.5})
    simplify: float = 0.95
    texture_size: int = 1024
    voxel_resolution: int = 16
    to_z_up: bool = True
    scale: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.simplify < 1.0:
            raise ValueError(f"simplify: must be in [0, 1), got {self.simplify}")
        if self.texture_size < 1 or self.voxel_resolution < 1 or self.scale <= 0:
            raise ValueError("texture_size / voxel_resolution / scale: must be positive")


class TrellisGenerator:
    """Real TRELLIS-text behind the same ``generate(prompts, seeds, num_samples)`` protocol.

    Args:
        model: hub id or local folder of a TRELLIS-text model (default ``config.model``).
        config: :class:`TrellisConfig`.
        pipeline: an already-built pipeline (skips ``from_pretrained``).

    Raises:
        TrellisNotInstalledError: TRELLIS is not importable (message says how to install it).
    """

    name = "trellis"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        config: TrellisConfig | None = None,
        pipeline: Any | None = None,
    ):
        self.config = config or TrellisConfig()
        pipelines, self._post = _import_trellis()
        if pipeline is None:
            src = str(model) if model is not None else self.config.model
            pipeline = pipelines.TrellisTextTo3DPipeline.from_pretrained(src)
            if hasattr(pipeline, "cuda") and self.config.device == "cuda":
                pipeline.cuda()
        self.pipeline = pipeline
        self.metadata: dict[str, Any] = {"model": str(model or self.config.model)}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs) -> TrellisGenerator:
        """Same as the constructor (mirrors :meth:`MiniTrellisGenerator.from_pretrained`)."""
        return cls(path, **kwargs)

    @property
    def flow_models(self) -> dict[str, Any]:
        """TRELLIS's flow transformers (LoRA targets) under the mini model's keys."""
        m = self.pipeline.models
        return {"stage1": m["sparse_structure_flow_model"], "stage2": m["slat_flow_model"]}

    def _to_asset_mesh(self, glb: Any):
        import trimesh

        mesh = glb if isinstance(glb, trimesh.Trimesh) else trimesh.Trimesh(*glb)
        mesh = mesh.copy()
        v = np.asarray(mesh.vertices, dtype=np.float64)
        if self.config.to_z_up:
            v = v @ Y_UP_TO_Z_UP
        mesh.vertices = v * self.config.scale
        return mesh

    def generate(
        self,
        prompts: Sequence[str],
        seeds: int | Sequence[int] | None = None,
        num_samples: int = 1,
        steps: int | None = None,
        cfg: float | None = None,
        sparse_structure_sampler_params: dict[str, Any] | None = None,
        slat_sampler_params: dict[str, Any] | None = None,
    ) -> list[Asset]:
        """One ``pipeline.run`` per prompt (D samples, TRELLIS seeds with ``torch.manual_seed(seed)``).

        Returns P·D assets, prompt-major; meshes z-up in ``[-1, 1]^3`` with 16³ voxels for the measurer.
        """
        from debias3d.data.shapeworld.voxelize import mesh_to_voxels

        prompts = list(prompts)
        if isinstance(seeds, int) or seeds is None:
            seeds = [0 if seeds is None else int(seeds)] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        over: dict[str, Any] = {}
        if steps is not None:
            over["steps"] = steps
        if cfg is not None:
            over["cfg_strength"] = cfg
        ss = {
            **self.config.sparse_structure_sampler_params,
            **over,
            **(sparse_structure_sampler_params or {}),
        }
        sl = {**self.config.slat_sampler_params, **over, **(slat_sampler_params or {})}
        assets = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            out = self.pipeline.run(
                prompt,
                num_samples=num_samples,
                seed=int(seed),
                sparse_structure_sampler_params=ss,
                slat_sampler_params=sl,
                formats=["gaussian", "mesh"],
            )
            for d in range(num_samples):
                glb = self._post.to_glb(
                    out["gaussian"][d],
                    out["mesh"][d],
                    simplify=self.config.simplify,
                    texture_size=self.config.texture_size,
                    verbose=False,
                )
                mesh = self._to_asset_mesh(glb)
                assets.append(
                    Asset(
                        prompt=prompt,
                        mesh=mesh,
                        voxels=mesh_to_voxels(mesh, self.config.voxel_resolution),
                        seed=int(seed),
                        metadata={
                            "sample": d,
                            "backend": self.name,
                            "sparse_structure_sampler_params": ss,
                            "slat_sampler_params": sl,
                        },  # fmt: skip
                    )
                )
        return assets
