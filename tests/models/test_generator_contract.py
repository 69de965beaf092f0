"""The generator contract through the command line: `generate --adapter`, `world fidelity --adapter`,
`finetune merge` keeping the training record, and the builder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from debias3d.cli import app

runner = CliRunner()
SHIPPED_RECORD = (
    Path(__file__).resolve().parents[2] / "debias3d" / "assets" / "mini_trellis" / "training_record.json"
)


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory, tiny_config, tiny_encoder, tiny_bert_dir):
    """A tiny mini-TRELLIS weights folder (with the shipped model's training record) and a LoRA
    adapter for it whose B matrices are random, so it changes the samples."""
    from debias3d.finetune.config import LoraSettings
    from debias3d.finetune.lora import add_lora, lora_parameters
    from debias3d.models.backbone.generator import MiniTrellisGenerator
    from debias3d.models.generator import write_adapter_info

    from .conftest import randomize_outputs

    root = tmp_path_factory.mktemp("contract")
    fast = {"steps": 2, "cfg_strength": 2.0, "cfg_interval": [0.0, 1.0], "rescale_t": 1.0}
    config = dataclasses.replace(
        tiny_config,
        text_encoder_path=str(tiny_bert_dir),
        stage1=dataclasses.replace(tiny_config.stage1, resolution=8),
        stage2=dataclasses.replace(tiny_config.stage2, resolution=8),
        sparse_structure_sampler_params=dict(fast),
        slat_sampler_params=dict(fast),
    )
    torch.manual_seed(0)
    gen = MiniTrellisGenerator(config, text_encoder=tiny_encoder)
    randomize_outputs(gen)
    gen.metadata["training_record"] = json.loads(SHIPPED_RECORD.read_text())
    base = gen.save_pretrained(root / "base")
    assert (base / "training_record.json").is_file()

    model = add_lora(gen, LoraSettings(rank=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    adapter = root / "adapter"
    model.save_pretrained(str(adapter))
    write_adapter_info(adapter, {"generator": "mini-trellis", "generator_path": str(base)})
    return base, adapter


def _occupancy(folder: Path) -> list[int]:
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    return [r["voxels"] for r in rows]


def test_generate_with_adapter(base_and_adapter, tmp_path):
    """`generate --adapter` samples the adapted model: the same voxels as loading the adapter in
    process, other voxels than the base model."""
    from debias3d.models.generator import GeneratorSpec, build_generator

    base, adapter = base_and_adapter
    args = ["generate", "a red vase", "a tall blue cup", "--weights", str(base), "--samples", "2"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    tuned = runner.invoke(app, [*args, "--adapter", str(adapter), "--out", str(tmp_path / "tuned")])
    assert plain.exit_code == 0, plain.output
    assert tuned.exit_code == 0, tuned.output
    gen = build_generator(GeneratorSpec("mini-trellis", str(base)), adapter=adapter)
    assert gen.metadata["adapter"] == str(adapter)
    want = [
        int(a.voxels.occupancy.sum())
        for a in gen.generate(["a red vase", "a tall blue cup"], seeds=[0, 0], num_samples=2)
    ]
    assert _occupancy(tmp_path / "tuned") == want
    assert _occupancy(tmp_path / "tuned") != _occupancy(tmp_path / "plain")


def test_an_adapter_without_weights_loads_the_model_it_was_trained_from(base_and_adapter, tmp_path):
    """`generate --adapter` with no `--weights` samples the base weights the adapter records."""
    base, adapter = base_and_adapter
    args = ["generate", "a red vase", "--samples", "2", "--adapter", str(adapter)]
    given = runner.invoke(app, [*args, "--weights", str(base), "--out", str(tmp_path / "given")])
    recorded = runner.invoke(app, [*args, "--out", str(tmp_path / "recorded")])
    assert given.exit_code == 0, given.output
    assert recorded.exit_code == 0, recorded.output
    assert _occupancy(tmp_path / "recorded") == _occupancy(tmp_path / "given")


def test_generate_with_a_folder_that_is_not_an_adapter(base_and_adapter, tmp_path):
    base, _ = base_and_adapter
    result = runner.invoke(
        app, ["generate", "a red vase", "--weights", str(base), "--adapter", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "not a LoRA adapter folder" in result.output


def _fidelity(argv: list[str], out: Path) -> dict:
    result = runner.invoke(
        app, ["world", "fidelity", *argv, "--per-category", "1", "--samples", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def test_world_fidelity_with_adapter_matches_the_adapted_model(base_and_adapter, tmp_path):
    import pandas as pd

    from debias3d.data.shapeworld.grammar import evaluation_prompts
    from debias3d.eval.fidelity import run_fidelity
    from debias3d.models.generator import GeneratorSpec, build_generator

    base, adapter = base_and_adapter
    summary = _fidelity(["--weights", str(base), "--adapter", str(adapter)], tmp_path / "f")
    gen = build_generator(GeneratorSpec("mini-trellis", str(base)), adapter=adapter)
    want = run_fidelity(gen, evaluation_prompts(1, seed=0), D=1, seed=0)
    got = pd.read_csv(tmp_path / "f" / "samples.csv")
    assert got["fidelity"].tolist() == pytest.approx(want.samples["fidelity"].tolist(), nan_ok=True)
    assert summary["fidelity"] == pytest.approx(want.summary["fidelity"])
    # the base model's corpus record splits the words into frequent and rare
    assert (
        summary["corpus_n_prompts"]
        == json.loads(SHIPPED_RECORD.read_text())["corpus"]["word_counts"]["n_prompts"]
    )


def test_merged_model_keeps_its_record_and_its_samples(base_and_adapter, tmp_path):
    """`finetune merge` writes a folder that loads to the adapted model and keeps the training
    record, so `world fidelity --weights merged` still reports frequent and rare words."""
    from debias3d.models.generator import GeneratorSpec, build_generator

    base, adapter = base_and_adapter
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["finetune", "merge", "--adapter", str(adapter), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert json.loads((merged / "training_record.json").read_text()) == json.loads(
        (base / "training_record.json").read_text()
    )
    assert json.loads((merged / "merge_record.json").read_text())["merged_from"] == str(adapter)

    prompts = ["a red vase", "a tall blue cup"]
    via_adapter = build_generator(GeneratorSpec("mini-trellis", str(base)), adapter=adapter)
    from_merged = build_generator(GeneratorSpec("mini-trellis", str(merged)))
    for a, b in zip(via_adapter.flow_models.values(), from_merged.flow_models.values(), strict=True):
        for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert na == nb
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    occ = [int(x.voxels.occupancy.sum()) for x in from_merged.generate(prompts, seeds=0, num_samples=2)]
    assert occ == [
        int(x.voxels.occupancy.sum()) for x in via_adapter.generate(prompts, seeds=0, num_samples=2)
    ]

    summary = _fidelity(["--weights", str(merged)], tmp_path / "f")
    assert "frequent_words" in summary and "rare_words" in summary
    assert summary["frequent_words"] or summary["rare_words"]


def test_merge_adapter_needs_a_loaded_adapter(base_and_adapter, tmp_path):
    from debias3d.models.generator import GeneratorSpec, build_generator

    base, adapter = base_and_adapter
    gen = build_generator(GeneratorSpec("mini-trellis", str(base)))
    with pytest.raises(ValueError, match="load_adapter"):
        gen.merge_adapter(tmp_path / "m")
    # loaded unmerged, merge_adapter folds it in: the written weights equal the merged load
    gen.load_adapter(adapter, merge=False)
    out = gen.merge_adapter(tmp_path / "m")
    merged = build_generator(GeneratorSpec("mini-trellis", str(base)), adapter=adapter)
    again = build_generator(GeneratorSpec("mini-trellis", str(out)))
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_builder_names_the_choices_for_an_unknown_backend():
    from debias3d.models.generator import build_generator

    with pytest.raises(KeyError, match="mini-trellis"):
        build_generator("no-such-generator")


def test_backends_implement_the_contract():
    from debias3d.models.generator import GeneratorBase
    from debias3d.registry import find

    assert issubclass(find("generator", "mini-trellis"), GeneratorBase)
    assert issubclass(find("generator", "trellis"), GeneratorBase)
    assert find("generator", "mini-trellis").shares_text_encoder


@pytest.mark.parametrize("key", ["generator_weights", "generator_path"])
def test_an_adapter_record_names_its_base_generator_weights(tmp_path, key):
    """Records say ``generator_weights``; those written before the rename (``generator_path``) read the same."""
    from debias3d.models.generator import read_adapter_info, write_adapter_info

    write_adapter_info(tmp_path, {"generator": "mini-trellis", key: "/w/base"})
    info = read_adapter_info(tmp_path)
    assert info["generator_weights"] == "/w/base" and "generator_path" not in info
