"""HyperScore's forward pass transcribed from upstream (zhangyujie-1998/HyperScore @adfd115).

Written from ``HyperScore.py``, ``model/networks.py`` (``TextEncoder``, ``PromptLearner`` with
``class_token_position='front'``, ``HyperNet``, ``TargetNet``/``TargetFC``) and
``model/clip/model.py`` (``ResidualAttentionBlock``, ``VisionTransformer.forward_allpatch``,
``build_attention_mask``), on OpenAI-layout weights, with the hard-coded sizes of ``HyperNet``
(112, 224 → 112 → 56 → 28, 7×7) turned into arguments so a tiny CLIP can run it. Used only by
tests, to check the project's ``CLIPHyperScore`` against upstream's equations on the same weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import einsum, nn


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        orig_type = x.dtype
        return super().forward(x.type(torch.float32)).type(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head, mlp_dim, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, mlp_dim)),  # upstream: d_model * 4 (= ViT-B/16's)
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(mlp_dim, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask

    def attention(self, x):
        self.attn_mask = (
            self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        )
        return self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mlp_dim, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, mlp_dim, attn_mask) for _ in range(layers)]
        )

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, mlp_dim, output_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(
            torch.zeros((input_resolution // patch_size) ** 2 + 1, width)
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_dim)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward_allpatch(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = x.permute(0, 2, 1)
        x = torch.cat(
            [
                self.class_embedding.to(x.dtype)
                + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device),
                x,
            ],
            dim=1,
        )
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        x = self.ln_post(x[:, 1:, :])
        if self.proj is not None:
            x = x @ self.proj
        return x


class CLIP(nn.Module):
    """OpenAI CLIP (ViT) with the sizes of a ``transformers.CLIPConfig``."""

    def __init__(self, cfg):
        super().__init__()
        tc, vc = cfg.text_config, cfg.vision_config
        self.context_length = tc.max_position_embeddings
        self.visual = VisionTransformer(
            vc.image_size,
            vc.patch_size,
            vc.hidden_size,
            vc.num_hidden_layers,
            vc.num_attention_heads,
            vc.intermediate_size,
            cfg.projection_dim,
        )
        self.transformer = Transformer(
            tc.hidden_size,
            tc.num_hidden_layers,
            tc.num_attention_heads,
            tc.intermediate_size,
            attn_mask=self.build_attention_mask(),
        )
        self.token_embedding = nn.Embedding(tc.vocab_size, tc.hidden_size)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, tc.hidden_size))
        self.ln_final = LayerNorm(tc.hidden_size)
        self.text_projection = nn.Parameter(torch.empty(tc.hidden_size, cfg.projection_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def build_attention_mask(self):
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image_allpatch(self, image):
        return self.visual.forward_allpatch(image.type(self.dtype))


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts, tokenized_prompts):
        x = prompts + self.positional_embedding.type(self.dtype)
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        x_all = x @ self.text_projection
        x = x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection
        return x, x_all


def clip_tokenize(tokenizer, texts, context_length=77):
    """``clip.tokenize``: SOS … EOT, zero padded to ``context_length``."""
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, ids in enumerate(tokenizer(list(texts))["input_ids"]):
        out[i, : len(ids)] = torch.tensor(ids)
    return out


class PromptLearner(nn.Module):
    """CoOp with class-specific context (``csc=True``), random init, ``class_token_position='front'``."""

    def __init__(self, tokenizer, n_ctx, classnames, clip_model, ctx_vectors):
        super().__init__()
        n_cls = len(classnames)
        prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx_vectors)
        classnames = [name.replace("_", " ") for name in classnames]
        name_lens = [len(tokenizer([name])["input_ids"][0]) - 2 for name in classnames]  # _tokenizer.encode
        prompts = [prompt_prefix + " " + name + "." for name in classnames]
        tokenized_prompts = clip_tokenize(tokenizer, prompts)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized_prompts).type(clip_model.dtype)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.tokenized_prompts = tokenized_prompts
        self.name_lens = name_lens

    def forward(self):
        ctx, prefix, suffix = self.ctx, self.token_prefix, self.token_suffix
        prompts = []
        for i in range(self.n_cls):
            name_len = self.name_lens[i]
            prompt = torch.cat(
                [
                    prefix[i : i + 1],
                    suffix[i : i + 1, :name_len],
                    ctx[i : i + 1],
                    suffix[i : i + 1, name_len:],
                ],
                dim=1,
            )
            prompts.append(prompt)
        return torch.cat(prompts, dim=0)


class HyperNet(nn.Module):
    def __init__(self, channels, sizes, feature_size):
        super().__init__()
        s2 = feature_size**2
        i1, o1, o2, o3 = sizes
        self.c, self.sizes = channels, sizes
        self.fc1w_conv = nn.Conv2d(channels, i1 * o1 // s2, kernel_size=3, padding=1)
        self.fc1b_fc = nn.Linear(channels, o1)
        self.fc2w_conv = nn.Conv2d(channels, o1 * o2 // s2, kernel_size=3, padding=1)
        self.fc2b_fc = nn.Linear(channels, o2)
        self.fc3w_conv = nn.Conv2d(channels, o2 * o3 // s2, kernel_size=3, padding=1)
        self.fc3b_fc = nn.Linear(channels, o3)
        self.fc4w_fc = nn.Linear(channels, o3)
        self.fc4b_fc = nn.Linear(channels, 1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        i1, o1, o2, o3 = self.sizes
        fc1w = self.fc1w_conv(x).view(-1, o1, i1, 1, 1)
        fc2w = self.fc2w_conv(x).view(-1, o2, o1, 1, 1)
        fc3w = self.fc3w_conv(x).view(-1, o3, o2, 1, 1)
        fc4w = self.fc4w_fc(self.pool(x).squeeze()).view(-1, 1, o3, 1, 1)
        fc1b = self.fc1b_fc(self.pool(x).squeeze()).view(-1, o1)
        fc2b = self.fc2b_fc(self.pool(x).squeeze()).view(-1, o2)
        fc3b = self.fc3b_fc(self.pool(x).squeeze()).view(-1, o3)
        fc4b = self.fc4b_fc(self.pool(x).squeeze()).view(-1, 1)
        return {
            "fc1w": fc1w,
            "fc2w": fc2w,
            "fc3w": fc3w,
            "fc4w": fc4w,
            "fc1b": fc1b,
            "fc2b": fc2b,
            "fc3b": fc3b,
            "fc4b": fc4b,
        }


class TargetFC(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, input_):
        return F.conv2d(input=input_, weight=self.weight.squeeze(0), bias=self.bias.squeeze(0))


class TargetNet(nn.Module):
    def __init__(self, paras):
        super().__init__()
        self.fc1 = nn.Sequential(TargetFC(paras["fc1w"], paras["fc1b"]), nn.ReLU())
        self.fc2 = nn.Sequential(TargetFC(paras["fc2w"], paras["fc2b"]), nn.ReLU())
        self.fc3 = nn.Sequential(TargetFC(paras["fc3w"], paras["fc3b"]), nn.ReLU())
        self.fc4 = nn.Sequential(TargetFC(paras["fc4w"], paras["fc4b"]))

    def forward(self, x):
        return self.fc4(self.fc3(self.fc2(self.fc1(x))))


class HyperScore(nn.Module):
    """``HyperScore.HyperScore`` with the CLIP, tokenizer and sizes passed in."""

    def __init__(self, clip_model, tokenizer, quality_perspectives, n_ctx, d, channels, sizes, feature_size):
        super().__init__()
        self.clip_model = clip_model
        self.dtype = clip_model.dtype
        self.tokenizer = tokenizer
        k = len(quality_perspectives)
        ctx = torch.empty(k, n_ctx, clip_model.ln_final.weight.shape[0])
        nn.init.normal_(ctx, std=0.02)
        self.prompt_learner = PromptLearner(tokenizer, n_ctx, quality_perspectives, clip_model, ctx)
        self.tokenized_prompt = self.prompt_learner.tokenized_prompts
        self.text_encoder = TextEncoder(clip_model)
        self.fc_quality = nn.Linear(d, sizes[0])
        self.fc_condition = nn.Linear(d, channels * feature_size**2)
        self.hypernet = HyperNet(channels, sizes, feature_size)
        self.channels, self.feature_size = channels, feature_size

    def forward(self, texture_imgs, prompts):
        batch_size, num_views, channels, image_height, image_width = texture_imgs.shape
        texture_imgs = texture_imgs.reshape(-1, channels, image_height, image_width).type(self.dtype)
        prompts = clip_tokenize(self.tokenizer, prompts)
        prompt_embedding = self.clip_model.token_embedding(prompts)
        feature_texture = self.clip_model.encode_image_allpatch(texture_imgs)
        num_patches = feature_texture.shape[1]
        feature_texture = feature_texture.reshape(batch_size, num_views * num_patches, -1)
        feature_prompt_eot, feature_prompt = self.text_encoder(prompt_embedding, prompts)
        prompt_learner = self.prompt_learner()
        feature_condition, _ = self.text_encoder(prompt_learner, self.tokenized_prompt)
        feature_condition_expand = feature_condition.repeat(batch_size, 1, 1)
        sim_texture = einsum(
            "b i d, b j d -> b j i", F.normalize(feature_prompt, dim=2), F.normalize(feature_texture, dim=2)
        )
        sim_cond = einsum(
            "b i d, b j d -> b j i",
            F.normalize(feature_prompt, dim=2),
            F.normalize(feature_condition_expand, dim=2),
        )
        patch_weight = einsum("b i d, b j d -> b j i", sim_cond, sim_texture)
        patch_weight = F.softmax(patch_weight, dim=1)
        feature_condition = self.fc_condition(feature_condition)
        feature_condition = feature_condition.reshape(-1, self.channels, self.feature_size, self.feature_size)
        score_list = torch.Tensor([])
        for i in range(0, feature_condition.shape[0]):
            feature_texture_fused = torch.sum(feature_texture * patch_weight[:, :, i].unsqueeze(2), dim=1)
            feature_fused = torch.mul(feature_texture_fused, feature_prompt_eot)
            feature_quality = self.fc_quality(feature_fused).unsqueeze(2).unsqueeze(3)
            param = self.hypernet(feature_condition[i])
            targetnet = TargetNet(param)
            score = targetnet(feature_quality)
            score_list = torch.cat([score_list, score], dim=1)
        return {"score_list": score_list}
