"""``accelerate launch -m debias3d audit`` with 2 CPU processes: shards merge into one audit (about a minute)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

PROMPTS = ["a red vase", "two small blue cups", "a tall green tree", "a spiky box", "a floating lamp"]


def test_two_processes_write_shards_and_main_merges(tmp_path, text_encoder):
    from audit_helpers import TINY

    from debias3d.models.backbone.flow import FlowModelConfig
    from debias3d.models.backbone.generator import MiniTrellisConfig, MiniTrellisGenerator
    from debias3d.models.evaluator.model import ShapeWorldHyperScore

    torch.manual_seed(0)
    ShapeWorldHyperScore(TINY, text_encoder=text_encoder).save_pretrained(tmp_path / "ev")
    small = dict(model_channels=32, num_blocks=1, num_heads=2)
    gcfg = MiniTrellisConfig(
        stage1=FlowModelConfig(**small), stage2=FlowModelConfig(in_channels=3, out_channels=3, **small)
    )
    MiniTrellisGenerator(gcfg, text_encoder=text_encoder).save_pretrained(tmp_path / "gen")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "audit"
    repo = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "configs/accelerate/cpu_2proc.yaml"),
        "-m", "debias3d", "audit", "--prompts", str(tmp_path / "p.txt"), "--out", str(out),
        "--config", str(repo / "configs/shapeworld/audit.yaml"),
        f"evaluator_weights={tmp_path / 'ev'}", f"generator_weights={tmp_path / 'gen'}",
        "samples=2", "steps=2", "attribution.methods=[grad]", "attribution.select=grad", "attribution.batch_size=2", "heatmaps=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted((out / "shards").glob("shard-*.jsonl"))
    assert [s.name for s in shards] == ["shard-000.jsonl", "shard-001.jsonl"]
    p = pd.read_parquet(out / "prompts.parquet")
    assert p["prompt"].tolist() == PROMPTS  # merged in the prompt file's order
    assert json.loads((out / "summary.json").read_text())["n_audited"] == len(PROMPTS)
