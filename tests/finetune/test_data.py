"""Bad inputs: missing / empty datasets, broken pairs (skipped and counted), replay share, CLI errors."""

from __future__ import annotations

import ft_helpers as helpers
import pytest

from debias3d.config import ConfigError, load_config
from debias3d.finetune.config import DataSettings, FinetuneConfig
from debias3d.finetune.data import DataError, build_training_set, check_mesh_file


def test_missing_dataset_is_one_line(tmp_path):
    with pytest.raises(DataError) as e:
        build_training_set(DataSettings(pairs=str(tmp_path / "nope")))
    assert "not found" in str(e.value) and "\n" not in str(e.value)


def test_empty_dataset_is_one_line(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"prompt": [], "occupancy": [], "colors": []}).save_to_disk(str(tmp_path / "pairs"))
    with pytest.raises(DataError, match="is empty"):
        build_training_set(DataSettings(pairs=str(tmp_path / "pairs")))


def test_broken_pairs_are_skipped_and_counted(tiny_world):
    ts = build_training_set(
        DataSettings(pairs=str(tiny_world["pairs"]), replay_share=0.0), resolution=helpers.RES
    )
    assert ts.stats["skipped"] == {"bad_voxels": 1, "broken_mesh": 1, "missing_mesh": 1}
    assert ts.stats["pairs_used"] == len(ts) == 5
    assert ts.occupancy.shape == (5, helpers.RES, helpers.RES, helpers.RES)


def test_all_pairs_broken_is_an_error(tmp_path):
    pairs = helpers.write_pairs(tmp_path, n=2, broken={0: "missing", 1: "garbage"})
    with pytest.raises(DataError, match="no usable pairs"):
        build_training_set(DataSettings(pairs=str(pairs)))


def test_wrong_resolution_is_bad_voxels(tiny_world):
    with pytest.raises(DataError, match="no usable pairs"):
        build_training_set(DataSettings(pairs=str(tiny_world["pairs"])), resolution=16)


@pytest.mark.parametrize("share,expected", [(0.0, 0), (0.3, 2), (0.5, 5), (0.75, 15)])
def test_replay_share(tiny_world, share, expected):
    ds = DataSettings(pairs=str(tiny_world["pairs"]), corpus=str(tiny_world["corpus"]), replay_share=share)
    ts = build_training_set(ds)
    assert ts.stats["replay"] == expected == ts.sources.count("replay")


def test_max_pairs_is_a_seeded_random_subset(tmp_path):
    """max_pairs must not take the head of the file (rows are grouped by source prompt)."""
    pairs = helpers.write_pairs(tmp_path, n=24)
    pick = {}
    for seed in (0, 0, 1):
        ts = build_training_set(
            DataSettings(pairs=str(pairs), replay_share=0.0, max_pairs=6, seed=seed), resolution=helpers.RES
        )
        assert len(ts) == ts.stats["pairs_used"] == 6
        pick.setdefault(seed, []).append(sorted(int(p.rsplit(" ", 1)[1]) for p in ts.prompts))
    head = list(range(6))
    assert pick[0][0] == pick[0][1] != head  # reproducible and not the first rows
    assert pick[1][0] != pick[0][0] and len(set(pick[0][0])) == 6


def test_glb_header_check(tmp_path):
    good = helpers.write_glb(tmp_path / "a.glb", None)
    assert check_mesh_file(good) is None
    trunc = tmp_path / "b.glb"
    trunc.write_bytes(good.read_bytes()[:-7])
    assert check_mesh_file(trunc) == "broken_mesh"
    assert check_mesh_file(tmp_path / "c.glb") == "missing_mesh"


@pytest.mark.parametrize(
    "override,match",
    [
        ("lora.rank=0", "rank"),
        ("data.replay_share=1.0", "replay_share"),
        ("train.lr_scheduler=step", "lr_scheduler"),
        ("train.p_uncond=1.5", "p_uncond"),
        ("generator=dreamfusion", "generator"),
        ("lora.targets=[to_q]", "unknown key"),
        ("train.stage_weights={stag1: 1.0}", "stage_weights"),
    ],
)
def test_bad_config_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(FinetuneConfig, "configs/shapeworld/finetune.yaml", [override])


ATTENTION = {"to_qkv", "to_q", "to_kv", "to_out"}


@pytest.mark.parametrize(
    "path,targets",
    [
        ("configs/shapeworld/finetune.yaml", ATTENTION),
        # TRELLIS: the block MLPs too (stage 2's are SparseLinear, wrapped by the sparse LoRA layer)
        ("configs/trellis/finetune.yaml", ATTENTION | {"mlp.mlp.0", "mlp.mlp.2"}),
    ],
)
def test_shipped_configs_load(path, targets):
    cfg = load_config(FinetuneConfig, path)
    assert set(cfg.lora.target_modules) == targets


def test_main_reports_one_line_errors(tmp_path, capsys, tiny_world):
    from debias3d.finetune.__main__ import main

    rc = main(["--out", str(tmp_path / "o"), f"data.pairs={tmp_path / 'missing'}",
               f"generator_weights={tiny_world['base']}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and err.startswith("error:") and "not found" in err
    rc = main(["--out", str(tmp_path / "o"), f"data.pairs={tiny_world['pairs']}", "data.replay_share=0",
               f"generator_weights={tiny_world['base']}", "lora.target_modules=[q_proj]"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and "match no module" in err and "to_qkv" in err
