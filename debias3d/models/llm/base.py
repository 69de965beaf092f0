"""Context-writer protocol: an LLM (or a grammar) that writes new prompts around kept words.

Semantic augmentation (paper §3.3, the IRM-style context set C = {C_1, C_2, ...}) asks a writer for
``n`` new prompts that keep the words ``keep_words`` (w_h and w_l) of a source prompt in new,
varied contexts. Every backend returns an :class:`LLMResult`; a backend never raises for a bad
answer (refusal, malformed JSON, empty list, timeout): it records a one-line ``error`` instead, so
that a job records a per-item failure and goes on.

>>> r = LLMResult(prompts=["a red vase"], prompt_tokens=10, completion_tokens=5)
>>> r.ok, r.total_tokens
(True, 15)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = ["ContextRequest", "ContextWriter", "LLMResult", "ContextWriterBase"]


@dataclass
class LLMResult:
    """What one ``write`` call produced.

    Args:
        prompts: the new prompts (possibly fewer than asked; empty on failure).
        prompt_tokens: input tokens billed (0 for offline backends).
        completion_tokens: output tokens billed.
        raw: the raw answer text (for debugging; never holds credentials).
        error: one-line reason when the call failed, else ``None``.
        attempts: how many requests were sent (1 + retries).
        cost: estimated cost in the configured currency unit.
    """

    prompts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw: str = ""
    error: str | None = None
    attempts: int = 1
    cost: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContextRequest:
    """One request: write ``n`` prompts keeping ``keep_words`` of ``prompt``; ``seed`` fixes it."""

    prompt: str
    keep_words: tuple[str, ...]
    n: int
    seed: int


@runtime_checkable
class ContextWriter(Protocol):
    """What semantic augmentation needs from an LLM backend."""

    name: str

    def write(self, prompt: str, keep_words: Sequence[str], n: int, seed: int) -> LLMResult:
        """Write ``n`` new prompts that contain every word of ``keep_words``."""
        ...

    def iter_write(self, requests: Sequence[ContextRequest]) -> Iterator[tuple[int, LLMResult]]:
        """Answer many requests, yielding ``(request index, result)`` as each one finishes."""
        ...


class ContextWriterBase:
    """Shared glue: a sequential :meth:`iter_write` on top of :meth:`write`.

    Backends that can overlap requests (network LLMs) override :meth:`iter_write`.
    """

    name = "base"
    #: attributes that change the answers; :meth:`describe` reports them (never a key or a timeout)
    answer_settings: ClassVar[tuple[str, ...]] = ()

    def write(self, prompt: str, keep_words: Sequence[str], n: int, seed: int) -> LLMResult:
        raise NotImplementedError

    def iter_write(self, requests: Sequence[ContextRequest]) -> Iterator[tuple[int, LLMResult]]:
        for i, req in enumerate(requests):
            yield i, self.write(req.prompt, req.keep_words, req.n, req.seed)

    def describe(self) -> dict[str, Any]:
        """Backend settings that change the answers (part of each job item's key)."""
        return {"backend": self.name, **{k: getattr(self, k) for k in self.answer_settings}}
