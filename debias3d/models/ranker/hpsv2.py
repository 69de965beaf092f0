"""HPSv2 / HPSv2.1 reward ranker on rendered views (registry: ``ranker`` / ``hpsv2``).

Scores with ``open_clip_torch`` and a local HPSv2 checkpoint, as upstream's ``hpsv2/img_score.py``
does (tgxs002/HPSv2): OpenCLIP ``ViT-H-14`` built with no pretrained tower, the checkpoint's
``state_dict`` loaded strictly, score ``diag(f_img · f_txtᵀ)`` of the unit image and text features.
The ``hpsv2`` PyPI package itself is not used: every release pins ``pytest==7.2.0`` and its 1.2.0
wheel lacks the tokenizer vocabulary, while ``open_clip_torch`` ships it.

Install: ``pip install 'debias3d[hpsv2]'`` (``open_clip_torch`` and a ``torchvision`` that matches
the installed torch). OpenCLIP imports ``torchvision`` when it is imported, but this ranker never
calls it: the image transform is HPSv2's evaluation transform re-implemented on tensors
(:func:`preprocess_images`). On a CPU-only torch install the matching CPU torchvision from the
PyTorch index (``pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu``
next to torch 2.13.0), since PyPI's Linux torchvision wheel is a CUDA build that fails to import.

Weights: ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (read with
``torch.load(weights_only=True)``) or a ``.safetensors`` file converted from one
(:func:`convert_checkpoint`). Nothing is downloaded.

>>> # HPSv2Ranker.from_pretrained("checkpoints/HPS_v2.1_compressed.pt", device="cuda")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from debias3d.models.ranker.base import OPENAI_MEAN, OPENAI_STD, RankerBase, normalize_openai

__all__ = [
    "BPE_NAME",
    "HPSv2Ranker",
    "HPSv2Unavailable",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "convert_checkpoint",
    "find_bpe_vocab",
    "import_open_clip",
    "load_hpsv2_state_dict",
    "preprocess_images",
]

logger = logging.getLogger(__name__)

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
INSTALL_HINT = "pip install 'debias3d[hpsv2]' (open_clip_torch + the torchvision matching your torch)"


class HPSv2Unavailable(ImportError):
    """The hpsv2 ranker cannot run here; the message says what to install, copy or set."""


def preprocess_images(images: Tensor, size: int = 224) -> Tensor:
    """HPSv2's evaluation transform on tensors: ``(M, 3, H, W)`` in [0, 1] → ``(M, 3, size, size)``.

    Upstream (``create_model_and_transforms(..., light_augmentation=True)``, ``ResizeMaxSize``): the
    *longer* side is resized to ``size`` (bicubic, antialiased, as torchvision resizes tensors), the
    shorter side is zero-padded on both sides (``fill=0`` before normalisation), then OpenAI-CLIP
    mean/std. An image already ``size`` on its longer side is not resampled. No clamping, as upstream.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (M, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        ph, pw = size - nh, size - nw
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    return normalize_openai(x)


def import_open_clip() -> Any:
    """``import open_clip`` or raise :class:`HPSv2Unavailable` with the one-line fix."""
    try:
        import open_clip
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        what = "open_clip_torch" if missing == "open_clip" else f"{missing} (imported by open_clip_torch)"
        raise HPSv2Unavailable(f"the 'hpsv2' ranker needs {what}: {INSTALL_HINT}") from exc
    except (RuntimeError, OSError) as exc:  # a torchvision built for another torch fails at import
        raise HPSv2Unavailable(
            f"open_clip_torch is installed but cannot be imported ({str(exc).splitlines()[0][:120]}); "
            f"install the torchvision that matches your torch: {INSTALL_HINT}"
        ) from exc
    return open_clip


def find_bpe_vocab(open_clip_module: Any = None) -> Path:
    """Locate OpenCLIP's ``bpe_simple_vocab_16e6.txt.gz`` or raise :class:`HPSv2Unavailable`.

    ``$DEBIAS3D_HPSV2_BPE`` first, then the file next to the ``open_clip`` package.
    """
    candidates: list[Path] = []
    env = os.environ.get("DEBIAS3D_HPSV2_BPE")
    if env:
        candidates.append(Path(env))
    if open_clip_module is not None and getattr(open_clip_module, "__file__", None):
        candidates.append(Path(open_clip_module.__file__).parent / BPE_NAME)
    for c in candidates:
        if c.is_file():
            return c
    where = " or ".join(str(c) for c in candidates) or BPE_NAME
    raise HPSv2Unavailable(
        f"tokenizer vocabulary {BPE_NAME} not found at {where}; reinstall open_clip_torch "
        f"(it ships the file) or set DEBIAS3D_HPSV2_BPE=/path/to/{BPE_NAME}"
    )


def load_hpsv2_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of an HPSv2 checkpoint: ``.safetensors``, or a ``.pt`` read with ``weights_only=True``.

    Upstream checkpoints hold ``{"state_dict": ...}`` (possibly with a DDP ``module.`` prefix).

    Raises:
        FileNotFoundError / ValueError: naming the file and the problem.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"HPSv2 checkpoint {p} not found; download HPS_v2.1_compressed.pt (or HPS_v2_compressed.pt) "
            "from the xswu/HPSv2 model page once and set ranker_weights to it"
        )
    if p.suffix == ".safetensors":
        from debias3d.models.persistence import load_safetensors

        state: Any = load_safetensors(p)
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
            raise ValueError(
                f"{p}: not a tensor-only torch checkpoint ({type(exc).__name__}: {str(exc)[:120]})"
            ) from exc
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{p}: expected a state dict of tensors (or {{'state_dict': ...}})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the tensors of an HPSv2 ``.pt`` checkpoint to ``dst`` (safetensors); returns ``dst``."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in load_hpsv2_state_dict(src).items()}
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"format": "pt", "source": Path(src).name})
    return out


class HPSv2Ranker(RankerBase):
    """HPSv2 scores of rendered views; ``score(views, prompt) -> float`` (mean over views).

    Args:
        checkpoint: local ``HPS_v2*_compressed.pt`` or converted ``.safetensors``; required unless
            ``model`` is given.
        model: an already-built model called as ``model(images, tokens)`` returning
            ``{"image_features": (M, E), "text_features": (M, E)}`` (an OpenCLIP ``CLIP``).
        tokenizer: ``tokenizer(list[str]) -> (M, L)`` tokens; OpenCLIP's when ``model`` is None.
        architecture: OpenCLIP model name (HPSv2: ``ViT-H-14``), or a model config dict
            (``embed_dim``, ``vision_cfg``, ``text_cfg``) registered under ``architecture_name``.
        architecture_name: name under which a config-dict architecture is registered.
        device: torch device; on CUDA the forward runs under autocast as upstream (``precision='amp'``).
        batch_size: images per forward pass.
        aggregation: ``mean`` / ``max`` / ``min`` over the views.
        image_size: render size for :meth:`render_views` (224).

    Raises:
        HPSv2Unavailable: open_clip_torch or its vocabulary missing (before any weight is read).
        FileNotFoundError / ValueError: checkpoint missing, unreadable, or not matching the architecture.
    """

    name = "hpsv2"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model: Any = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        architecture: str | Mapping[str, Any] = "ViT-H-14",
        architecture_name: str = "debias3d-hpsv2-custom",
        device: str = "cpu",
        batch_size: int = 16,
        aggregation: str = "mean",
        image_size: int = 224,
    ) -> None:
        super().__init__(batch_size=batch_size, aggregation=aggregation, image_size=image_size)
        self.device = torch.device(device)
        self.input_size = 224
        if model is None:
            model, tokenizer = self._load(checkpoint, architecture, architecture_name)
        if tokenizer is None:
            raise ValueError("HPSv2Ranker: pass a tokenizer together with a custom model")
        self.model = model
        self.tokenizer = tokenizer
        if hasattr(self.model, "eval"):
            self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs: Any) -> HPSv2Ranker:
        """``HPSv2Ranker(checkpoint=path, **kwargs)``, for symmetry with the other backends."""
        return cls(checkpoint=path, **kwargs)

    def _load(
        self, checkpoint: str | os.PathLike | None, architecture: Any, architecture_name: str
    ) -> tuple[Any, Any]:
        # Cheap checks first: package, vocabulary, file; only then build ViT-H-14 and read weights.
        open_clip = import_open_clip()
        bpe = find_bpe_vocab(open_clip)
        if checkpoint is None or str(checkpoint) == "":
            raise ValueError(
                "the 'hpsv2' ranker needs a local checkpoint: set ranker_weights to HPS_v2.1_compressed.pt "
                "(or HPS_v2_compressed.pt / a converted .safetensors); nothing is downloaded"
            )
        if not Path(checkpoint).is_file():
            load_hpsv2_state_dict(checkpoint)  # raises the one-line FileNotFoundError
        name = architecture
        if isinstance(architecture, Mapping):
            name = architecture_name
            open_clip.factory._MODEL_CONFIGS[name] = dict(architecture)
        model = open_clip.create_model(
            name,
            pretrained=None,
            precision="fp32",
            device="cpu",
            jit=False,
            force_quick_gelu=False,
            force_custom_text=False,
            output_dict=True,
        )
        state = load_hpsv2_state_dict(checkpoint)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
            raise ValueError(f"{checkpoint}: does not match OpenCLIP {name}: {first[:200]}") from exc
        if missing or unexpected:
            raise ValueError(
                f"{checkpoint}: does not match OpenCLIP {name}: missing {sorted(missing)[:4]} "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        self.input_size = int(_image_size(model))
        tokenizer = open_clip.get_tokenizer(name)
        if bpe != Path(open_clip.__file__).parent / BPE_NAME:  # $DEBIAS3D_HPSV2_BPE
            ctx = int(getattr(model, "context_length", 77))
            try:
                tokenizer = open_clip.tokenizer.SimpleTokenizer(bpe_path=str(bpe), context_length=ctx)
            except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
                raise HPSv2Unavailable(
                    f"{bpe}: not a readable BPE vocabulary ({type(exc).__name__})"
                ) from exc
        return model.to(self.device), tokenizer

    @torch.no_grad()
    def image_scores(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """HPSv2 score ``diag(f_img · f_txtᵀ)`` of each image with its prompt, ``(M,)``."""
        x = preprocess_images(images, self.input_size).to(self.device)
        tokens = self.tokenizer(list(prompts))
        tokens = tokens.to(self.device) if hasattr(tokens, "to") else tokens
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            out = self.model(x, tokens)
        img, txt = out["image_features"], out["text_features"]
        return (img.float() * txt.float()).sum(-1).cpu()


def _image_size(model: Any) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
