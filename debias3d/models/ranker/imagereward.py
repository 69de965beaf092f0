"""ImageReward-v1.0 reward ranker on rendered views (registry: ``ranker`` / ``imagereward``).

T3Bench's quality metric scores every view with ImageReward-v1.0 (``RM.load("ImageReward-v1.0")``,
``model.score(prompt, image)``) and reports ``best smoothed vertex × 20 + 50``; that calibration is
made for this ranker's scale. ImageReward (THUDM/ImageReward, ``ImageReward/ImageReward.py``) is
BLIP's ViT-L/16 image encoder at 224 px, BLIP's BERT text encoder with cross-attention to the image
tokens (``med.py``, prompts padded / truncated to 35 tokens), and an MLP head on the ``[CLS]``
feature (768 → 1024 → 128 → 64 → 16 → 1, no activations), normalised as
``(r − 0.16717362830052426) / 1.0333394966054072``.

This backend runs those modules with transformers' BLIP ports (``BlipVisionModel``,
``BlipTextModel``; ``layer_norm_eps=1e-6`` in the image tower as BLIP's ``vit.py``), so it needs no
package beyond the project's own dependencies (the ``image-reward`` package pins old timm /
fairscale and downloads from the hub). Weights come from a local folder, nothing is downloaded::

    imagereward/
      ImageReward.pt      THUDM/ImageReward (read with torch.load(weights_only=True))
                          or model.safetensors written by convert_checkpoint()
      med_config.json     THUDM/ImageReward
      vocab.txt           the bert-base-uncased tokenizer (plus tokenizer_config.json if present)

The image transform is upstream's (``Resize(224, BICUBIC)`` on a PIL image, ``CenterCrop``,
``ToTensor``, OpenAI-CLIP normalisation), done with Pillow on the uint8 render.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from debias3d.models.ranker.base import OPENAI_MEAN, OPENAI_STD, RankerBase, normalize_openai  # noqa: F401

__all__ = [
    "IMAGEREWARD_MEAN",
    "IMAGEREWARD_STD",
    "ImageRewardModel",
    "ImageRewardRanker",
    "convert_checkpoint",
    "convert_state_dict",
    "preprocess_images",
]

logger = logging.getLogger(__name__)

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
WEIGHT_NAMES = ("model.safetensors", "ImageReward.pt")
# Tensors of the released checkpoint that the score never uses (BLIP's contrastive projections,
# a buffer of token positions).
UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
# upstream MLP: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
MLP_LINEARS = (0, 2, 4, 6, 7)


def preprocess_images(images: Tensor, size: int = 224) -> Tensor:
    """ImageReward's transform: ``(M, 3, H, W)`` in [0, 1] → ``(M, 3, size, size)``.

    Each image goes through uint8 and Pillow exactly as upstream reads a PNG: shorter side resized
    to ``size`` with ``Image.BICUBIC`` (torchvision ``Resize(size)`` rule for the longer side),
    centre crop (``CenterCrop``'s rounding), ``/255``, OpenAI-CLIP mean / std.
    """
    from PIL import Image

    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (M, 3, H, W), got {tuple(images.shape)}")
    arr = (
        (images.detach().float().clamp(0, 1) * 255.0)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .cpu()
        .numpy()
    )
    out = []
    for a in arr:
        im = Image.fromarray(a)
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return normalize_openai(torch.stack(out))


class ImageRewardModel(nn.Module):
    """BLIP image encoder + BLIP text encoder (cross-attention) + MLP head; ``forward`` → ``(M,)``.

    Args:
        text_config: a ``BlipTextConfig`` (``encoder_hidden_size`` = image width).
        vision_config: a ``BlipVisionConfig``.
    """

    def __init__(self, text_config: Any, vision_config: Any) -> None:
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        h = text_config.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(h, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Normalised rewards ``(M,)`` for images ``(M, 3, S, S)`` and tokens ``(M, L)``."""
        img = self.vision(pixel_values=pixel_values).last_hidden_state  # (M, 1 + P, Dv)
        img_mask = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
        out = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=img,
            encoder_attention_mask=img_mask,
            is_decoder=False,
        )
        feat = out.last_hidden_state[:, 0, :].float()  # [CLS]
        return ((self.mlp(feat) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).squeeze(-1)


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Upstream ImageReward keys → :class:`ImageRewardModel` keys (unused tensors dropped).

    ``blip.visual_encoder.*`` (BLIP ``vit.py``) → ``vision.*``; ``blip.text_encoder.*`` (BLIP
    ``med.py``, same names as transformers' port) → ``text.*``; ``mlp.layers.*`` → ``mlp.*``.
    Keys already in this model's layout pass through.
    """
    vis = {
        "cls_token": "embeddings.class_embedding",
        "pos_embed": "embeddings.position_embedding",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
    }
    block = {
        "norm1": "layer_norm1",
        "norm2": "layer_norm2",
        "attn.qkv": "self_attn.qkv",
        "attn.proj": "self_attn.projection",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k.startswith(UNUSED):
            continue
        if k.startswith("blip.visual_encoder."):
            rest = k.removeprefix("blip.visual_encoder.")
            if rest in vis:
                out["vision." + vis[rest]] = v
                continue
            if rest.startswith("blocks."):
                _, i, sub = rest.split(".", 2)
                mod, _, param = sub.rpartition(".")
                if mod in block:
                    out[f"vision.encoder.layers.{i}.{block[mod]}.{param}"] = v
                    continue
            out["unconverted." + k] = v  # reported as unexpected
        elif k.startswith("blip.text_encoder."):
            out["text." + k.removeprefix("blip.text_encoder.")] = v
        elif k.startswith("mlp.layers."):
            out["mlp." + k.removeprefix("mlp.layers.")] = v
        else:
            out[k] = v
    return out


def _read_state(folder: Path) -> tuple[Path, dict[str, Tensor]]:
    for name in WEIGHT_NAMES:
        p = folder / name
        if not p.is_file():
            continue
        if p.suffix == ".safetensors":
            from debias3d.models.persistence import load_safetensors

            return p, dict(load_safetensors(p))
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
            raise ValueError(f"{p}: not a tensor-only torch checkpoint ({type(exc).__name__})") from exc
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{p}: expected a state dict of tensors")
        return p, dict(state)
    raise FileNotFoundError(
        f"ImageReward weights not found in {folder} (expected {' or '.join(WEIGHT_NAMES)})"
    )


def convert_checkpoint(folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (this model's key layout) next to ``ImageReward.pt``; returns it."""
    from safetensors.torch import save_file

    f = Path(folder)
    src, state = _read_state(f)
    state = {k: v.contiguous() for k, v in convert_state_dict(state).items()}
    out = f / "model.safetensors"
    save_file(state, str(out), metadata={"format": "pt", "source": src.name})
    return out


def _configs(med: Mapping[str, Any], state: Mapping[str, Tensor]) -> tuple[Any, Any]:
    """``BlipTextConfig`` from ``med_config.json``; ``BlipVisionConfig`` from the weights' shapes.

    BLIP's ViTs use 64-wide heads (base 768/12, large 1024/16), so heads = width / 64.
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    pos = state["vision.embeddings.position_embedding"]
    patch = state["vision.embeddings.patch_embedding.weight"]
    width, p = int(pos.shape[-1]), int(patch.shape[-1])
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision.encoder.layers."))
    n_patches = int(pos.shape[1]) - 1
    side = round(n_patches**0.5)
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=int(state["vision.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // 64),
        image_size=side * p,
        patch_size=p,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    text = BlipTextConfig(
        vocab_size=int(med.get("vocab_size", 30524)),
        hidden_size=int(med.get("hidden_size", 768)),
        encoder_hidden_size=width,
        intermediate_size=int(med.get("intermediate_size", 3072)),
        num_hidden_layers=int(med.get("num_hidden_layers", 12)),
        num_attention_heads=int(med.get("num_attention_heads", 12)),
        max_position_embeddings=int(med.get("max_position_embeddings", 512)),
        hidden_act=str(med.get("hidden_act", "gelu")),
        layer_norm_eps=float(med.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(med.get("pad_token_id", 0)),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally
    )
    return text, vision


class ImageRewardRanker(RankerBase):
    """ImageReward-v1.0 scores of rendered views (T3Bench's quality ranker).

    Args:
        path: the local folder described in the module docstring.
        device: torch device.
        batch_size: images per forward pass.
        aggregation: ``mean`` / ``max`` / ``min`` over views (T3Bench itself aggregates on the
            icosphere, :class:`~debias3d.models.ranker.t3bench.T3BenchQuality`).
        image_size: render size for :meth:`render_views` (T3Bench renders 512 px).

    Raises:
        FileNotFoundError / ValueError: one line naming the missing or bad file, raised before the
            model is built.
    """

    name = "imagereward"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        aggregation: str = "mean",
        image_size: int = 512,
    ) -> None:
        super().__init__(batch_size=batch_size, aggregation=aggregation, image_size=image_size)
        self.device = torch.device(device)
        self.model, self.tokenizer = self._load(path)
        self.model.to(self.device).eval()
        self.input_size = int(self.model.vision.config.image_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs: Any) -> ImageRewardRanker:
        """``ImageRewardRanker(path, **kwargs)``."""
        return cls(path, **kwargs)

    @staticmethod
    def check(path: str | os.PathLike | None) -> Path:
        """Cheap check of the folder (files present, config readable); returns the folder."""
        if path is None or str(path) == "":
            raise ValueError(
                "the 'imagereward' ranker needs a local folder: set ranker_weights to a folder with "
                "ImageReward.pt and med_config.json (THUDM/ImageReward) and bert-base-uncased's vocab.txt"
            )
        f = Path(path)
        if not f.is_dir():
            raise FileNotFoundError(f"ImageReward folder {f} not found (set ranker_weights)")
        if not any((f / n).is_file() for n in WEIGHT_NAMES):
            raise FileNotFoundError(
                f"ImageReward weights not found in {f}: copy ImageReward.pt from THUDM/ImageReward there"
            )
        if not (f / "med_config.json").is_file():
            raise FileNotFoundError(f"{f / 'med_config.json'} not found: copy it from THUDM/ImageReward")
        if not (f / "vocab.txt").is_file():
            raise FileNotFoundError(
                f"{f / 'vocab.txt'} not found: copy the bert-base-uncased tokenizer files there"
            )
        try:
            json.loads((f / "med_config.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{f / 'med_config.json'}: not valid JSON ({exc})") from exc
        return f

    def _load(self, path: str | os.PathLike | None) -> tuple[ImageRewardModel, Any]:
        from transformers import BertTokenizer

        folder = self.check(path)
        med = json.loads((folder / "med_config.json").read_text(encoding="utf-8"))
        tokenizer = BertTokenizer.from_pretrained(str(folder))
        # as BLIP's init_tokenizer: [DEC] as bos, [ENC] as an extra special token (ids 30522, 30523)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        src, raw = _read_state(folder)
        state = convert_state_dict(raw)
        try:
            text_cfg, vision_cfg = _configs(med, state)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{src}: not an ImageReward checkpoint (missing {exc})") from exc
        model = ImageRewardModel(text_cfg, vision_cfg)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
            raise ValueError(f"{src}: does not match med_config.json: {first[:200]}") from exc
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"{src}: not an ImageReward-v1.0 checkpoint: missing {sorted(missing)[:4]} "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        if len(tokenizer) > text_cfg.vocab_size:
            raise ValueError(
                f"{folder / 'vocab.txt'}: {len(tokenizer)} tokens but the model has {text_cfg.vocab_size}"
            )
        return model, tokenizer

    @torch.no_grad()
    def image_scores(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """ImageReward score of each image with its prompt, ``(M,)``."""
        x = preprocess_images(images, self.input_size).to(self.device)
        tok = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        s = self.model(x, tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))
        return s.float().cpu()
