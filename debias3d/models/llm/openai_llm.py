"""OpenAI-compatible context writer (registry: ``llm`` / ``openai``).

Talks to any OpenAI-compatible chat endpoint (OpenAI, Azure-compatible gateways, vLLM, llama.cpp
server, ...) through the official ``openai`` Python client. ``base_url`` and ``model`` come from the
config; the API key comes **only** from the ``OPENAI_API_KEY`` environment variable and is never
logged, returned or written anywhere.

Prompt template
---------------
The request is one system message and one user message. ``response_format={"type": "json_object"}``
asks the server for a JSON object; the answer must be ``{"prompts": ["...", ...]}``. The user
message is :data:`PROMPT_TEMPLATE` (``llm.prompt_template`` in the config replaces it), formatted
with ``{prompt}`` (the source prompt), ``{words}`` (the kept words, quoted and comma-separated),
``{n}`` (how many prompts) and ``{max_words}``::

    Source prompt: "{prompt}"
    Write {n} new, different prompts for a text-to-3D generator. Every new prompt must contain each
    of these words exactly as written: {words}.
    Put these words in new and varied contexts: other objects, colours, sizes, materials, spatial
    relations or actions. Describe one object or one small scene per prompt, in at most {max_words}
    words. Do not repeat the source prompt.
    Answer with a JSON object of the form {"prompts": ["...", "..."]} and nothing else.

Failure handling
----------------
* timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff
  (``backoff_base_s * 2**attempt``, capped at ``backoff_max_s``; a ``Retry-After`` header within the
  cap is honoured) up to ``max_retries`` times. The client's own retries are off (``max_retries=0``)
  so the schedule is ours and testable;
* other HTTP errors (400, 401, 404, ...) fail at once;
* ``timeout_s`` is a deadline for the whole request (connect, send, headers and body), not for each
  read: a server that trickles bytes is cut off when the deadline passes (:class:`_DeadlineBackend`);
* an unusable answer (a 200 whose body is not JSON or is an HTML page, ``"message": null``, no
  choices, a wrong shape), a refusal (``message.refusal``, ``finish_reason == "content_filter"`` or a plain-text apology),
  malformed JSON, a missing ``prompts`` key and an empty list are per-item failures with a one-line
  reason in :attr:`LLMResult.error`; it is not retried (the answer was billed);
* every attempt, failed ones included, is counted in :attr:`LLMResult.attempts` and its tokens in
  the cost.

Requests overlap in a thread pool of ``concurrency`` workers (:meth:`OpenAIContextWriter.iter_write`).
Tokens come from the response's ``usage``; cost = tokens / 1e6 x the configured prices.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from debias3d.models.llm.base import ContextRequest, ContextWriterBase, LLMResult
from debias3d.registry import register

__all__ = ["OpenAIContextWriter", "PROMPT_TEMPLATE", "SYSTEM_PROMPT", "API_KEY_ENV"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
SYSTEM_PROMPT = (
    "You write short, concrete prompts for a text-to-3D generator. You always answer with a single "
    "JSON object and nothing else."
)
PROMPT_TEMPLATE = (
    'Source prompt: "{prompt}"\n'
    "Write {n} new, different prompts for a text-to-3D generator. Every new prompt must contain each "
    "of these words exactly as written: {words}.\n"
    "Put these words in new and varied contexts: other objects, colours, sizes, materials, spatial "
    "relations or actions. Describe one object or one small scene per prompt, in at most {max_words} "
    "words. Do not repeat the source prompt.\n"
    'Answer with a JSON object of the form {{"prompts": ["...", "..."]}} and nothing else.'
)
_REFUSAL = re.compile(r"^\s*(i'm sorry|i am sorry|sorry,|i can(no|')t|i won't|as an ai)", re.IGNORECASE)


_DEADLINE = threading.local()


def _left(timeout: float | None, timeout_exc: type[Exception]) -> float | None:
    """The wait allowed now: ``timeout`` capped at the calling thread's request deadline."""
    deadline = getattr(_DEADLINE, "t", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_exc("request deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream:
    """A network stream whose reads and writes stop at the calling thread's request deadline."""

    def __init__(self, inner: Any, timeout_exc: type[Exception]) -> None:
        self._inner = inner
        self._exc = timeout_exc

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, self._exc))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        return self._inner.write(buffer, _left(timeout, self._exc))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        return _DeadlineStream(self._inner.start_tls(*args, **kwargs), self._exc)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend:
    """httpcore network backend that caps every socket wait at the calling thread's deadline.

    httpx's timeouts apply to each read, so a server that sends one byte every 0.25 s can hold a
    request forever; each attempt here sets a deadline (``timeout_s`` after it starts) in a
    thread-local, and every connect / read / write waits at most until then.
    """

    def __init__(self, inner: Any, timeout_exc: type[Exception]) -> None:
        self._inner = inner
        self._exc = timeout_exc

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kw: Any) -> Any:
        stream = self._inner.connect_tcp(host, port, timeout=_left(timeout, self._exc), **kw)
        return _DeadlineStream(stream, self._exc)

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kw: Any) -> Any:
        stream = self._inner.connect_unix_socket(path, timeout=_left(timeout, self._exc), **kw)
        return _DeadlineStream(stream, self._exc)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _http_client(timeout_s: float) -> Any:
    """An httpx client (the flavour the installed ``openai`` uses) whose requests obey a total deadline.

    Returns ``None`` (the ``openai`` default client, per-read timeouts only) when the transport has
    no replaceable network backend.
    """
    try:
        import httpcore2 as httpcore
        import httpx2 as httpx
    except ImportError:
        try:
            import httpcore
            import httpx
        except ImportError:  # pragma: no cover
            return None
    transport = httpx.HTTPTransport()
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        logger.debug("llm: no network backend hook; timeout_s applies per read")
        return None
    pool._network_backend = _DeadlineBackend(pool._network_backend, httpcore.ReadTimeout)
    return httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=True)


def _one_line(text: str, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


@register("llm", "openai")
class OpenAIContextWriter(ContextWriterBase):
    """Context writer backed by an OpenAI-compatible chat-completions endpoint.

    Args:
        model: model name sent to the endpoint (e.g. ``gpt-4o``).
        base_url: endpoint root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            ``None`` uses the client's default.
        timeout_s: per-request timeout in seconds.
        max_retries: retries after the first attempt on timeout / connection error / 429 / 5xx.
        backoff_base_s: first retry delay; doubles each retry.
        backoff_max_s: delay cap.
        concurrency: requests in flight at once (thread pool size).
        temperature: sampling temperature.
        max_tokens: completion token limit.
        max_words: the ``{max_words}`` of the prompt template.
        price_input_per_1m / price_output_per_1m: cost per million input / output tokens.
        prompt_template: replaces :data:`PROMPT_TEMPLATE` when non-empty.
        require_api_key: raise when ``OPENAI_API_KEY`` is unset (else a placeholder key is sent,
            for local servers that ignore it).
    """

    name = "openai"
    answer_settings = ("model", "base_url", "temperature", "max_tokens", "max_words", "prompt_template")

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        concurrency: int = 8,
        temperature: float = 0.9,
        max_tokens: int = 800,
        max_words: int = 25,
        price_input_per_1m: float = 0.0,
        price_output_per_1m: float = 0.0,
        prompt_template: str = "",
        require_api_key: bool = True,
    ) -> None:
        import openai

        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout_s > 0")
        key = os.environ.get(API_KEY_ENV)
        if not key:
            if require_api_key:
                raise ValueError(
                    f"llm backend 'openai' needs the API key in the environment variable {API_KEY_ENV} "
                    "(it is never read from config files)"
                )
            key = "not-needed"
        self.model = model
        self.base_url = base_url or None
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.concurrency = int(concurrency)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_words = int(max_words)
        self.price_input_per_1m = float(price_input_per_1m)
        self.price_output_per_1m = float(price_output_per_1m)
        self.prompt_template = prompt_template or PROMPT_TEMPLATE
        # The key lives only inside the client object; it is not kept as an attribute here.
        http_client = _http_client(self.timeout_s)
        kwargs: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
        self._client = openai.OpenAI(
            api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0, **kwargs
        )
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAIContextWriter:
        """Build from an ``LLMConfig``: every constructor argument is the config key of the same name."""
        names = list(inspect.signature(cls).parameters)
        return cls(**{name: getattr(cfg, name) for name in names})

    # ------------------------------------------------------------------------------------ API
    def messages(self, prompt: str, keep_words: Sequence[str], n: int) -> list[dict[str, str]]:
        """The chat messages for one request (see the module docstring)."""
        words = ", ".join(f'"{w}"' for w in keep_words)
        user = self.prompt_template.format(prompt=prompt, words=words, n=n, max_words=self.max_words)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def write(self, prompt: str, keep_words: Sequence[str], n: int, seed: int) -> LLMResult:
        """One request with retries; never raises for server-side problems."""
        result = self._request(self.messages(prompt, keep_words, n), seed)
        if result.ok and len(result.prompts) > n:
            result.prompts = result.prompts[:n]
        with self._lock:
            self.usage["requests"] += result.attempts
            self.usage["prompt_tokens"] += result.prompt_tokens
            self.usage["completion_tokens"] += result.completion_tokens
            self.usage["cost"] += result.cost
        return result

    def iter_write(self, requests: Sequence[ContextRequest]) -> Iterator[tuple[int, LLMResult]]:
        """Run requests ``concurrency`` at a time; yield ``(index, result)`` in completion order."""
        if not requests:
            return
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(requests)), thread_name_prefix="llm"
        ) as pool:
            futures = {
                pool.submit(self.write, r.prompt, r.keep_words, r.n, r.seed): i
                for i, r in enumerate(requests)
            }
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001 — one item's failure never aborts the job
                    res = LLMResult(error=f"client error: {type(exc).__name__}: {_one_line(exc, 120)}")
                yield futures[fut], res

    # ------------------------------------------------------------------------------ internals
    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        if retry_after:
            try:
                ra = float(retry_after)
            except ValueError:
                ra = -1.0
            if 0 <= ra <= self.backoff_max_s:
                delay = max(delay, ra)
        return delay

    def _request(self, messages: list[dict[str, str]], seed: int) -> LLMResult:
        import openai

        prompt_tokens = completion_tokens = 0
        error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            _DEADLINE.t = time.monotonic() + self.timeout_s
            try:
                resp = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    response_format={"type": "json_object"},
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    seed=int(seed) % (2**31),
                )
            except openai.APITimeoutError:
                error = f"timeout: no complete answer within {self.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                error = f"connection error: {_one_line(exc)}"
            except openai.APIStatusError as exc:
                code = exc.status_code
                error = f"HTTP {code}: {_one_line(exc.message)}"
                if code != 429 and code < 500:
                    return self._result([], prompt_tokens, completion_tokens, "", error, attempt + 1)
                retry_after = exc.response.headers.get("retry-after") if exc.response is not None else None
            except (openai.APIError, ValueError, TypeError, AttributeError, KeyError) as exc:
                # a 200 whose body is not JSON (json.JSONDecodeError is a ValueError) or fails validation
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else _one_line(exc, 100)
                err = f"unusable answer: body is not a JSON chat completion ({why})"
                return self._result([], prompt_tokens, completion_tokens, "", err, attempt + 1)
            else:
                usage = getattr(resp, "usage", None)
                if usage is not None:
                    prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                    completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
                prompts, raw, err = self._parse(resp)
                return self._result(prompts, prompt_tokens, completion_tokens, raw, err, attempt + 1)
            finally:
                _DEADLINE.t = None
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                logger.debug("llm: %s; retry %d/%d in %.2f s", error, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        return self._result(
            [],
            prompt_tokens,
            completion_tokens,
            "",
            f"{error} (after {self.max_retries + 1} attempts)",
            self.max_retries + 1,
        )

    def _result(
        self, prompts: list[str], pt: int, ct: int, raw: str, error: str | None, attempts: int
    ) -> LLMResult:
        cost = pt / 1e6 * self.price_input_per_1m + ct / 1e6 * self.price_output_per_1m
        return LLMResult(prompts, pt, ct, raw, error, attempts, cost)

    @staticmethod
    def _parse(resp: Any) -> tuple[list[str], str, str | None]:
        """``(prompts, raw text, error)`` from a chat completion; any unusable shape is an error."""
        if isinstance(resp, (str, bytes)):
            text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
            kind = "an HTML page" if "<html" in text[:500].lower() else "plain text"
            return (
                [],
                "",
                f"unusable answer: the body is {kind}, not a chat completion ({_one_line(text, 60)!r})",
            )
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            return [], "", "unusable answer: no choices list in the body"
        if not choices:
            return [], "", "empty answer: no choices"
        choice = choices[0]
        msg = getattr(choice, "message", None)
        if msg is None:
            return [], "", 'unusable answer: "message" is null'
        raw = getattr(msg, "content", None) or ""
        if not isinstance(raw, str):
            return [], "", f"unusable answer: message content is a {type(raw).__name__}, not text"
        refusal = getattr(msg, "refusal", None)
        if refusal:
            return [], raw, f"refusal: {_one_line(refusal, 120)}"
        if getattr(choice, "finish_reason", None) == "content_filter":
            return [], raw, "refusal: content filter"
        if not raw.strip():
            return [], raw, "empty answer"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            if _REFUSAL.match(raw):
                return [], raw, f"refusal: {_one_line(raw, 120)}"
            cut = " (answer cut at max_tokens)" if getattr(choice, "finish_reason", None) == "length" else ""
            return [], raw, f"malformed JSON: {exc.msg} at char {exc.pos}{cut}"
        if not isinstance(data, dict) or "prompts" not in data:
            return [], raw, 'malformed JSON: expected an object with key "prompts"'
        items = data["prompts"]
        if not isinstance(items, list):
            return [], raw, '"prompts" is not a list'
        prompts = [" ".join(p.split()) for p in items if isinstance(p, str) and p.strip()]
        if not prompts:
            return [], raw, "empty prompt list"
        return prompts, raw, None
