"""Fault suite of the audit: torn shards, resume with other settings, a second run, oversize values."""

from __future__ import annotations

import json

import pytest
from audit_helpers import BoxGenerator

from debias3d.bias_audit.config import AttributionConfig, AuditConfig
from debias3d.bias_audit.pipeline import run_audit
from debias3d.runs import FingerprintError, RunLock, RunLockedError

PROMPTS = ["a red vase with a long neck", "two small blue cups", "a tall green tower", "a wooden chair"]


def _cfg(**kw):
    att = AttributionConfig(methods=("grad",), batch_size=1, deletion_k=0)
    base = {"samples": 2, "attribution": att, "heatmaps": False, "report": False, "ground_truth": "off"}
    return AuditConfig(**{**base, **kw})


@pytest.fixture()
def prompt_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    return f


def _shard_lines(out):
    return [ln for p in sorted((out / "shards").glob("shard-*.jsonl")) for ln in p.read_bytes().splitlines()]


def test_torn_shard_is_cut_before_the_next_append(prompt_file, evaluator, tmp_path):
    out = tmp_path / "a"
    ref = run_audit(prompt_file, _cfg(), out, generator=BoxGenerator(), evaluator=evaluator)
    assert ref["n_audited"] == 4
    shard = next((out / "shards").glob("shard-*.jsonl"))
    data = shard.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    shard.write_bytes(data[: last + (len(data) - last) // 2])  # the last record torn mid-line
    gen = BoxGenerator()
    again = run_audit(prompt_file, _cfg(), out, resume=True, generator=gen, evaluator=evaluator)
    assert again["n_audited"] == 4 and again["outcome"]["failed"] == 0
    assert gen.calls >= 1  # the torn prompt was redone
    lines = _shard_lines(out)
    assert len(lines) == 4 and all(json.loads(ln)["prompt_id"] for ln in lines)  # no line glued to a torn one
    assert again["word_table"] == ref["word_table"]


def test_resume_with_other_settings_is_a_one_line_error(prompt_file, evaluator, tmp_path):
    out = tmp_path / "a"
    run_audit(prompt_file, _cfg(), out, generator=BoxGenerator(), evaluator=evaluator)
    with pytest.raises(FingerprintError) as err:
        run_audit(prompt_file, _cfg(samples=3, seed=7), out, resume=True, generator=BoxGenerator(), evaluator=evaluator)  # fmt: skip
    msg = str(err.value)
    assert "\n" not in msg
    assert "samples: 3 here, 2 in the folder" in msg and "seed: 7 here, 0 in the folder" in msg
    assert "run without --resume" in msg and "resume as it was made with" in msg and "samples=2" in msg
    # other prompts are another run too
    more = tmp_path / "more.txt"
    more.write_text("\n".join([*PROMPTS, "a blue lamp"]) + "\n")
    with pytest.raises(FingerprintError, match="prompts differ"):
        run_audit(more, _cfg(), out, resume=True, generator=BoxGenerator(), evaluator=evaluator)
    # settings that change no row (batching, report) resume fine
    gen = BoxGenerator()
    run_audit(prompt_file, _cfg(generate_batch_size=3, report=False), out, resume=True, generator=gen, evaluator=evaluator)  # fmt: skip
    assert gen.calls == 0


def test_second_run_on_the_same_out_is_refused(prompt_file, evaluator, tmp_path):
    out = tmp_path / "a"
    with RunLock(out), pytest.raises(RunLockedError, match="in use by another run"):
        run_audit(prompt_file, _cfg(), out, generator=BoxGenerator(), evaluator=evaluator)


@pytest.mark.parametrize(
    ("kw", "bound"),
    [
        ({"samples": 100_000_000}, "samples must be <= 1024"),
        ({"seed": 2**70}, "seed must be in [0, 4611686018427387904]"),
        ({"steps": 10**9}, "steps must be <= 10000"),
        ({"attribution": {"n_steps": 10**7}}, "n_steps must be <= 1024"),
    ],
)
def test_size_settings_have_upper_bounds(kw, bound):
    with pytest.raises(ValueError, match=".*") as err:
        if "attribution" in kw:
            AttributionConfig(**kw["attribution"])
        else:
            AuditConfig(**kw)
    assert bound in str(err.value)


def test_embedded_generator_warns_per_prompt_outside_its_vocabulary(evaluator, tmp_path, caplog):
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    class VocabBox(BoxGenerator):
        """The box stand-in with the embedded generator's own vocabulary check."""

        name = MiniTrellisGenerator.name
        cannot_represent = MiniTrellisGenerator.cannot_represent

    s = run_audit(["a red vase", "an astronaut riding a horse"], _cfg(), tmp_path / "a", generator=VocabBox(), evaluator=evaluator)  # fmt: skip
    flagged = [i for i in s["issues"] if "outside ShapeWorld's vocabulary" in i]
    assert len(flagged) == 1 and "astronaut" in flagged[0] and "\n" not in flagged[0]
    assert "astronaut" in caplog.text
