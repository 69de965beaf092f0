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
* a refusal (``message.refusal``, ``finish_reason == "content_filter"`` or a plain-text apology),
  malformed JSON, a missing ``prompts`` key and an empty list are per-item failures with a one-line
  reason in :attr:`LLMResult.error`.

Requests overlap in a thread pool of ``concurrency`` workers (:meth:`OpenAIContextWriter.iter_write`).
Tokens come from the response's ``usage``; cost = tokens / 1e6 x the configured prices.
"""

from __future__ import annotations

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
        self._client = openai.OpenAI(
            api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAIContextWriter:
        """Build from an ``LLMConfig``."""
        return cls(
            model=cfg.model,
            base_url=cfg.base_url or None,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
            concurrency=cfg.concurrency,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            max_words=cfg.max_words,
            price_input_per_1m=cfg.price_input_per_1m,
            price_output_per_1m=cfg.price_output_per_1m,
            prompt_template=cfg.prompt_template,
            require_api_key=cfg.require_api_key,
        )

    def describe(self) -> dict[str, Any]:
        """Settings that change answers (no key, no timing-only settings)."""
        return {
            "backend": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_words": self.max_words,
            "prompt_template": self.prompt_template,
        }

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
                yield futures[fut], fut.result()

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
                error = f"timeout after {self.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                error = f"connection error: {_one_line(exc)}"
            except openai.APIStatusError as exc:
                code = exc.status_code
                error = f"HTTP {code}: {_one_line(exc.message)}"
                if code != 429 and code < 500:
                    return self._result([], prompt_tokens, completion_tokens, "", error, attempt + 1)
                retry_after = exc.response.headers.get("retry-after") if exc.response is not None else None
            else:
                if resp.usage is not None:
                    prompt_tokens += int(resp.usage.prompt_tokens or 0)
                    completion_tokens += int(resp.usage.completion_tokens or 0)
                prompts, raw, err = self._parse(resp)
                return self._result(prompts, prompt_tokens, completion_tokens, raw, err, attempt + 1)
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
        """``(prompts, raw text, error)`` from a chat completion."""
        if not resp.choices:
            return [], "", "empty answer: no choices"
        choice = resp.choices[0]
        msg = choice.message
        raw = msg.content or ""
        refusal = getattr(msg, "refusal", None)
        if refusal:
            return [], raw, f"refusal: {_one_line(refusal, 120)}"
        if choice.finish_reason == "content_filter":
            return [], raw, "refusal: content filter"
        if not raw.strip():
            return [], raw, "empty answer"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            if _REFUSAL.match(raw):
                return [], raw, f"refusal: {_one_line(raw, 120)}"
            cut = " (answer cut at max_tokens)" if choice.finish_reason == "length" else ""
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
