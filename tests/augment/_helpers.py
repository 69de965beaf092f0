"""Shared test helpers: an audit-folder fixture, a stand-in ranker, a fake OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from debias3d.data.assets import save_mesh
from debias3d.models.ranker.base import RankerBase

AUDIT_PROMPTS = [
    # prompt, category, w_h, w_l
    ("a red vase with a long neck", "refined", "vase", "long"),
    ("two blue cups", "grouped", "cups", "blue"),
    ("a tall green tower", "refined", "tower", "tall"),
    ("a small bowl on top of a wooden table", "spatial", "bowl", "table"),
    ("a floating yellow tree", "action", "tree", "floating"),
    ("a spiky snowman", "fantastical", "snowman", "spiky"),
]


def make_audit(root: Path, prompts: list[tuple[str, str, str, str]] | None = None, samples: int = 2) -> Path:
    """Write an audit folder as the audit stage does (prompts/samples parquet, GLB meshes, summary).

    x_n is "biased": sample 0 is built without w_l (the generator ignored the weak word), sample 1
    is faithful, so ``original=first`` and ``original=best`` pick different meshes.
    """
    import pandas as pd

    from debias3d.data.shapeworld.builder import build
    from debias3d.data.shapeworld.parser import parse

    prompts = prompts or AUDIT_PROMPTS
    root.mkdir(parents=True, exist_ok=True)
    (root / "meshes").mkdir(exist_ok=True)
    prow, srow = [], []
    for i, (text, cat, w_h, w_l) in enumerate(prompts):
        pid = f"p{i:03d}"
        spec = parse(text)
        for d in range(samples):
            s = spec.without(w_l) if d == 0 else spec
            asset = build(s, rng=np.random.default_rng(100 * i + d), mesh_resolution=None, prompt=text)
            rel = f"meshes/{pid}_{d}.glb"
            save_mesh(asset.mesh, root / rel)  # as the audit writes it (GLB y-up)
            srow.append(
                {
                    "prompt_id": pid,
                    "sample": d,
                    "seed": 100 * i + d,
                    "mesh": rel,
                    "score_overall": float(d),
                    "score_alignment": 0.5,
                }
            )
        prow.append(
            {
                "prompt_id": pid,
                "prompt": text,
                "category": cat,
                "w_h": w_h,
                "w_l": w_l,
                "q_l_overall": 0.5,
                "q_l_alignment": 0.5,
            }
        )
    pd.DataFrame(prow).to_parquet(root / "prompts.parquet")
    pd.DataFrame(srow).to_parquet(root / "samples.parquet")
    (root / "summary.json").write_text(json.dumps({"prompts": len(prow), "samples": samples}))
    return root


class StandInRanker(RankerBase):
    """Deterministic stand-in for the trained ranker: object coverage of each view + a prompt term."""

    image_size = 32
    name = "standin"

    def __init__(self) -> None:
        super().__init__(batch_size=64)

    @classmethod
    def from_pretrained(cls, path: Any = None) -> StandInRanker:
        return cls()

    def image_scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        coverage = (images.min(dim=1).values < 0.95).float().mean(dim=(1, 2))
        colour = images.std(dim=(2, 3)).mean(dim=1)
        return 10.0 * coverage + colour


def register_standin() -> None:
    from debias3d.registry import _REGISTRY, register

    if "standin" not in _REGISTRY["ranker"]:
        register("ranker", "standin")(StandInRanker)


class DictJudge:
    """Judge stand-in for Algorithm 1 tests: score from a table keyed by (mesh name, prompt)."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls: list[tuple[str, str]] = []

    def score(self, mesh: Any, prompt: str) -> float:
        self.calls.append((mesh, prompt))
        return self.table[(mesh, prompt)]


# ------------------------------------------------------------------------------------------------
# Fake OpenAI-compatible server
# ------------------------------------------------------------------------------------------------
_WORDS = re.compile(r"exactly as written: (.*?)\.\n")
_SOURCE = re.compile(r'Source prompt: "(.*?)"\n')


def _completion(content: str | None, refusal: str | None = None, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    }


class FakeOpenAI:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 in a thread.

    The behaviour is chosen by a marker in the source prompt: ``[malformed]``, ``[refusal]``,
    ``[sorry]``, ``[empty]``, ``[ratelimit]`` (429 once, then fine), ``[timeout]`` (sleeps),
    ``[error500]`` (always 500), ``[error400]``, ``[nonjson]`` (a 200 whose body is not JSON),
    ``[html]`` (a 200 HTML page), ``[nullmsg]`` (``"message": null``), ``[wrongshape]`` (a JSON
    object that is no chat completion), ``[trickle]`` (a good answer sent one byte every
    ``trickle_s``); anything else gets a good answer written by the grammar writer (so ShapeWorld
    prompts stay buildable), or a fixed one with ``fixed=True``. ``delay_s`` delays every answer.
    Requests are bounded: after ``max_requests`` the server answers 503 and counts the overflow in
    :attr:`refused`, so a client that loops shows up in a test instead of hanging it.
    """

    def __init__(
        self,
        delay_s: float = 0.0,
        sleep_s: float = 2.0,
        fixed: bool = False,
        max_requests: int = 1000,
        trickle_s: float = 0.25,
    ) -> None:
        self.delay_s = delay_s
        self.max_requests = max_requests
        self.trickle_s = trickle_s
        self.refused = 0
        self.fixed = fixed
        self.sleep_s = sleep_s
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return None

            def _send(
                self,
                code: int,
                body: dict[str, Any] | bytes,
                headers: dict[str, str] | None = None,
                ctype: str = "application/json",
                trickle_s: float = 0.0,
            ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    if trickle_s:
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(trickle_s)
                            if outer._stop.is_set():
                                return
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_POST(self) -> None:  # noqa: N802 — http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer._lock:
                    over = len(outer.requests) >= outer.max_requests
                    if over:
                        outer.refused += 1
                    else:
                        outer.requests.append(body)
                        outer.auth.append(self.headers.get("Authorization", ""))
                if over:
                    return self._send(503, {"error": {"message": "request budget of the test spent"}})
                outer.handle(self, body)

        from debias3d.models.llm.template import TemplateContextWriter

        TemplateContextWriter().write(
            "a red vase with a long neck", ["vase"], 1, 0
        )  # warm the grammar caches
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: Any, body: dict[str, Any]) -> None:
        from debias3d.models.llm.template import TemplateContextWriter

        user = body["messages"][-1]["content"]
        source = _SOURCE.search(user).group(1)
        words = [w.strip().strip('"') for w in _WORDS.search(user).group(1).split(",")]
        with self._lock:
            n_seen = self.counts[source] = self.counts.get(source, 0) + 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if "[timeout]" in source:
            time.sleep(self.sleep_s)
            return h._send(200, _completion(json.dumps({"prompts": ["late"]})))
        if "[error500]" in source:
            return h._send(500, {"error": {"message": "internal error", "type": "server_error"}})
        if "[error400]" in source:
            return h._send(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
        if "[ratelimit]" in source and n_seen == 1:
            return h._send(
                429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": "0"}
            )
        if "[nonjson]" in source:
            return h._send(200, b"Expecting nothing: this is not JSON {")
        if "[html]" in source:
            return h._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", ctype="text/html")
        if "[nullmsg]" in source:
            body = _completion("x")
            body["choices"][0]["message"] = None
            return h._send(200, body)
        if "[wrongshape]" in source:
            return h._send(200, {"result": "ok", "choices": "none"})
        if "[trickle]" in source:
            return h._send(
                200, _completion(json.dumps({"prompts": ["a red vase"]})), trickle_s=self.trickle_s
            )
        if "[malformed]" in source:
            return h._send(200, _completion('{"prompts": ["a red vase", '))
        if "[refusal]" in source:
            return h._send(200, _completion(None, refusal="I can't help with that request."))
        if "[sorry]" in source:
            return h._send(200, _completion("I'm sorry, but I cannot write that."))
        if "[empty]" in source:
            return h._send(200, _completion(json.dumps({"prompts": []})))
        if self.fixed:
            return h._send(200, _completion(json.dumps({"prompts": [f"a {w} in a garden" for w in words]})))
        clean = re.sub(r"\[\w+\]\s*", "", source)
        res = TemplateContextWriter().write(clean, words, 3, seed=int(body.get("seed", 0)))
        prompts = res.prompts or [f"a {' '.join(words)} object"]
        return h._send(200, _completion(json.dumps({"prompts": prompts})))
