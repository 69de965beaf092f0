"""HyperScore on CLIP ViT-B/16 — the real evaluator backend (registry: ``hyperscore-clip``).

The released HyperScore (MATE-3D) computes, for quality dimension ``i`` (Eq. 4 of the paper):

* patch features of all 6 views ``P`` ``(B, 6·197, 512)`` (CLIP visual tokens after ``ln_post`` and
  the visual projection) and prompt token features ``T`` ``(B, 77, 512)`` with EOT feature ``t``;
* condition features ``f_c^i`` from CoOp context + "alignment quality" … through CLIP's text tower;
* patch weights ``softmax_n(cos(P, T) · cos(f_c, T)ᵀ)``, fused ``(Σ_n w_n P_n) ⊙ t`` → ``fc_quality``
  (512→224);
* ``π``: ``fc_condition`` (512→112·7·7) and a HyperIQA hypernetwork → a target MLP
  224→112→56→28→14→1 with sigmoid activations (``ψ``).

Views are resized to 224 px and normalised with the ImageNet mean/std, as HyperScore's inference
code does. The text side is split (``embed_tokens`` → ``forward_embeds``) so that
:meth:`score_from_embeddings` is differentiable w.r.t. the prompt's token embeddings.

One-off checkpoint conversion (HyperScore ships a pickled ``checkpoint/model.pth``; this project
loads only safetensors)::

    from debias3d.models.evaluator.clip import convert_hyperscore_checkpoint
    convert_hyperscore_checkpoint("MATE-3D/checkpoint/model.pth", "hyperscore.safetensors")

It loads with ``torch.load(weights_only=True)``, maps OpenAI-CLIP keys to ``transformers.CLIPModel``
keys (:func:`openai_clip_to_hf`) under ``clip.``, keeps the head keys (``prompt_learner.ctx``,
``fc_quality``, ``fc_condition``, ``hypernet``) and drops the duplicated frozen text encoder and CoOp
buffers. Then::

    ev = CLIPHyperScore.from_pretrained("clip-vit-base-patch16/", "hyperscore.safetensors")
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debias3d.models.evaluator.config import CLIPHyperScoreConfig
from debias3d.models.evaluator.model import HyperScoreBase

__all__ = [
    "CLIPHyperScore",
    "HyperIQANet",
    "convert_hyperscore_checkpoint",
    "hf_clip_to_openai",
    "openai_clip_to_hf",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- hypernet
class HyperIQANet(nn.Module):
    """HyperIQA's weight generator (Su et al. 2020), fed with a ``(K, C, s, s)`` condition map.

    Generates, per condition, a target MLP ``in → f1 → f2 → f3 → f4 → 1``: weights of the first four
    layers from 3×3 convolutions, the last layer and all biases from the pooled map.
    Parameter names follow HyperIQA/HyperScore (``fc1w_conv``, ``fc1b_fc``, …, ``fc5w_fc``).
    """

    def __init__(
        self, channels: int = 112, sizes: Sequence[int] = (224, 112, 56, 28, 14), feature_size: int = 7
    ):
        super().__init__()
        self.sizes = tuple(sizes)
        s2 = feature_size**2
        for j, (i_size, o_size) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True), start=1):
            setattr(self, f"fc{j}w_conv", nn.Conv2d(channels, i_size * o_size // s2, 3, padding=1))
            setattr(self, f"fc{j}b_fc", nn.Linear(channels, o_size))
        last = len(self.sizes)
        setattr(self, f"fc{last}w_fc", nn.Linear(channels, self.sizes[-1]))
        setattr(self, f"fc{last}b_fc", nn.Linear(channels, 1))

    def forward(self, feat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``feat`` ``(K, C, s, s)`` → per layer ``(W (K, out, in), b (K, out))``."""
        k = feat.shape[0]
        pooled = feat.mean((2, 3))
        params = []
        for j, (i_size, o_size) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True), start=1):
            w = getattr(self, f"fc{j}w_conv")(feat).reshape(k, o_size, i_size)
            params.append((w, getattr(self, f"fc{j}b_fc")(pooled)))
        last = len(self.sizes)
        w = getattr(self, f"fc{last}w_fc")(pooled).reshape(k, 1, self.sizes[-1])
        params.append((w, getattr(self, f"fc{last}b_fc")(pooled)))
        return params


def _target_net(x: Tensor, params: list[tuple[Tensor, Tensor]]) -> Tensor:
    """HyperIQA's TargetNet: sigmoid between layers. ``x`` ``(B, K, in)`` → ``(B, K)``."""
    h = x
    for j, (w, b) in enumerate(params):
        h = torch.einsum("bki,koi->bko", h, w) + b
        if j < len(params) - 1:
            h = torch.sigmoid(h)
    return h.squeeze(-1)


# --------------------------------------------------------------------------------------------- model
class CLIPHyperScore(HyperScoreBase):
    """HyperScore with a ``transformers.CLIPModel`` (ViT-B/16 for the released checkpoint).

    Args:
        config: sizes; defaults to :class:`CLIPHyperScoreConfig`.
        clip_model: a ``CLIPModel`` (frozen here); loaded from ``config.clip_path`` when None.
        tokenizer: a callable like a HF tokenizer (``padding``, ``return_tensors="pt"``); loaded from
            ``config.clip_path`` when None.
    """

    def __init__(
        self,
        config: CLIPHyperScoreConfig | None = None,
        clip_model: Any = None,
        tokenizer: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or CLIPHyperScoreConfig()
        if clip_model is None or tokenizer is None:
            if not config.clip_path or not Path(config.clip_path).is_dir():
                raise FileNotFoundError(
                    f"CLIPHyperScore: CLIP folder {config.clip_path!r} not found; download "
                    "openai/clip-vit-base-patch16 once on a machine with network access and set clip_path"
                )
            from transformers import AutoTokenizer, CLIPModel

            clip_model = clip_model or CLIPModel.from_pretrained(config.clip_path, local_files_only=True)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.clip_path, local_files_only=True)
        self.clip = clip_model
        self.tokenizer = tokenizer
        for p in self.clip.parameters():
            p.requires_grad_(False)
        d = int(self.clip.config.projection_dim)
        e = int(self.clip.config.text_config.hidden_size)
        self.max_length = int(self.clip.config.text_config.max_position_embeddings)
        enc = self.tokenize(list(config.dimension_prompts))
        self.register_buffer("name_ids", enc["input_ids"].clone(), persistent=False)
        self.register_buffer("name_mask", enc["attention_mask"].clone(), persistent=False)
        self.prompt_learner = nn.Module()
        self.prompt_learner.ctx = nn.Parameter(torch.randn(len(config.dimensions), config.n_ctx, e) * 0.02)
        c, s = config.hyper_in_channels, config.feature_size
        self.fc_quality = nn.Linear(d, config.target_sizes[0])
        self.fc_condition = nn.Linear(d, c * s * s)
        self.hypernet = HyperIQANet(c, config.target_sizes, s)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ----------------------------------------------------------------- text side
    @property
    def text_encoder(self) -> CLIPHyperScore:
        """This model: ``tokenize`` / ``embed_tokens`` / ``forward_embeds`` live on the class."""
        return self

    @property
    def dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def tokenize(self, prompts: Sequence[str]) -> Any:
        """CLIP tokens padded to the longest prompt (≤ 77): ``input_ids``, ``attention_mask``."""
        return self.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """``(B, T)`` → ``(B, T, E)`` CLIP token embeddings (no positions; added in ``forward_embeds``)."""
        return self.clip.text_model.embeddings.token_embedding(input_ids)

    def forward_embeds(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """CLIP text tower over ``inputs_embeds`` ``(B, T, E)`` → projected token features ``(B, T, D)``.

        Causal attention as in CLIP (padding after EOT cannot influence real tokens); the EOT
        feature is the last real token's (``attention_mask.sum(1) - 1``).
        """
        tm = self.clip.text_model
        t = inputs_embeds.shape[1]
        pos = torch.arange(t, device=inputs_embeds.device)[None]
        hidden = tm.embeddings(inputs_embeds=inputs_embeds, position_ids=pos)
        causal = torch.full((t, t), float("-inf"), device=hidden.device, dtype=hidden.dtype).triu(1)
        enc = tm.encoder(
            inputs_embeds=hidden, attention_mask=causal[None, None].expand(hidden.shape[0], 1, t, t)
        )
        last = enc[0] if isinstance(enc, tuple) else enc.last_hidden_state
        return self.clip.text_projection(tm.final_layer_norm(last))

    @staticmethod
    def _eot(features: Tensor, mask: Tensor) -> Tensor:
        idx = mask.long().sum(1).clamp_min(1) - 1
        return features[torch.arange(features.shape[0], device=features.device), idx]

    def condition_features(self) -> Tensor:
        """``f_c`` ``(K, D)``: ``[SOT] ctx … name [EOT]`` through the text tower, EOT feature."""
        emb = self.embed_tokens(self.name_ids)
        k = emb.shape[0]
        full = torch.cat([emb[:, :1], self.prompt_learner.ctx, emb[:, 1:]], dim=1)
        ones = torch.ones(k, self.config.n_ctx, dtype=self.name_mask.dtype, device=self.name_mask.device)
        mask = torch.cat([self.name_mask[:, :1], ones, self.name_mask[:, 1:]], dim=1)
        return self._eot(self.forward_embeds(full, mask), mask)

    # ----------------------------------------------------------------- image side
    def encode_views(self, views: Tensor) -> Tensor:
        """``(B, V, 3, H, W)`` in [0, 1] → all projected patch tokens ``(B, V·(1+P), D)``."""
        b, v = views.shape[:2]
        x = self._fit_views(views).flatten(0, 1)
        x = (x - self.mean) / self.std
        vm = self.clip.vision_model
        out = vm(pixel_values=x)
        tokens = vm.post_layernorm(out.last_hidden_state)
        feats = self.clip.visual_projection(tokens)
        return feats.reshape(b, v * feats.shape[1], -1)

    def forward(self, views: Tensor, text_features: Tensor, mask: Tensor) -> Tensor:
        """Eq. 4 for all dimensions: ``(B, V, 3, H, W)``, ``(B, T, D)``, ``(B, T)`` → ``(B, K)``."""
        return self.forward_features(self.encode_views(views), text_features, mask)

    def forward_features(self, patches: Tensor, text_features: Tensor, mask: Tensor) -> Tensor:
        """Eq. 4 on cached patch tokens ``(B, N, D)`` from :meth:`encode_views`."""
        m = mask.to(text_features.dtype).unsqueeze(1)
        cond = self.condition_features()  # (K, D)
        tn, pn, cn = (F.normalize(x, dim=-1) for x in (text_features, patches, cond))
        sim_tex = torch.einsum("btd,bnd->bnt", tn, pn) * m  # (B, N, T)
        sim_cond = torch.einsum("btd,kd->bkt", tn, cn) * m  # (B, K, T)
        w = torch.softmax(torch.einsum("bkt,bnt->bnk", sim_cond, sim_tex), dim=1)  # over patches
        fused = torch.einsum("bnk,bnd->bkd", w, patches) * self._eot(text_features, mask)[:, None]
        q = self.fc_quality(fused)  # (B, K, 224)
        s = self.config.feature_size
        params = self.hypernet(self.fc_condition(cond).view(cond.shape[0], -1, s, s))
        return _target_net(q, params)

    # ----------------------------------------------------------------- persistence
    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a converted checkpoint: head keys, plus ``clip.*`` keys if present."""
        from debias3d.models.persistence import load_safetensors

        state = load_safetensors(path)
        head = {k: v for k, v in state.items() if not k.startswith("clip.")}
        clip_state = {k[len("clip.") :]: v for k, v in state.items() if k.startswith("clip.")}
        missing, unexpected = self.load_state_dict(head, strict=False)
        missing = [k for k in missing if not k.startswith("clip.")]
        if missing or unexpected:
            raise ValueError(f"{path}: missing head keys {missing[:6]}, unexpected keys {unexpected[:6]}")
        if clip_state:
            cm, cu = self.clip.load_state_dict(clip_state, strict=False)
            cm = [k for k in cm if "position_ids" not in k]
            if cm or cu:
                raise ValueError(f"{path}: CLIP keys missing {cm[:6]}, unexpected {cu[:6]}")

    @classmethod
    def from_pretrained(
        cls,
        clip_path: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        **kw: Any,
    ) -> CLIPHyperScore:
        """Build from a local CLIP folder and (optionally) a converted HyperScore safetensors file."""
        cfg = CLIPHyperScoreConfig(clip_path=str(clip_path), checkpoint=str(checkpoint or ""), **kw)
        model = cls(cfg)
        if checkpoint:
            model.load_weights(checkpoint)
        return model.to(device).eval()


# --------------------------------------------------------------------------------------------- conversion
_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_RES = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def openai_clip_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI-CLIP (``clip.load``) state dict → ``transformers.CLIPModel`` keys.

    Fused ``in_proj`` attention weights are split into ``q/k/v_proj``; ``visual.proj`` and
    ``text_projection`` (``x @ P``) become ``Linear`` weights (``P.T``).
    """
    out: dict[str, Tensor] = {}
    for key, val in state.items():
        if key in _TOP:
            out[_TOP[key]] = val
            continue
        if key == "visual.proj":
            out["visual_projection.weight"] = val.t().contiguous()
            continue
        if key == "text_projection":
            out["text_projection.weight"] = val.t().contiguous()
            continue
        m = _RES.match(key)
        if m is None:
            raise KeyError(f"openai_clip_to_hf: unknown CLIP key {key!r}")
        tower = "vision_model" if m.group(1) else "text_model"
        prefix = f"{tower}.encoder.layers.{m.group(2)}."
        rest = m.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), val.chunk(3, dim=0), strict=True):
                out[f"{prefix}self_attn.{name}.{kind}"] = chunk.contiguous()
        elif rest in _BLOCK:
            out[prefix + _BLOCK[rest]] = val
        else:
            raise KeyError(f"openai_clip_to_hf: unknown CLIP block key {key!r}")
    return out


def hf_clip_to_openai(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`openai_clip_to_hf` (used by tests to fake a HyperScore checkpoint)."""
    inv_top = {v: k for k, v in _TOP.items()}
    inv_block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, val in state.items():
        if "position_ids" in key:
            continue
        if key in inv_top:
            out[inv_top[key]] = val
        elif key == "visual_projection.weight":
            out["visual.proj"] = val.t().contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = val.t().contiguous()
        else:
            m = re.match(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$", key)
            if m is None:
                raise KeyError(f"hf_clip_to_openai: unknown key {key!r}")
            pre = ("visual." if m.group(1) == "vision_model" else "") + f"transformer.resblocks.{m.group(2)}."
            rest = m.group(3)
            qm = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
            if qm:
                qkv.setdefault((pre, qm.group(2)), {})[qm.group(1)] = val
            else:
                out[pre + inv_block[rest]] = val
    for (pre, kind), parts in qkv.items():
        out[f"{pre}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def convert_hyperscore_checkpoint(pth: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert HyperScore's ``checkpoint/model.pth`` to safetensors for :class:`CLIPHyperScore`.

    ``torch.load(weights_only=True)`` refuses arbitrary pickled objects. Kept: ``clip_model.*``
    (renamed to ``clip.*`` in ``transformers`` layout), ``prompt_learner.ctx``, ``fc_quality.*``,
    ``fc_condition.*``, ``hypernet.fc*``. Dropped: ``text_encoder.*`` (a view of the CLIP text tower),
    CoOp's token prefix/suffix buffers (recomputed from the tokenizer) and anything else, which is
    logged.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    state = torch.load(str(pth), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    clip_keys = {k[len("clip_model.") :]: v for k, v in state.items() if k.startswith("clip_model.")}
    keep: dict[str, Tensor] = (
        {f"clip.{k}": v for k, v in openai_clip_to_hf(clip_keys).items()} if clip_keys else {}
    )
    dropped = []
    for k, v in state.items():
        if k.startswith("clip_model."):
            continue
        if k == "prompt_learner.ctx" or k.startswith(("fc_quality.", "fc_condition.", "hypernet.fc")):
            keep[k] = v
        else:
            dropped.append(k)
    if dropped:
        logger.info("convert_hyperscore_checkpoint: dropped %d keys (e.g. %s)", len(dropped), dropped[:4])
    keep = {k: v.detach().float().contiguous() for k, v in keep.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(keep, str(out), metadata={"source": str(pth), "format": "pt"})
    return out
