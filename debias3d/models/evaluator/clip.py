"""HyperScore on CLIP ViT-B/16 — the real evaluator backend (registry: ``hyperscore-clip``).

A port of the released HyperScore (zhangyujie-1998/HyperScore, ``HyperScore.py`` and
``model/networks.py``) onto ``transformers.CLIPModel``. For quality dimension ``i`` (MATE-3D Eq. 4):

* patch features ``P`` ``(B, 6·196, 512)``: each view's CLIP patch tokens without the class token,
  ``visual_projection(post_layernorm(h[:, 1:]))`` (upstream ``ln_post(x[:, 1:, :]) @ proj``);
* prompt token features ``T`` ``(B, 77, 512)``: every prompt is padded to 77 tokens with id 0 as
  OpenAI's ``clip.tokenize`` does, runs through the text tower with CLIP's causal mask, and *all*
  77 projected positions are kept, padding included; ``t`` is the EOT feature;
* condition features ``f_c^i`` ``(K, 512)``: the EOT feature of the learned prompt
  ``[SOS] name_i ctx_1 … ctx_12 . [EOT] 0 …`` (CoOp, class-specific context,
  ``class_token_position='front'``);
* patch weights ``w_{n,i} = softmax_n(Σ_t cos(T_t, f_c^i) · cos(T_t, P_n))`` with the sum over all
  77 positions; fused ``(Σ_n w_{n,i} P_n) ⊙ t`` → ``fc_quality`` (512→224);
* ``π``: ``fc_condition`` (512→112·7·7) and HyperIQA's hypernetwork (three 3×3 conv weight
  generators + ``fc4w_fc``) → a target net 224→112→56→28→1 with ReLU (``ψ``).

Views are rendered at 512 px with meshes centred on their vertex mean and scaled to unit radius
(``MeshRenderer3D.normalize_verts``), resized to 224 px and normalised with the ImageNet mean/std,
as HyperScore's ``demo.py`` does. The text side is split (``embed_tokens`` → ``forward_embeds``) so
that :meth:`score_from_embeddings` is differentiable w.r.t. the prompt's token embeddings.

A zero in ``attention_mask`` *before* a prompt's EOT (a word the caller deleted) removes that token
from the text attention and from the patch-weight sum; positions after the EOT are padding and
count, as upstream. With the mask :meth:`CLIPHyperScore.tokenize` returns, this is upstream's model.

HyperScore ships a pickled ``checkpoint/model.pth``; this project reads only safetensors. Convert it
once (``docs/hyperscore.md``)::

    debias3d convert-hyperscore --checkpoint HyperScore/checkpoint/model.pth \\
        --clip /models/clip-vit-base-patch16 --out /models/hyperscore

and set ``evaluator: hyperscore-clip`` with ``evaluator_weights: /models/hyperscore``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debias3d.models.evaluator.config import CLIPHyperScoreConfig
from debias3d.models.evaluator.layers import target_mlp
from debias3d.models.evaluator.model import HyperScoreBase

__all__ = [
    "CLIPHyperScore",
    "HyperIQANet",
    "convert_hyperscore_checkpoint",
    "hf_clip_to_openai",
    "map_hyperscore_state_dict",
    "openai_clip_to_hf",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Files of a transformers CLIP folder that a converted evaluator folder keeps (no weights).
CLIP_CONFIG_FILES: tuple[str, ...] = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)
#: Name of the converted evaluator's weights and config inside its folder.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "debias3d-hyperscore-clip"

_CONVERT_HINT = (
    "convert HyperScore's checkpoint/model.pth once with `debias3d convert-hyperscore --checkpoint "
    "model.pth --clip CLIP_FOLDER --out DIR` and set evaluator_weights to DIR (docs/hyperscore.md)"
)


# --------------------------------------------------------------------------------------------- hypernet
class HyperIQANet(nn.Module):
    """HyperIQA's weight generator as HyperScore uses it, fed with a ``(K, C, s, s)`` condition map.

    For ``sizes = (in, f1, …, fL)`` it generates, per condition, a target net
    ``in → f1 → … → fL → 1``: the weights of the first ``L`` layers from 3×3 convolutions
    (``fc{j}w_conv``, reshaped as ``view(-1, out, in)``), the last layer's weights (``fc{L+1}w_fc``)
    and all biases (``fc{j}b_fc``) from the average-pooled map. HyperScore: ``sizes = (224, 112,
    56, 28)``, ``C = 112``, ``s = 7``.
    """

    def __init__(self, channels: int = 112, sizes: Sequence[int] = (224, 112, 56, 28), feature_size: int = 7):
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
    """HyperScore's TargetNet: ReLU after every layer but the last. ``x`` ``(B, K, in)`` → ``(B, K)``."""
    return target_mlp(x, params, act=torch.relu)


def _eot_index(mask: Tensor) -> Tensor:
    """Index of each row's last real token (the EOT), ``(B, T)`` → ``(B,)``."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return (mask.bool().long() * (pos + 1)).argmax(1)


def _counted(mask: Tensor) -> Tensor:
    """Positions that take part: real tokens and the padding after the EOT (not deleted words)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return mask.bool() | (pos[None] > _eot_index(mask)[:, None])


# --------------------------------------------------------------------------------------------- model
class CLIPHyperScore(HyperScoreBase):
    """HyperScore with a ``transformers.CLIPModel`` (ViT-B/16 for the released checkpoint).

    Parameter names follow upstream's ``state_dict`` (``prompt_learner.ctx`` /
    ``token_prefix`` / ``token_suffix``, ``fc_quality``, ``fc_condition``, ``hypernet.*``), with
    the CLIP weights under ``clip.`` in ``transformers`` layout.

    Args:
        config: sizes; defaults to :class:`CLIPHyperScoreConfig`.
        clip_model: a ``CLIPModel`` (frozen here); built from ``config.clip_path`` when None.
        tokenizer: a CLIP tokenizer (called like a HF tokenizer with ``return_offsets_mapping``);
            loaded from ``config.clip_path`` when None.

    Scores lie on ``score_range = (0, 10)``: the released checkpoint regresses MATE-3D's mean
    opinion scores, rated from 0 to 10 (its ``csvfiles/*.csv``); the head itself is unbounded.
    """

    score_range: tuple[float, float] = (0.0, 10.0)

    def __init__(
        self,
        config: CLIPHyperScoreConfig | None = None,
        clip_model: Any = None,
        tokenizer: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or CLIPHyperScoreConfig()
        if clip_model is None or tokenizer is None:
            clip_dir = _check_clip_folder(config.clip_path)
            from transformers import AutoTokenizer, CLIPConfig, CLIPModel

            if clip_model is None:
                # Weights come from the converted checkpoint; the folder gives only the architecture.
                clip_model = CLIPModel(CLIPConfig.from_pretrained(clip_dir, local_files_only=True))
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
        self.clip = clip_model
        self.tokenizer = tokenizer
        for p in self.clip.parameters():
            p.requires_grad_(False)
        d = int(self.clip.config.projection_dim)
        e = int(self.clip.config.text_config.hidden_size)
        self.max_length = int(config.context_length)
        if self.max_length > int(self.clip.config.text_config.max_position_embeddings):
            raise ValueError(
                f"CLIPHyperScoreConfig.context_length {self.max_length} exceeds the CLIP text tower's "
                f"{self.clip.config.text_config.max_position_embeddings} positions"
            )
        k = len(config.dimensions)
        self.prompt_learner = nn.Module()
        self.prompt_learner.ctx = nn.Parameter(torch.randn(k, config.n_ctx, e) * 0.02)
        prefix, suffix, name_lens, eot = self._condition_prompt_tokens()
        # Upstream keeps these token embeddings as (persistent) buffers; a checkpoint's copies win.
        self.prompt_learner.register_buffer("token_prefix", prefix)
        self.prompt_learner.register_buffer("token_suffix", suffix)
        self.name_lens = name_lens
        self.register_buffer("cond_eot", eot, persistent=False)
        c, s = config.hyper_in_channels, config.feature_size
        self.fc_quality = nn.Linear(d, config.target_sizes[0])
        self.fc_condition = nn.Linear(d, c * s * s)
        self.hypernet = HyperIQANet(c, config.target_sizes, s)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ----------------------------------------------------------------- views
    @property
    def view_cache(self) -> Any:
        """MATE-3D's six views at ``render_size``, meshes centred on their vertex mean (HyperScore)."""
        if self._view_cache is None:
            from debias3d.models.evaluator.views import ViewCache
            from debias3d.render.cameras import CameraRig, mate3d_rig

            rig = mate3d_rig()
            rig = CameraRig(
                "hyperscore", rig.cameras, normalize="unit_sphere_mean", fovs=rig.fovs, background="white"
            )
            # 512 px views are 4.7 MB each (uint8); keep the cache to about 1.2 GB.
            self._view_cache = ViewCache(rig=rig, image_size=self.config.render_size, max_items=256)
        return self._view_cache

    @view_cache.setter
    def view_cache(self, cache: Any) -> None:
        self._view_cache = cache

    # ----------------------------------------------------------------- text side
    @property
    def text_encoder(self) -> CLIPHyperScore:
        """This model: ``tokenize`` / ``embed_tokens`` / ``forward_embeds`` live on the class."""
        return self

    @property
    def dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def _token_ids(self, prompts: Sequence[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        enc = self.tokenizer(
            list(prompts), truncation=True, max_length=self.max_length, return_offsets_mapping=True
        )
        ids = [list(map(int, row)) for row in enc["input_ids"]]
        offsets = [[(int(a), int(b)) for a, b in row] for row in enc["offset_mapping"]]
        return ids, offsets

    def tokenize(self, prompts: Sequence[str]) -> Any:
        """CLIP tokens padded to ``context_length`` (77) with ``pad_token_id`` (0), as ``clip.tokenize``.

        Returns:
            ``input_ids`` ``(B, 77)``, ``attention_mask`` ``(B, 77)`` (1 on ``[SOS] … [EOT]``),
            ``offset_mapping`` ``(B, 77, 2)`` character spans (``(0, 0)`` on special tokens).
        """
        from transformers import BatchEncoding

        ids, offsets = self._token_ids(prompts)
        b, t = len(ids), self.max_length
        out_ids = torch.full((b, t), int(self.config.pad_token_id), dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        spans = torch.zeros((b, t, 2), dtype=torch.long)
        for i, (row, off) in enumerate(zip(ids, offsets, strict=True)):
            out_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            spans[i, : len(off)] = torch.tensor(off).view(-1, 2)
        device = self.clip.text_model.embeddings.token_embedding.weight.device
        return BatchEncoding({"input_ids": out_ids, "attention_mask": mask, "offset_mapping": spans}).to(
            device
        )

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """``(B, T)`` → ``(B, T, E)`` CLIP token embeddings (no positions; added in ``forward_embeds``)."""
        emb = self.clip.text_model.embeddings.token_embedding
        return emb(input_ids.to(emb.weight.device))

    def forward_embeds(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """CLIP text tower over ``inputs_embeds`` ``(B, T, E)`` → projected features of every position ``(B, T, D)``.

        Upstream's ``TextEncoder``: positions added, CLIP's causal mask, ``ln_final``, then
        ``@ text_projection`` on all positions. Tokens masked out before the EOT are hidden from
        every query (deleted words); the padding after the EOT is attended to as upstream does.
        """
        tm = self.clip.text_model
        b, t = inputs_embeds.shape[:2]
        pos = torch.arange(t, device=inputs_embeds.device)[None]
        hidden = tm.embeddings(inputs_embeds=inputs_embeds, position_ids=pos)
        allowed = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()[None].expand(b, t, t)
        if attention_mask is not None:
            allowed = allowed & _counted(attention_mask.to(hidden.device))[:, None, :]
        bias = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        bias = bias.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]
        enc = tm.encoder(inputs_embeds=hidden, attention_mask=bias)
        last = enc[0] if isinstance(enc, tuple) else enc.last_hidden_state
        return self.clip.text_projection(tm.final_layer_norm(last))

    def _condition_prompt_tokens(self) -> tuple[Tensor, Tensor, list[int], Tensor]:
        """Upstream ``PromptLearner.__init__``: embeddings of ``"X … X name."`` split around the context.

        Returns ``token_prefix`` ``(K, 1, E)`` (SOS), ``token_suffix`` ``(K, T - 1 - n_ctx, E)``
        (name, ``.``, EOT, padding), the name lengths and the EOT index of each learned prompt.
        """
        cfg = self.config
        names = [n.replace("_", " ") for n in cfg.dimension_prompts]
        name_ids, _ = self._token_ids(names)
        full_ids, _ = self._token_ids([f"{n}." for n in names])
        t = self.max_length
        rows, name_lens, eot = [], [], []
        for name_row, row in zip(name_ids, full_ids, strict=True):
            name_lens.append(len(name_row) - 2)  # without SOS / EOT
            ids = [row[0], *([cfg.pad_token_id] * cfg.n_ctx), *row[1:]]  # the X slots are replaced
            if len(ids) > t:
                raise ValueError(f"CLIPHyperScore: learned prompt for {row!r} longer than {t} tokens")
            eot.append(len(ids) - 1)
            rows.append(ids + [cfg.pad_token_id] * (t - len(ids)))
        with torch.no_grad():
            emb = self.embed_tokens(torch.tensor(rows, dtype=torch.long)).detach().float().cpu()
        prefix = emb[:, :1].clone()
        suffix = emb[:, 1 + cfg.n_ctx :].clone()
        return prefix, suffix, name_lens, torch.tensor(eot, dtype=torch.long)

    def condition_prompts(self) -> Tensor:
        """Upstream ``PromptLearner.forward``: the learned prompts' input embeddings ``(K, T, E)``."""
        pl = self.prompt_learner
        prefix, suffix, ctx = pl.token_prefix, pl.token_suffix, pl.ctx
        if self.config.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        for i, n in enumerate(self.name_lens):
            rows.append(
                torch.cat(
                    [prefix[i : i + 1], suffix[i : i + 1, :n], ctx[i : i + 1], suffix[i : i + 1, n:]], 1
                )
            )
        return torch.cat(rows, dim=0)

    def _condition_features(self) -> Tensor:
        """``f_c`` ``(K, D)``: the learned prompts through the text tower, EOT features."""
        emb = self.condition_prompts()
        feats = self.forward_embeds(emb.to(self.fc_condition.weight.dtype))
        return feats[torch.arange(feats.shape[0], device=feats.device), self.cond_eot.to(feats.device)]

    # ----------------------------------------------------------------- image side
    def encode_views(self, views: Tensor) -> Tensor:
        """``(B, V, 3, H, W)`` in [0, 1] → projected patch tokens without the class token ``(B, V·P, D)``."""
        b, v = views.shape[:2]
        x = views.flatten(0, 1)
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            # torchvision's Resize on tensors, as in demo.py (no antialiasing before torchvision 0.17)
            x = F.interpolate(
                x,
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=self.config.resize_antialias,
            )
        x = (x - self.mean) / self.std
        vm = self.clip.vision_model
        out = vm(pixel_values=x)
        tokens = vm.post_layernorm(out.last_hidden_state[:, 1:])  # upstream ln_post(x[:, 1:, :])
        feats = self.clip.visual_projection(tokens)
        return feats.reshape(b, v * feats.shape[1], -1)

    def forward(self, views: Tensor, text_features: Tensor, mask: Tensor) -> Tensor:
        """Eq. 4 for all dimensions: ``(B, V, 3, H, W)``, ``(B, T, D)``, ``(B, T)`` → ``(B, K)``."""
        return self.forward_features(self.encode_views(views), text_features, mask)

    def forward_features(self, patches: Tensor, text_features: Tensor, mask: Tensor) -> Tensor:
        """Eq. 4 on cached patch tokens ``(B, N, D)`` from :meth:`encode_views`.

        ``mask`` ``(B, T)``: see :meth:`forward_embeds`; the padding after the EOT is summed over.
        """
        keep = _counted(mask).to(text_features.dtype).unsqueeze(1)  # (B, 1, T)
        cond = self.condition_features()  # (K, D)
        tn, pn, cn = (F.normalize(x, dim=-1) for x in (text_features, patches, cond))
        sim_tex = torch.einsum("btd,bnd->bnt", tn, pn) * keep  # (B, N, T)
        sim_cond = torch.einsum("btd,kd->bkt", tn, cn)  # (B, K, T)
        w = torch.softmax(torch.einsum("bkt,bnt->bnk", sim_cond, sim_tex), dim=1)  # over patches
        eot = text_features[torch.arange(text_features.shape[0], device=mask.device), _eot_index(mask)]
        fused = torch.einsum("bnk,bnd->bkd", w, patches) * eot[:, None]
        q = self.fc_quality(fused)  # (B, K, 224)
        s = self.config.feature_size
        params = self.hypernet(self.fc_condition(cond).view(cond.shape[0], -1, s, s))
        return _target_net(q, params)

    # ----------------------------------------------------------------- persistence
    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a converted checkpoint strictly: every key of this model, nothing else."""
        from debias3d.models.persistence import load_safetensors

        state = load_safetensors(path)
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # size mismatches: name the first one on one line
            first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
            raise ValueError(f"{path}: not a HyperScore checkpoint for this config: {first}") from None
        missing = [k for k in missing if "position_ids" not in k]
        if missing or unexpected:
            raise ValueError(
                f"{path}: not a HyperScore checkpoint for this config: missing keys {missing[:6]}, "
                f"unexpected keys {unexpected[:6]}"
            )
        self._clear_condition_cache()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        **kw: Any,
    ) -> CLIPHyperScore:
        """Build from a folder written by :func:`convert_hyperscore_checkpoint` (``evaluator_weights``).

        Args:
            path: the converted folder (``config.json``, ``model.safetensors``, ``clip/``), or a
                transformers CLIP folder when ``checkpoint`` names the converted safetensors file.
            checkpoint: converted weights, only with a CLIP folder as ``path``.
            device: torch device.
            **kw: :class:`CLIPHyperScoreConfig` overrides.

        Raises:
            FileNotFoundError: a one-line message naming what to set, before anything is built.
        """
        from debias3d.config import from_dict
        from debias3d.models.persistence import read_json

        if path is None or not str(path):
            raise FileNotFoundError(f"hyperscore-clip: evaluator_weights is not set; {_CONVERT_HINT}")
        folder = Path(path)
        if checkpoint is None:
            weights, cfg_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
            if not folder.is_dir() or not weights.is_file() or not cfg_file.is_file():
                raise FileNotFoundError(
                    f"hyperscore-clip: {folder} is not a converted HyperScore folder (needs "
                    f"{CONFIG_FILE} and {WEIGHTS_FILE}); {_CONVERT_HINT}"
                )
            data = read_json(cfg_file)
            if data.get("format") != FORMAT:
                raise ValueError(
                    f"{cfg_file}: not written by convert-hyperscore (format {data.get('format')!r})"
                )
            cfg_dict = {**data["config"], **kw}
            clip = Path(cfg_dict.get("clip_path") or "clip")
            cfg_dict["clip_path"] = str(clip if clip.is_absolute() else folder / clip)
            cfg = from_dict(CLIPHyperScoreConfig, cfg_dict, source=str(cfg_file))
        else:
            weights = Path(checkpoint)
            if not weights.is_file():
                raise FileNotFoundError(f"hyperscore-clip: checkpoint {weights} not found; {_CONVERT_HINT}")
            cfg = CLIPHyperScoreConfig(clip_path=str(folder), **kw)
        clip_dir = _check_clip_folder(cfg.clip_path)
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel

        tokenizer = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
        clip_config = CLIPConfig.from_pretrained(clip_dir, local_files_only=True)
        try:  # every weight is loaded from the checkpoint below: skip the random init
            from transformers.initialization import no_init_weights
        except ImportError:  # older transformers
            from contextlib import nullcontext as no_init_weights
        with no_init_weights():
            clip_model = CLIPModel(clip_config)
        model = cls(cfg, clip_model=clip_model, tokenizer=tokenizer)
        model.load_weights(weights)
        return model.to(device).eval()


def _check_clip_folder(clip_path: str | os.PathLike) -> Path:
    """The CLIP folder, or a one-line :class:`FileNotFoundError` naming what is missing."""
    folder = Path(clip_path) if clip_path else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            f"hyperscore-clip: CLIP folder {str(clip_path)!r} not found; it needs the config and "
            "tokenizer files of openai/clip-vit-base-patch16 (copied into the converted folder by "
            "`debias3d convert-hyperscore`, or set clip_path)"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"hyperscore-clip: CLIP folder {folder} has no config.json")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise FileNotFoundError(
            f"hyperscore-clip: CLIP folder {folder} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)"
        )
    return folder


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


#: Upstream ``TextEncoder`` attributes: views of the same ``clip_model`` modules, saved twice.
_TEXT_ENCODER_PREFIXES = ("transformer.", "positional_embedding", "ln_final.", "text_projection")
#: Head keys kept under their upstream names.
_HEAD_PREFIXES = ("prompt_learner.", "fc_quality.", "fc_condition.", "hypernet.")


def map_hyperscore_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HyperScore's ``state_dict`` → this project's :class:`CLIPHyperScore` keys, accounting for every key.

    * ``clip_model.*`` (OpenAI CLIP layout) → ``clip.*`` in ``transformers`` layout;
    * ``text_encoder.*`` must equal the ``clip_model.*`` tensor it is a view of, and is dropped;
    * ``prompt_learner.{ctx,token_prefix,token_suffix}``, ``fc_quality.*``, ``fc_condition.*``,
      ``hypernet.*`` keep their names.

    Raises:
        ValueError: a key that is none of these, or a ``text_encoder.*`` copy that differs.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    clip_keys = {k[len("clip_model.") :]: v for k, v in state.items() if k.startswith("clip_model.")}
    out: dict[str, Tensor] = {f"clip.{k}": v for k, v in openai_clip_to_hf(clip_keys).items()}
    unknown: list[str] = []
    for key, val in state.items():
        if key.startswith("clip_model."):
            continue
        if key.startswith("text_encoder."):
            rest = key[len("text_encoder.") :]
            twin = clip_keys.get(rest)
            if not rest.startswith(_TEXT_ENCODER_PREFIXES) or twin is None:
                unknown.append(key)
            elif twin.shape != val.shape or not torch.equal(twin, val):
                raise ValueError(f"HyperScore checkpoint: {key} differs from clip_model.{rest}")
            continue
        if key.startswith(_HEAD_PREFIXES):
            out[key] = val
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"HyperScore checkpoint: {len(unknown)} unknown keys, e.g. {unknown[:4]}")
    return out


def convert_hyperscore_checkpoint(
    pth: str | os.PathLike, out: str | os.PathLike, clip: str | os.PathLike
) -> Path:
    """Convert HyperScore's ``checkpoint/model.pth`` into a folder ``hyperscore-clip`` loads.

    Reads the checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling), maps
    every key with :func:`map_hyperscore_state_dict`, and writes ``out/model.safetensors`` (fp32),
    ``out/config.json`` (:class:`CLIPHyperScoreConfig` with HyperScore's settings) and ``out/clip/``
    (the CLIP folder's config and tokenizer files; its weights are not needed: the checkpoint holds
    them). Then ``CLIPHyperScore.from_pretrained(out)`` or ``evaluator_weights: out``.

    Args:
        pth: ``checkpoint/model.pth`` from the HyperScore release.
        out: output folder (created).
        clip: a transformers ``openai/clip-vit-base-patch16`` folder (config + tokenizer files).

    Returns:
        ``out``.
    """
    from dataclasses import asdict

    from safetensors.torch import save_file

    pth, out = Path(pth), Path(out)
    if not pth.is_file():
        raise FileNotFoundError(
            f"convert-hyperscore: checkpoint {pth} not found (HyperScore's checkpoint/model.pth)"
        )
    clip_dir = _check_clip_folder(clip)
    try:
        state = torch.load(str(pth), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — unpickling errors have many types; report them in one line
        raise ValueError(
            f"convert-hyperscore: cannot read {pth} as a weights-only checkpoint: {exc}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"convert-hyperscore: {pth} is not a state dict of tensors")
    mapped = map_hyperscore_state_dict(state)
    del state
    mapped = {k: v.detach().float().contiguous() for k, v in mapped.items()}
    n_ctx = int(mapped["prompt_learner.ctx"].shape[1]) if "prompt_learner.ctx" in mapped else 12
    cfg = CLIPHyperScoreConfig(clip_path="clip", n_ctx=n_ctx)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip").mkdir(exist_ok=True)
    for name in CLIP_CONFIG_FILES:
        if (clip_dir / name).is_file():
            shutil.copyfile(clip_dir / name, out / "clip" / name)
    save_file(mapped, str(out / WEIGHTS_FILE), metadata={"format": "pt", "source": pth.name})
    meta = {"format": FORMAT, "source": pth.name, "config": asdict(cfg)}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("convert-hyperscore: wrote %d tensors to %s", len(mapped), out)
    return out
