"""HPSv2 / HPSv2.1 reward ranker on rendered views (registry: ``ranker`` / ``hpsv2``).

Needs the ``debias3d[hpsv2]`` extra (``pip install 'debias3d[hpsv2]'``: ``hpsv2`` + ``torchvision``)
and a local checkpoint (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``) — nothing is
downloaded. The OpenCLIP ViT-H-14 architecture is built with ``pretrained=None`` and the checkpoint's
``state_dict`` is loaded with ``torch.load(weights_only=True)``.

Known upstream problem: the PyPI wheel of ``hpsv2`` does not ship its tokenizer vocabulary
``hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz``. :func:`find_bpe_vocab` looks for it in the
usual places (``$DEBIAS3D_HPSV2_BPE``, the ``hpsv2`` package, an installed ``open_clip``) and
otherwise raises :class:`HPSv2Unavailable` with the one-line fix.

Scoring glue (what this module adds, tested with a stand-in model): views ``(V, 3, H, W)`` in
``[0, 1]`` → bicubic resize to 224 and centre crop → OpenAI-CLIP normalisation → packed batches →
``diag(f_img · f_txtᵀ)`` per image (HPSv2's score, unit features) → mean over the views of an asset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from debias3d.models.ranker.base import RankerBase

__all__ = [
    "HPSv2Ranker",
    "HPSv2Unavailable",
    "find_bpe_vocab",
    "preprocess_images",
    "OPENAI_MEAN",
    "OPENAI_STD",
]

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
_INSTALL_HINT = "install the extra: pip install 'debias3d[hpsv2]'  (hpsv2 + torchvision)"


class HPSv2Unavailable(ImportError):
    """The hpsv2 backend cannot run here; the message says what to install or copy."""


def preprocess_images(images: Tensor, size: int = 224) -> Tensor:
    """HPSv2's image transform on tensors: ``(M, 3, H, W)`` in [0, 1] → ``(M, 3, size, size)``.

    Shorter side resized to ``size`` (bicubic, antialiased), centre crop, OpenAI-CLIP mean/std.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (M, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0.0, 1.0)
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _import_hpsv2() -> Any:
    try:
        import hpsv2  # noqa: F401  (import check only)
    except ImportError as exc:
        raise HPSv2Unavailable(f"the 'hpsv2' ranker needs the hpsv2 package: {_INSTALL_HINT}") from exc
    try:
        from hpsv2.src import open_clip  # the copy of OpenCLIP that hpsv2 vendors
    except ImportError:
        try:
            import open_clip  # type: ignore[no-redef]
        except ImportError as exc:
            raise HPSv2Unavailable(
                f"hpsv2 is installed but its open_clip cannot be imported: {_INSTALL_HINT}"
            ) from exc
    return open_clip


def find_bpe_vocab(open_clip_module: Any = None) -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz`` or raise :class:`HPSv2Unavailable` with the fix."""
    candidates: list[Path] = []
    env = os.environ.get("DEBIAS3D_HPSV2_BPE")
    if env:
        candidates.append(Path(env))
    if open_clip_module is not None and getattr(open_clip_module, "__file__", None):
        candidates.append(Path(open_clip_module.__file__).parent / BPE_NAME)
    try:
        import open_clip as oc  # the standalone package ships the file

        candidates.append(Path(oc.__file__).parent / BPE_NAME)
    except ImportError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    target = candidates[1] if len(candidates) > 1 else (candidates[0] if candidates else Path(BPE_NAME))
    raise HPSv2Unavailable(
        f"{BPE_NAME} not found (the hpsv2 PyPI wheel does not ship it, a known upstream issue). "
        f"Fix: `pip install open_clip_torch` (it ships the file) or copy it to {target}, "
        "or set DEBIAS3D_HPSV2_BPE=/path/to/" + BPE_NAME
    )


class HPSv2Ranker(RankerBase):
    """HPSv2 scores of rendered views; ``score(views, prompt) -> float`` (mean over views).

    Args:
        checkpoint: local ``HPS_v2*_compressed.pt``; required unless ``model`` is given.
        model: an already-built model (or a stand-in) called as ``model(images, tokens)`` and
            returning ``{"image_features": (M, E), "text_features": (M, E)}``.
        tokenizer: ``tokenizer(list[str]) -> tokens``; built from OpenCLIP when ``model`` is None.
        architecture: OpenCLIP model name (HPSv2: ``ViT-H-14``).
        device: torch device.
        batch_size: images per forward pass.
        aggregation: ``mean`` / ``max`` / ``min`` over the views.
        image_size: render size for :meth:`render_views` (224).
    """

    name = "hpsv2"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model: Any = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        architecture: str = "ViT-H-14",
        device: str = "cpu",
        batch_size: int = 16,
        aggregation: str = "mean",
        image_size: int = 224,
    ) -> None:
        super().__init__(batch_size=batch_size, aggregation=aggregation, image_size=image_size)
        self.device = torch.device(device)
        if model is None:
            model, tokenizer = self._load(checkpoint, architecture)
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

    def _load(self, checkpoint: str | os.PathLike | None, architecture: str) -> tuple[Any, Any]:
        open_clip = _import_hpsv2()
        if checkpoint is None:
            raise ValueError(
                "HPSv2Ranker: a local checkpoint path is required (HPS_v2_compressed.pt or "
                "HPS_v2.1_compressed.pt; download it once on a machine with network access)"
            )
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"HPSv2 checkpoint {path} not found")
        find_bpe_vocab(open_clip)
        model, _, _ = open_clip.create_model_and_transforms(
            architecture,
            pretrained=None,
            precision="amp" if self.device.type == "cuda" else "fp32",
            device=self.device,
            output_dict=True,
        )
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        model.load_state_dict(state)
        return model.to(self.device), open_clip.get_tokenizer(architecture)

    @torch.no_grad()
    def image_scores(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """HPSv2 score ``diag(f_img · f_txtᵀ)`` of each image with its prompt, ``(M,)``."""
        x = preprocess_images(images).to(self.device)
        tokens = self.tokenizer(list(prompts))
        tokens = tokens.to(self.device) if hasattr(tokens, "to") else tokens
        out = self.model(x, tokens)
        img, txt = out["image_features"], out["text_features"]
        return (img.float() * txt.float()).sum(-1).cpu()
