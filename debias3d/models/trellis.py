"""Adapter for real TRELLIS-text (microsoft/TRELLIS) behind the generator protocol.

TRELLIS is not on PyPI: the ``trellis-3d*`` packages there do not contain the text-to-3D pipeline.
Install it from a checkout (see :data:`INSTALL_HINT`); it is imported only when this backend is
built, so the rest of the project never needs it.

Attention backends: TRELLIS reads ``ATTN_BACKEND`` (dense blocks: ``flash_attn`` by default,
``xformers``, ``sdpa``, ``naive``) and ``SPARSE_ATTN_BACKEND`` (sparse blocks: ``flash_attn`` by
default, or ``xformers``) once, when its modules are imported. ``TrellisConfig.attn_backend``
(``auto``) keeps what the environment sets; with nothing set it uses flash-attn when installed and
otherwise switches both to xformers, so an xformers-only install imports; with neither installed
the error says what to install.

What the adapter calls (``trellis/pipelines/trellis_text_to_3d.py``)::

    pipe = TrellisTextTo3DPipeline.from_pretrained("microsoft/TRELLIS-text-xlarge")   # or a local dir
    out = pipe.run(prompt, num_samples=D, seed=seed,
                   sparse_structure_sampler_params={...}, slat_sampler_params={...},
                   formats=["gaussian", "mesh"])

and then one of two exports per sample (``TrellisConfig.export``):

* ``vertex_colors`` (default, for audits): the extracted FlexiCubes mesh ``out["mesh"][d]``
  (``vertices``, ``faces``, z-up in ``[-0.5, 0.5]^3``) decimated with TRELLIS's own
  ``postprocess_mesh`` (no hole filling), each vertex coloured by the nearest opaque Gaussian of
  ``out["gaussian"][d]`` (its degree-0 SH colour, ``0.5 + C0·f_dc``; ``color_source: mesh`` uses the
  mesh decoder's vertex colours instead). No UV unwrap, no 100-view render, no texture
  optimisation: the evaluator needs geometry and colour only.
* ``textured``: ``postprocessing_utils.to_glb(gaussian, mesh, simplify, texture_size)``, the
  baked-texture GLB of TRELLIS's examples (y-up; rotated back here).

Assets are z-up in ``[-1, 1]^3`` (``scale`` 2) with voxels for the measurer.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.data.assets import Asset
from debias3d.models.generator import GeneratorBase, SampleRequest

logger = logging.getLogger(__name__)

__all__ = [
    "TrellisGenerator",
    "TrellisConfig",
    "TrellisNotInstalledError",
    "INSTALL_HINT",
    "Y_UP_TO_Z_UP",
    "FLOW_MODEL_KEYS",
    "configure_attention_backend",
    "mesh_vertex_colors",
    "save_trellis_model",
]

INSTALL_HINT = (
    "The 'trellis' generator needs Microsoft TRELLIS, which is not installable from PyPI "
    "(the PyPI packages named trellis-3d* do not contain the text-to-3D pipeline). On a CUDA machine: "
    "`git clone --recurse-submodules https://github.com/microsoft/TRELLIS && cd TRELLIS && "
    ". ./setup.sh --basic --flash-attn --diffoctreerast --spconv --mipgaussian --kaolin --nvdiffrast` "
    "(flash-attn is TRELLIS's default attention; with `--xformers` instead, "
    "`export ATTN_BACKEND=xformers SPARSE_ATTN_BACKEND=xformers`), then "
    "`export PYTHONPATH=/path/to/TRELLIS:$PYTHONPATH`. "
    "Weights: microsoft/TRELLIS-text-base, -large or -xlarge (a hub id or a local folder)."
)

# TRELLIS's to_glb rotates z-up → y-up with v @ [[1,0,0],[0,0,-1],[0,1,0]]; this is its inverse.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

#: project stage name → key in ``pipeline.models`` / ``pipeline.json``
FLOW_MODEL_KEYS = {"stage1": "sparse_structure_flow_model", "stage2": "slat_flow_model"}

_SH_C0 = 0.28209479177387814  # trellis/renderers/sh_utils.py
_DENSE_BACKENDS = ("flash_attn", "xformers", "sdpa", "naive")
_SPARSE_BACKENDS = ("flash_attn", "xformers")


class TrellisNotInstalledError(ImportError):
    """TRELLIS (the ``trellis`` package from a microsoft/TRELLIS checkout) cannot be imported."""


def configure_attention_backend(choice: str = "auto") -> dict[str, str]:
    """Set ``ATTN_BACKEND`` / ``SPARSE_ATTN_BACKEND`` for TRELLIS before it is imported.

    Args:
        choice: ``auto`` (keep the environment's; else flash_attn when installed, else xformers),
            ``flash_attn`` or ``xformers`` (both variables), or ``sdpa`` (dense blocks only; the
            sparse blocks keep flash_attn / xformers).

    Returns:
        the two variables as they are now set (``""`` = unset, TRELLIS's flash_attn default).

    Raises:
        TrellisNotInstalledError: ``auto`` with neither flash-attn nor xformers installed, or a
            choice whose package is missing.
    """
    env = os.environ
    have = {m: importlib.util.find_spec(m) is not None for m in ("flash_attn", "xformers")}
    if choice == "auto":
        if not env.get("ATTN_BACKEND") and not env.get("SPARSE_ATTN_BACKEND"):
            if have["xformers"] and not have["flash_attn"]:
                env["ATTN_BACKEND"] = env["SPARSE_ATTN_BACKEND"] = "xformers"
                logger.info("TRELLIS attention: flash-attn not installed, using xformers")
            elif not have["flash_attn"]:
                raise TrellisNotInstalledError(
                    "TRELLIS's attention layers need flash-attn or xformers and neither is installed: "
                    "`pip install flash-attn --no-build-isolation`, or `pip install xformers` and "
                    "`export ATTN_BACKEND=xformers SPARSE_ATTN_BACKEND=xformers`"
                )
    elif choice in _SPARSE_BACKENDS:
        if not have[choice]:
            raise TrellisNotInstalledError(f"attn_backend {choice!r}: the {choice} package is not installed")
        env["ATTN_BACKEND"] = env["SPARSE_ATTN_BACKEND"] = choice
    elif choice == "sdpa":
        env["ATTN_BACKEND"] = "sdpa"
    else:
        raise ValueError(f"attn_backend must be auto, flash_attn, xformers or sdpa, got {choice!r}")
    return {k: env.get(k, "") for k in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND")}


def _import_trellis(attn_backend: str = "auto"):
    try:
        found = importlib.util.find_spec("trellis") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TrellisNotInstalledError(f"{INSTALL_HINT} (no module named 'trellis')")
    configure_attention_backend(attn_backend)
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
    """Real-TRELLIS settings (the ``generator_options`` of ``configs/trellis/*.yaml``)."""

    model: str = field(
        default="microsoft/TRELLIS-text-xlarge", metadata={"help": "hub id or local folder (pipeline.json)"}
    )
    device: str = field(default="cuda", metadata={"help": "cuda (TRELLIS's text encoder needs CUDA) or cpu"})
    attn_backend: str = field(
        default="auto",
        metadata={"help": "auto, flash_attn, xformers or sdpa (see configure_attention_backend)"},
    )
    sparse_structure_sampler_params: dict[str, Any] = field(
        default_factory=lambda: {"steps": 25, "cfg_strength": 7.5},
        metadata={"help": "stage-1 sampler settings passed to pipeline.run"},
    )
    slat_sampler_params: dict[str, Any] = field(
        default_factory=lambda: {"steps": 25, "cfg_strength": 7.5},
        metadata={"help": "stage-2 sampler settings passed to pipeline.run"},
    )
    export: str = field(
        default="vertex_colors",
        metadata={"help": "vertex_colors (mesh + per-vertex colour, no texture bake) or textured (to_glb)"},
    )
    color_source: str = field(
        default="gaussian",
        metadata={
            "help": "vertex_colors export: gaussian (nearest Gaussian's colour) or mesh (decoder colours)"
        },
    )
    simplify: float = field(
        default=0.95, metadata={"help": "fraction of faces removed by decimation, [0, 1)"}
    )
    texture_size: int = field(default=1024, metadata={"help": "textured export: baked texture size"})
    voxel_resolution: int = field(default=16, metadata={"help": "voxel grid of each asset (measurer)"})
    to_z_up: bool = field(
        default=True, metadata={"help": "rotate the y-up GLB of the textured export to z-up"}
    )
    scale: float = field(default=2.0, metadata={"help": "TRELLIS's [-0.5, 0.5]^3 → the project's [-1, 1]^3"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.simplify < 1.0:
            raise ValueError(f"TrellisConfig.simplify must be in [0, 1), got {self.simplify}")
        if self.texture_size < 1 or self.voxel_resolution < 1 or self.scale <= 0:
            raise ValueError("TrellisConfig.texture_size / voxel_resolution / scale must be positive")
        if self.export not in ("vertex_colors", "textured"):
            raise ValueError(f"TrellisConfig.export must be vertex_colors or textured, got {self.export!r}")
        if self.color_source not in ("gaussian", "mesh"):
            raise ValueError(
                f"TrellisConfig.color_source must be gaussian or mesh, got {self.color_source!r}"
            )
        if self.attn_backend not in ("auto", "flash_attn", "xformers", "sdpa"):
            raise ValueError(
                f"TrellisConfig.attn_backend must be auto, flash_attn, xformers or sdpa, got {self.attn_backend!r}"
            )

    @classmethod
    def from_options(cls, base: TrellisConfig | None = None, **options: Any) -> TrellisConfig:
        """``base`` (or the defaults) with ``options`` replaced; an unknown option is a one-line
        ``ValueError`` that lists the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"trellis generator: unknown option(s) {unknown}; known: {', '.join(known)}")
        return dataclasses.replace(base or cls(), **options)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def mesh_vertex_colors(
    vertices: np.ndarray, gaussian: Any = None, mesh: Any = None, source: str = "gaussian"
) -> np.ndarray:
    """Per-vertex RGB ``(V, 3)`` uint8 for ``vertices`` (TRELLIS frame) from the pipeline outputs.

    ``gaussian``: TRELLIS's ``Gaussian`` (``get_xyz (N, 3)``, ``get_features (N, 1+, 3)`` SH
    coefficients, ``get_opacity (N, 1)``); each vertex takes the degree-0 colour
    ``0.5 + C0·f_dc`` of its nearest Gaussian with opacity > 0.1 (all of them when none is).
    ``mesh``: a ``MeshExtractResult`` with ``vertex_attrs (V', ≥3)`` (colour in ``[:, :3]``, the
    mesh decoder's when it was trained with colour); each vertex takes the colour of the nearest
    extracted vertex (the mesh may have been decimated since). Grey when the source has no colour.
    """
    from scipy.spatial import cKDTree

    vertices = np.asarray(vertices, dtype=np.float64)
    grey = np.full((len(vertices), 3), 128, dtype=np.uint8)
    if source == "mesh":
        attrs = getattr(mesh, "vertex_attrs", None)
        if attrs is None or len(vertices) == 0:
            logger.warning("TRELLIS mesh has no vertex colours (decoder without use_color): grey")
            return grey
        pts, rgb = _to_numpy(mesh.vertices), _to_numpy(attrs)[:, :3]
    else:
        if gaussian is None or len(vertices) == 0:
            return grey
        pts = _to_numpy(gaussian.get_xyz)
        rgb = 0.5 + _SH_C0 * _to_numpy(gaussian.get_features)[:, 0, :3]
        opaque = _to_numpy(gaussian.get_opacity).reshape(-1) > 0.1
        if opaque.any():
            pts, rgb = pts[opaque], rgb[opaque]
    if len(pts) == 0:
        return grey
    _, idx = cKDTree(pts).query(vertices, k=1)
    return (np.clip(rgb[idx], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _model_args(model: Any, original: dict[str, Any] | None) -> dict[str, Any]:
    """Constructor ``args`` of a TRELLIS model: the checkpoint's own JSON when known, else read back
    from the attributes TRELLIS's flow models store under their argument names."""
    import inspect

    if original is not None:
        return dict(original)
    args: dict[str, Any] = {}
    for name, p in inspect.signature(type(model).__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(model, name):
            v = getattr(model, name)
            args[name] = list(v) if isinstance(v, tuple) else v
    return args


def save_trellis_model(
    model: Any, path_stem: str | os.PathLike, config: dict[str, Any] | None = None
) -> Path:
    """Write ``<stem>.json`` (``{"name", "args"}``) + ``<stem>.safetensors``, the layout
    ``trellis.models.from_pretrained(stem)`` reads.

    Args:
        model: a TRELLIS model (``SparseStructureFlowModel``, ``SLatFlowModel``, ...), adapters merged.
        path_stem: output path without suffix, e.g. ``out/ckpts/slat_flow_txt_dit_B_64l8p2_fp16``.
        config: the base checkpoint's JSON (kept as is); default: rebuilt from the model.
    """
    import json

    from safetensors.torch import save_file

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    name = (config or {}).get("name") or type(model).__name__
    args = _model_args(model, (config or {}).get("args"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(stem.with_name(stem.name + ".safetensors")), metadata={"format": "pt"})
    stem.with_name(stem.name + ".json").write_text(json.dumps({"name": name, "args": args}, indent=4))
    return stem


class TrellisGenerator(GeneratorBase):
    """Real TRELLIS-text behind the same ``generate(prompts, seeds, num_samples)`` protocol.

    Args:
        model: hub id or local folder of a TRELLIS-text model (default ``config.model``).
        config: :class:`TrellisConfig`.
        pipeline: an already-built pipeline (skips the import check and ``from_pretrained``).
        device: ``cuda`` / ``cuda:N`` / ``cpu`` (overrides ``config.device``).
        **options: :class:`TrellisConfig` fields (an unknown name is a one-line ``ValueError``).

    Raises:
        TrellisNotInstalledError: TRELLIS is not importable (message says how to install it).
    """

    name = "trellis"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        config: TrellisConfig | None = None,
        pipeline: Any | None = None,
        device: str | None = None,
        **options: Any,
    ):
        if device is not None:
            options["device"] = str(device)
        self.config = TrellisConfig.from_options(config, **options)
        self._post: Any = None  # trellis.utils.postprocessing_utils, imported for the first export
        src = str(model) if model is not None else self.config.model
        if pipeline is None:
            pipelines, self._post = _import_trellis(self.config.attn_backend)
            pipeline = pipelines.TrellisTextTo3DPipeline.from_pretrained(src)
            if self.config.device.startswith("cuda") and hasattr(pipeline, "to"):
                import torch

                pipeline.to(torch.device(self.config.device))
        self.pipeline = pipeline
        self.metadata: dict[str, Any] = {"model": src}

    @classmethod
    def check_available(cls, attn_backend: str = "auto") -> None:
        """Import TRELLIS (no weights): raises :class:`TrellisNotInstalledError` with the install
        steps. Cheap; call it before work that should not start when TRELLIS is missing."""
        _import_trellis(attn_backend)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device: str | None = None, **options: Any
    ) -> TrellisGenerator:
        """Load a TRELLIS-text pipeline (hub id or folder with ``pipeline.json``) onto ``device``.

        ``options`` are :class:`TrellisConfig` fields (``export``, ``simplify``, sampler params, ...)
        or ``config=TrellisConfig(...)``.
        """
        return cls(path, device=device, **options)

    @property
    def flow_models(self) -> dict[str, Any]:
        """TRELLIS's flow transformers (LoRA targets) under the mini model's keys."""
        m = self.pipeline.models
        return {stage: m[key] for stage, key in FLOW_MODEL_KEYS.items()}

    # --------------------------------------------------------------------------- adapters / IO
    # load_adapter / merge_adapter: GeneratorBase's (peft, SparseLinear layers included); merging
    # writes the TRELLIS folder below through save_pretrained.
    def _pretrained_args(self) -> dict[str, Any]:
        args = getattr(self.pipeline, "_pretrained_args", None)
        if isinstance(args, dict):
            return args
        src = Path(self.metadata["model"])
        if (src / "pipeline.json").is_file():
            import json

            return json.loads((src / "pipeline.json").read_text(encoding="utf-8"))["args"]
        raise ValueError(
            f"trellis generator: cannot find the pipeline.json of {self.metadata['model']!r} to write a TRELLIS folder"
        )

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a TRELLIS pipeline folder whose flow models are the current weights.

        ``path/pipeline.json`` is the base model's with ``models.sparse_structure_flow_model`` and
        ``models.slat_flow_model`` pointing at ``ckpts/<name>`` (``<name>.json`` +
        ``<name>.safetensors``, :func:`save_trellis_model`); the other models keep the base's
        entries (a hub path, or an absolute path when the base is a local folder). So
        ``TrellisTextTo3DPipeline.from_pretrained(path)`` and this class load it.
        """
        import copy
        import json

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        args = copy.deepcopy(self._pretrained_args())
        base = Path(self.metadata["model"])
        entries = dict(args.get("models", {}))
        for key, entry in entries.items():
            if (base / f"{entry}.json").is_file():  # local base: keep loading the others from it
                entries[key] = str((base / entry).resolve())
        for stage, key in FLOW_MODEL_KEYS.items():
            model = self.flow_models[stage]
            entry = str(args.get("models", {}).get(key, f"ckpts/{key}"))
            name = Path(entry).name
            original = None
            if (base / f"{entry}.json").is_file():
                original = json.loads((base / f"{entry}.json").read_text(encoding="utf-8"))
            save_trellis_model(model, out / "ckpts" / name, original)
            entries[key] = f"ckpts/{name}"
        args["models"] = entries
        (out / "pipeline.json").write_text(
            json.dumps({"name": "TrellisTextTo3DPipeline", "args": args}, indent=4), encoding="utf-8"
        )
        return out

    # ------------------------------------------------------------------------------- export
    @property
    def post(self) -> Any:
        """``trellis.utils.postprocessing_utils`` (``postprocess_mesh``, ``to_glb``)."""
        if self._post is None:
            try:
                self._post = importlib.import_module("trellis.utils.postprocessing_utils")
            except ImportError as e:
                raise TrellisNotInstalledError(f"{INSTALL_HINT} (import failed: {e})") from e
        return self._post

    def _to_asset_mesh(self, glb: Any, y_up: bool = True):
        import trimesh

        mesh = glb if isinstance(glb, trimesh.Trimesh) else trimesh.Trimesh(*glb)
        mesh = mesh.copy()
        v = np.asarray(mesh.vertices, dtype=np.float64)
        if y_up and self.config.to_z_up:
            v = v @ Y_UP_TO_Z_UP
        mesh.vertices = v * self.config.scale
        return mesh

    def export_vertex_colors(self, gaussian: Any, mesh: Any):
        """Geometry + per-vertex colour of one sample, without texture baking (``trimesh.Trimesh``,
        the project's frame: z-up, ``[-1, 1]^3``)."""
        import trimesh

        v = _to_numpy(mesh.vertices).astype(np.float64)
        f = _to_numpy(mesh.faces).astype(np.int64)
        if self.config.simplify > 0 and len(f):
            v, f = self.post.postprocess_mesh(
                v, f, simplify=True, simplify_ratio=self.config.simplify, fill_holes=False, verbose=False
            )
            v, f = np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)
        colors = mesh_vertex_colors(v, gaussian=gaussian, mesh=mesh, source=self.config.color_source)
        rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
        out = trimesh.Trimesh(v * self.config.scale, f, vertex_colors=rgba, process=False)
        return out

    def export_textured(self, gaussian: Any, mesh: Any):
        """TRELLIS's ``to_glb`` (decimation, hole filling, UV unwrap, texture baked from ~100 Gaussian
        renders), in the project's frame."""
        glb = self.post.to_glb(
            gaussian,
            mesh,
            simplify=self.config.simplify,
            texture_size=self.config.texture_size,
            verbose=False,
        )
        return self._to_asset_mesh(glb, y_up=True)

    def _sample(self, req: SampleRequest) -> list[Asset]:
        """One ``pipeline.run`` per prompt (D samples, TRELLIS seeds with ``torch.manual_seed(seed)``).

        ``batch_size`` is accepted for the contract and unused (TRELLIS samples one prompt's D
        samples per call). Meshes are z-up in ``[-1, 1]^3`` with voxels for the measurer;
        ``metadata["export"]`` says which export made the mesh.
        """
        from debias3d.data.shapeworld.voxelize import mesh_to_voxels

        ss, sl, num_samples = req.stage1, req.stage2, req.num_samples
        export = self.export_textured if self.config.export == "textured" else self.export_vertex_colors
        assets = []
        for prompt, seed in zip(req.prompts, req.seeds, strict=True):
            out = self.pipeline.run(
                prompt,
                num_samples=num_samples,
                seed=int(seed),
                sparse_structure_sampler_params=ss,
                slat_sampler_params=sl,
                formats=["gaussian", "mesh"],
            )
            for d in range(num_samples):
                if len(getattr(out["mesh"][d], "faces", ())) == 0:  # FlexiCubes found no surface
                    raise ValueError(f"TRELLIS made an empty mesh for {prompt!r} (seed {seed}, sample {d})")
                mesh = export(out["gaussian"][d], out["mesh"][d])
                assets.append(
                    Asset(
                        prompt=prompt,
                        mesh=mesh,
                        voxels=mesh_to_voxels(mesh, self.config.voxel_resolution),
                        seed=int(seed),
                        metadata={
                            "sample": d,
                            "backend": self.name,
                            "export": self.config.export,
                            "sparse_structure_sampler_params": ss,
                            "slat_sampler_params": sl,
                        },  # fmt: skip
                    )
                )
        return assets
