"""The openai backend with the real ``openai`` client against a fake server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time

import pytest
from _helpers import FakeOpenAI

from debias3d.models.llm.base import ContextRequest
from debias3d.models.llm.openai_llm import OpenAIContextWriter

SECRET = "sk-test-SECRET-abc123-never-log-me"


@pytest.fixture()
def server():
    with FakeOpenAI(sleep_s=1.5) as s:
        yield s


@pytest.fixture()
def writer(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return OpenAIContextWriter(
        model="fake",
        base_url=server.base_url,
        timeout_s=0.5,
        max_retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        concurrency=4,
        price_input_per_1m=1.0,
        price_output_per_1m=2.0,
    )


CASES = [
    # marker, ok, error prefix, attempts
    ("", True, None, 1),
    ("[malformed] ", False, "malformed JSON", 1),
    ("[refusal] ", False, "refusal", 1),
    ("[sorry] ", False, "refusal", 1),
    ("[empty] ", False, "empty prompt list", 1),
    ("[ratelimit] ", True, None, 2),
    ("[error500] ", False, "HTTP 500", 3),
    ("[error400] ", False, "HTTP 400", 1),
    ("[timeout] ", False, "timeout", 3),
]


@pytest.mark.parametrize(
    ("marker", "ok", "error", "attempts"), CASES, ids=[c[0].strip() or "good" for c in CASES]
)
def test_answers(writer, server, marker, ok, error, attempts):
    res = writer.write(f"{marker}a red vase with a long neck", ["vase", "long"], n=3, seed=1)
    assert res.ok is ok
    assert res.attempts == attempts
    if ok:
        assert 1 <= len(res.prompts) <= 3
        assert all("vase" in p.lower() and "long" in p.lower() for p in res.prompts)
        assert res.prompt_tokens == 50 and res.completion_tokens == 20
        assert res.cost == pytest.approx(50e-6 * 1.0 + 20e-6 * 2.0)
    else:
        assert res.prompts == []
        assert res.error.startswith(error), res.error
        assert "\n" not in res.error
    req = server.requests[-1]
    assert req["response_format"] == {"type": "json_object"}
    assert req["model"] == "fake"


def test_request_uses_template_and_key_only_in_header(writer, server):
    writer.write("a tall green tower", ["tower", "tall"], n=2, seed=0)
    user = server.requests[-1]["messages"][-1]["content"]
    assert (
        'Source prompt: "a tall green tower"' in user and '"tower", "tall"' in user and '{"prompts"' in user
    )
    assert server.auth[-1] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps(writer.describe())
    assert not any(SECRET in str(v) for v in vars(writer).values())


def test_missing_key_is_a_clear_error(monkeypatch, server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIContextWriter(base_url=server.base_url)
    OpenAIContextWriter(base_url=server.base_url, require_api_key=False)


def test_concurrency_overlaps_requests(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(delay_s=0.2, fixed=True) as srv:
        reqs = [ContextRequest(f"a red vase {i}", ("vase",), 2, i) for i in range(8)]
        times = {}
        for conc in (1, 8):
            w = OpenAIContextWriter(base_url=srv.base_url, concurrency=conc, max_retries=0)
            t0 = time.perf_counter()
            got = dict(w.iter_write(reqs))
            times[conc] = time.perf_counter() - t0
            assert sorted(got) == list(range(8)) and all(r.ok for r in got.values())
            assert w.usage["requests"] == 8
    assert times[8] < times[1] / 2.5, times


def test_key_never_logged_or_written(tmp_path, audit_dir, monkeypatch, caplog):
    """A full augmentation through the openai backend: no output file and no log line holds the key."""
    from debias3d.augment.config import AugmentConfig
    from debias3d.augment.pipeline import run_augment
    from debias3d.config import load_config

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI() as srv:
        cfg = load_config(
            AugmentConfig,
            overrides=[
                "llm.backend=openai",
                f"llm.base_url={srv.base_url}",
                "llm.backoff_base_s=0.01",
                "contexts=2",
                "max_prompts=2",
                "visual.ranker=standin",
                "num_threads=1",
                "progress=false",
                "report=false",
            ],
        )
        summary = run_augment(audit_dir, cfg, tmp_path / "aug")
    assert summary["llm"]["prompt_tokens"] == 100 and summary["llm"]["cost"] > 0
    assert summary["filter"]["candidates"] > 0
    assert SECRET not in caplog.text
    for f in (tmp_path / "aug").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


UNUSABLE = [
    # marker, error fragment
    ("[nonjson] ", "unusable answer"),
    ("[html] ", "unusable answer"),
    ("[nullmsg] ", '"message" is null'),
    ("[wrongshape] ", "unusable answer"),
]


@pytest.mark.parametrize(("marker", "error"), UNUSABLE, ids=[m.strip("[] ") for m, _ in UNUSABLE])
def test_unusable_answers_are_one_item_failures(writer, server, marker, error):
    res = writer.write(f"{marker}a red vase with a long neck", ["vase", "long"], n=3, seed=1)
    assert not res.ok
    assert error in res.error
    assert "\n" not in res.error
    assert res.attempts == 1  # an answer that arrived is not asked for again


def test_unusable_answers_do_not_stop_the_others(writer, server):
    reqs = [
        ContextRequest(f"{m}a red vase with a long neck", ("vase", "long"), 3, i)
        for i, m in enumerate(["", "[html] ", "[nonjson] ", "[nullmsg] ", ""])
    ]
    got = dict(writer.iter_write(reqs))
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert [got[i].ok for i in range(5)] == [True, False, False, False, True]
    assert writer.usage["requests"] == 5


def test_timeout_is_a_deadline_for_the_whole_request(monkeypatch):
    """A server that trickles one byte every 0.05 s is cut off at timeout_s, not after each read."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(trickle_s=0.05) as srv:
        w = OpenAIContextWriter(
            model="fake", base_url=srv.base_url, timeout_s=0.6, max_retries=1, backoff_base_s=0.01
        )
        t0 = time.perf_counter()
        res = w.write("[trickle] a red vase with a long neck", ["vase"], n=1, seed=1)
        took = time.perf_counter() - t0
    assert not res.ok and res.error.startswith("timeout"), res.error
    assert res.attempts == 2 and w.usage["requests"] == 2
    assert took < 2 * 0.6 + 1.0  # the answer would take > 10 s at this rate


def test_fake_server_request_budget(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(max_requests=1) as srv:
        w = OpenAIContextWriter(model="fake", base_url=srv.base_url, timeout_s=2, max_retries=0)
        assert w.write("a red vase with a long neck", ["vase"], n=1, seed=1).ok
        res = w.write("a red vase with a long neck", ["vase"], n=1, seed=2)
    assert not res.ok and "HTTP 503" in res.error and srv.refused == 1
