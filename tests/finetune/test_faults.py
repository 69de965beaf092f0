"""Fault suite of fine-tuning checkpoints: stale runs, interrupted saves, truncated state files, kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from debias3d.finetune.config import DataSettings, FinetuneConfig, LoraSettings, TrainSettings
from debias3d.finetune.trainer import checkpoint_problem, finetune, latest_checkpoint
from debias3d.runs import FingerprintError


def _cfg(world, rank=4, steps=4, resume=None, limit=None, seed=0):
    return FinetuneConfig(
        generator_weights=str(world["base"]),
        lora=LoraSettings(rank=rank),
        data=DataSettings(pairs=str(world["pairs"]), replay_share=0.0),
        train=TrainSettings(
            max_train_steps=steps,
            train_batch_size=2,
            lr_warmup_steps=0,
            learning_rate=1e-2,
            seed=seed,
            checkpointing_steps=2,
            checkpoints_total_limit=limit,
            resume_from_checkpoint=resume,
        ),  # fmt: skip
    )


def _adapter(out: Path) -> dict:
    return load_file(str(out / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def ref_run(tiny_world, tiny_gen_loader, tmp_path_factory):
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ref")
    finetune(_cfg(tiny_world), out, generator=tiny_gen_loader())
    return out


def test_checkpoints_are_sealed_with_their_run(ref_run):
    for name in ("checkpoint-2", "checkpoint-4"):
        assert checkpoint_problem(ref_run / name) is None
        m = json.loads((ref_run / name / "checkpoint.json").read_text())
        assert m["stage"] == "finetune" and m["settings"]["lora.rank"] == 4 and m["step"] == int(name[-1])
    assert not list(ref_run.glob(".tmp-*"))


def test_stale_checkpoint_of_another_run_is_never_resumed(ref_run, tiny_world, tiny_gen_loader, tmp_path):
    out = tmp_path / "ft"
    shutil.copytree(ref_run / "checkpoint-4", out / "checkpoint-30")  # an earlier run's leftover
    with pytest.raises(FingerprintError) as err:
        finetune(_cfg(tiny_world, rank=2, resume="latest"), out, generator=tiny_gen_loader())
    msg = str(err.value)
    assert "\n" not in msg and "lora.rank: 2 here, 4 in the folder" in msg
    assert "run without --resume-from" in msg and "lora.rank=4" in msg
    # a new run in the same folder keeps the other run's checkpoint and rotates only its own
    finetune(_cfg(tiny_world, rank=2, limit=1), out, generator=tiny_gen_loader())
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-30", "checkpoint-4"]
    assert {v.shape[0] for k, v in _adapter(out).items() if "lora_A" in k} == {2}


@pytest.mark.parametrize(
    "damage", ["interrupted_save", "truncated_adapter", "truncated_optimizer", "truncated_scheduler"]
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(ref_run, tiny_world, tiny_gen_loader, tmp_path, damage, caplog):  # fmt: skip
    out = tmp_path / "ft"
    shutil.copytree(ref_run / "checkpoint-2", out / "checkpoint-2")
    shutil.copytree(ref_run / "checkpoint-4", out / "checkpoint-4")
    ck = out / "checkpoint-4"
    if damage == "interrupted_save":
        (ck / "checkpoint.json").unlink()
    else:
        f = ck / {"truncated_adapter": "adapter_model.safetensors", "truncated_optimizer": "optimizer.bin",
                  "truncated_scheduler": "scheduler.bin"}[damage]  # fmt: skip
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert latest_checkpoint(out).name == "checkpoint-2"
    res = finetune(_cfg(tiny_world, resume="latest"), out, generator=tiny_gen_loader())
    assert res.global_step == 4 and "skipping" in caplog.text
    # resumed from step 2, it ends where the uninterrupted run ended
    ref = _adapter(ref_run)
    for k, v in _adapter(out).items():
        assert (v - ref[k]).abs().max() < 1e-5, k


def test_explicit_damaged_checkpoint_is_a_one_line_error(ref_run, tiny_world, tiny_gen_loader, tmp_path):
    ck = tmp_path / "checkpoint-4"
    shutil.copytree(ref_run / "checkpoint-4", ck)
    f = ck / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="adapter_model.safetensors is truncated") as err:
        finetune(_cfg(tiny_world, resume=str(ck)), tmp_path / "ft", generator=tiny_gen_loader())
    assert "\n" not in str(err.value)


def _log_rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("resume_at", [2, 4])
def test_torn_line_in_the_middle_of_the_log_is_rebuilt_on_resume(ref_run, tiny_world, tiny_gen_loader, tmp_path, resume_at):  # fmt: skip
    """Step 1's row is torn mid-line in the middle of the log; the resumed run's final log has every
    step exactly once, with the values of the uninterrupted run (from step 2: steps 3-4 logged again)."""
    ref = {r["step"]: r for r in _log_rows(ref_run)}
    assert sorted(ref) == [1, 2, 3, 4]
    out = tmp_path / "ft"
    shutil.copytree(ref_run / f"checkpoint-{resume_at}", out / f"checkpoint-{resume_at}")
    lines = [json.dumps(ref[s]) for s in (1, 2, 3)]
    lines[0] = lines[0][:20]  # torn, and then the run went on appending
    (out / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    finetune(_cfg(tiny_world, resume="latest"), out, generator=tiny_gen_loader())
    rows = _log_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for k in ("loss", "lr", "epoch"):
            assert r[k] == pytest.approx(ref[r["step"]][k], rel=1e-5, abs=1e-7), (r["step"], k)


KILL_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from debias3d.finetune.config import DataSettings, FinetuneConfig, LoraSettings, TrainSettings
from debias3d.finetune.trainer import finetune
from ft_helpers import tiny_generator
cfg = FinetuneConfig(
    generator_weights={base!r}, lora=LoraSettings(rank=4),
    data=DataSettings(pairs={pairs!r}, replay_share=0.0),
    train=TrainSettings(max_train_steps=12, train_batch_size=2, lr_warmup_steps=0, learning_rate=1e-2,
                        checkpointing_steps=1, checkpoints_total_limit=2, resume_from_checkpoint="latest"),
)
finetune(cfg, sys.argv[1], generator=tiny_generator())
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_random_points_including_saves_then_resume(tiny_world, tmp_path):
    """Kill the run at random moments (a checkpoint is saved at every step, so many kills land in a
    save); every resume goes on from an intact checkpoint and the final adapter equals an
    uninterrupted run's."""
    import numpy as np

    here = str(Path(__file__).resolve().parent)
    script = tmp_path / "ft.py"
    script.write_text(
        KILL_SCRIPT.format(here=here, base=str(tiny_world["base"]), pairs=str(tiny_world["pairs"]))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(
        [sys.executable, str(script), str(ref)], env=env, check=True, capture_output=True, timeout=600
    )
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(6):
        p = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE)
        time.sleep(float(rng.uniform(4.0, 9.0)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate()
    p = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    assert b"Traceback" not in p.stderr
    assert kills >= 1
    a, b = _adapter(ref), _adapter(out)
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k
    assert [r["step"] for r in _log_rows(out)] == list(range(1, 13))  # every step logged once


def test_pair_mesh_paths_stay_inside_the_augment_folder(tmp_path):
    import ft_helpers as helpers
    from datasets import load_from_disk

    from debias3d.finetune.data import build_training_set

    pairs = helpers.write_pairs(tmp_path / "aug", n=4)
    ds = load_from_disk(str(pairs))
    meshes = ["/etc/passwd", "../../outside.glb", str((tmp_path / "aug" / "meshes" / "pair_002.glb").resolve()), ds[3]["mesh"]]  # fmt: skip
    other = tmp_path / "aug2" / "pairs"
    ds.remove_columns("mesh").add_column("mesh", meshes).save_to_disk(str(other))
    shutil.copytree(tmp_path / "aug" / "meshes", tmp_path / "aug2" / "meshes")
    ts = build_training_set(DataSettings(pairs=str(other), replay_share=0.0), resolution=helpers.RES)
    # absolute paths into another folder and ../ are refused; the in-folder relative row is used
    assert ts.stats["skipped"] == {"mesh_outside_folder": 3}
    assert ts.stats["pairs_used"] == 1


def test_accelerate_launch_checks_the_pairs_before_starting_processes(tmp_path, monkeypatch):
    import debias3d.finetune as ft
    from debias3d.finetune.data import DataError

    launched = []
    monkeypatch.setattr(ft.subprocess, "run", lambda *a, **k: launched.append(a))
    acc = tmp_path / "acc.yaml"
    acc.write_text("compute_environment: LOCAL_MACHINE\nnum_processes: 2\n")
    with pytest.raises(DataError, match="not found"):
        ft.finetune_command(None, [f"data.pairs={tmp_path / 'nope'}"], tmp_path / "o", accelerate_config=acc)
    assert not launched

    class Failed:
        returncode = 2

    monkeypatch.setattr(ft.subprocess, "run", lambda *a, **k: Failed())
    monkeypatch.setattr("debias3d.finetune.data.check_dataset", lambda *a, **k: 4)
    with pytest.raises(ValueError, match="exit status 2") as err:
        ft.finetune_command(None, ["data.pairs=x"], tmp_path / "o", accelerate_config=acc)
    assert "\n" not in str(err.value)


def test_second_run_on_the_same_out_is_refused(tiny_world, tiny_gen_loader, tmp_path):
    from debias3d.runs import RunLock, RunLockedError

    with RunLock(tmp_path / "ft"), pytest.raises(RunLockedError, match="in use by another run"):
        finetune(_cfg(tiny_world), tmp_path / "ft", generator=tiny_gen_loader())
    assert not (tmp_path / "ft" / "adapter_model.safetensors").exists()
