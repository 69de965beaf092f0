"""Substitute proposers: same-kind alternatives for a word in its prompt (the contrastive probe).

A proposer answers "what else could this word have been?" with up to ``k`` alternatives of the
same kind (``red`` → ``blue``, ``green``, ...; ``vase`` → ``cup``, ``bottle``, ...). The contrastive
probe swaps the word for each alternative and measures how much the evaluator's score drops on the
*same* shape: a shape that shows the word loses score when its prompt names something else.

Proposers are picked by name (``attribution.probes.proposer``) from the registry kind
``proposer``:

============  =====================================================================================
``shapeworld``  ShapeWorld's word classes (colours, sizes, modifiers, actions, counts, nouns, ...).
``wordlist``    a user YAML ``{class: [word, ...]}``; a word's alternatives are its class mates.
``mlm``         in-context substitutes from a masked LM in a local folder (e.g. bert-base-uncased).
``llm``         any OpenAI-compatible chat endpoint, asked for ``k`` same-category words; answers
                are cached on disk, so a rerun asks nothing.
============  =====================================================================================

Every proposer's raw answer goes through :meth:`SubstituteProposer.substitutes`, which drops the
word itself, sub-word pieces (``##ing``), non-words, stop words and duplicates. A word left with
nothing gets a one-line message naming the prompt and the word; the audit records it and goes on.

>>> p = ShapeWorldProposer()
>>> alts, msg = p.substitutes("a red vase", "red", 2, 5, k=3)
>>> len(alts), "red" in alts, msg
(3, False, None)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from debias3d.registry import register

logger = logging.getLogger(__name__)

__all__ = [
    "SubstituteProposer",
    "ClassProposer",
    "ShapeWorldProposer",
    "WordListProposer",
    "MLMProposer",
    "LLMProposer",
    "build_proposer",
]

_WORD = re.compile(r"^[^\W\d_]+(?:[-'][^\W\d_]+)*$", re.UNICODE)


def _stable_rng(*parts: str) -> random.Random:
    """A seeded RNG per (prompt, word): the same audit always probes with the same alternatives."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "little"))


class SubstituteProposer:
    """Base class: ``propose`` returns raw candidates; ``substitutes`` cleans them.

    Args:
        stop_words: words never proposed (function words).
    """

    name = "base"

    def __init__(self, stop_words: Iterable[str] | None = None) -> None:
        from debias3d.bias_audit.words import DEFAULT_STOP_WORDS

        self.stop_words = frozenset(
            w.lower() for w in (DEFAULT_STOP_WORDS if stop_words is None else stop_words)
        )

    def propose(self, prompt: str, word: str, start: int, end: int, k: int) -> list[str]:
        """Raw candidates for ``prompt[start:end] == word`` (may contain junk; cleaned by the caller)."""
        raise NotImplementedError

    def propose_many(self, items: Sequence[tuple[str, str, int, int]], k: int) -> list[list[str] | Exception]:
        """``propose`` for many ``(prompt, word, start, end)``; an exception is returned, not raised."""
        out: list[list[str] | Exception] = []
        for prompt, word, s, e in items:
            try:
                out.append(self.propose(prompt, word, s, e, k))
            except Exception as exc:  # noqa: BLE001 - a failing proposer costs only this word
                out.append(exc)
        return out

    def clean(self, word: str, raw: Iterable[Any], k: int) -> tuple[list[str], list[str]]:
        """``(kept, dropped)``: up to ``k`` distinct single words other than ``word``."""
        kept: list[str] = []
        dropped: list[str] = []
        w = word.lower()
        for c in raw:
            s = str(c).strip().strip(".,;:!?\"'").lower() if c is not None else ""
            if (
                not s
                or s == w
                or s.startswith("##")
                or not _WORD.match(s)
                or s in self.stop_words
                or s in kept
            ):
                dropped.append(str(c))
                continue
            kept.append(s)
            if len(kept) >= k:
                break
        return kept, dropped

    def substitutes(
        self, prompt: str, word: str, start: int, end: int, k: int
    ) -> tuple[list[str], str | None]:
        """Cleaned alternatives and, when there are none, a one-line message naming prompt and word."""
        res = self.propose_many([(prompt, word, start, end)], k)[0]
        return self._finish(prompt, word, res, k)

    def substitutes_many(
        self, items: Sequence[tuple[str, str, int, int]], k: int
    ) -> list[tuple[list[str], str | None]]:
        """:meth:`substitutes` for many words (proposers that batch, e.g. a masked LM, override ``propose_many``)."""
        return [
            self._finish(p, w, r, k)
            for (p, w, _, _), r in zip(items, self.propose_many(items, k), strict=True)
        ]

    def _finish(
        self, prompt: str, word: str, res: list[str] | Exception, k: int
    ) -> tuple[list[str], str | None]:
        if isinstance(res, Exception):
            msg = " ".join(str(res).split())[:160]
            return (
                [],
                f"substitutes ({self.name}): prompt {prompt!r}, word {word!r}: proposer failed: {type(res).__name__}: {msg}",
            )
        kept, dropped = self.clean(word, res, k)
        if kept:
            return kept, None
        why = (
            "nothing proposed"
            if not dropped
            else f"only the word itself, pieces or stop words ({', '.join(map(repr, dropped[:4]))})"
        )
        return [], f"substitutes ({self.name}): prompt {prompt!r}, word {word!r}: no substitutes: {why}"


class ClassProposer(SubstituteProposer):
    """Alternatives are the other members of the word's class (a fixed random order per prompt + word).

    Args:
        classes: class name → words.
    """

    name = "classes"

    def __init__(self, classes: Mapping[str, Sequence[str]], stop_words: Iterable[str] | None = None) -> None:
        super().__init__(stop_words)
        self.classes = {str(c): [str(w).lower() for w in ws] for c, ws in classes.items()}
        self.class_of: dict[str, str] = {}
        for c, ws in self.classes.items():
            for w in ws:
                self.class_of.setdefault(w, c)

    def propose(self, prompt: str, word: str, start: int, end: int, k: int) -> list[str]:
        c = self.class_of.get(word.lower())
        if c is None:
            return []
        others = [w for w in self.classes[c] if w != word.lower()]
        _stable_rng(prompt, word, str(start)).shuffle(others)
        return others


@register("proposer", "shapeworld")
class ShapeWorldProposer(ClassProposer):
    """ShapeWorld's vocabulary classes: colours, sizes, modifiers, actions, counts, nouns (singular
    and plural apart), materials and part words. Nouns get substitutes too, so w_h can be probed."""

    name = "shapeworld"

    def __init__(self, stop_words: Iterable[str] | None = None, **_: Any) -> None:
        from debias3d.data.shapeworld import vocab as v

        classes = {
            "colour": list(v.COLOURS),
            "size": list(v.SIZES),
            "modifier": list(v.MODIFIERS),
            "action": list(v.ACTIONS),
            "count": list(v.COUNTS),
            "noun": list(v.NOUNS),
            "plural": list(v.PLURALS.values()),
            "material": list(v.MATERIALS),
            "part": list(v.PART_WORDS),
        }
        super().__init__(classes, stop_words)


@register("proposer", "wordlist")
class WordListProposer(ClassProposer):
    """A user's YAML file of classes → words (``colour: [red, blue, ...]``).

    Args:
        path: the YAML file (a mapping of class name to a list of words).
    """

    name = "wordlist"

    def __init__(self, path: str | os.PathLike, stop_words: Iterable[str] | None = None, **_: Any) -> None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"wordlist proposer: {p} does not exist")
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(ws, list) for ws in data.values()):
            raise ValueError(f"wordlist proposer: {p} must map class names to lists of words")
        super().__init__(data, stop_words)


@register("proposer", "mlm")
class MLMProposer(SubstituteProposer):
    """In-context substitutes from a masked LM (``BertForMaskedLM`` & co.) in a local folder.

    The word's span is replaced by one mask token and the LM's top predictions for it are the
    candidates; sub-word pieces, the word itself and stop words are dropped. Many words are asked
    in one batched forward.

    Args:
        path: a local folder with the model and its tokenizer (never a hub name; nothing is downloaded).
        device: torch device.
        top: predictions read per mask before cleaning.
    """

    name = "mlm"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        top: int = 50,
        stop_words: Iterable[str] | None = None,
        **_: Any,
    ) -> None:
        super().__init__(stop_words)
        p = Path(path) if path else None
        if p is None or not p.is_dir():
            raise FileNotFoundError(f"mlm proposer: masked LM folder {str(path)!r} does not exist")
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = AutoModelForMaskedLM.from_pretrained(str(p), local_files_only=True).to(device).eval()
        if self.tokenizer.mask_token is None:
            raise ValueError(f"mlm proposer: the tokenizer in {p} has no mask token")
        self.device = device
        self.top = int(top)

    def propose_many(self, items: Sequence[tuple[str, str, int, int]], k: int) -> list[list[str] | Exception]:
        import torch

        if not items:
            return []
        texts = [p[:s] + self.tokenizer.mask_token + p[e:] for p, _, s, e in items]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            logits = self.model(**{k_: v.to(self.device) for k_, v in enc.items()}).logits
        out: list[list[str] | Exception] = []
        mask_id = self.tokenizer.mask_token_id
        for i in range(len(items)):
            pos = (enc["input_ids"][i] == mask_id).nonzero().flatten()
            if len(pos) == 0:
                out.append(ValueError("the word was cut off by the masked LM's token limit"))
                continue
            top = logits[i, int(pos[0])].topk(min(self.top, logits.shape[-1])).indices.tolist()
            out.append(self.tokenizer.convert_ids_to_tokens(top))
        return out

    def propose(self, prompt: str, word: str, start: int, end: int, k: int) -> list[str]:
        res = self.propose_many([(prompt, word, start, end)], k)[0]
        if isinstance(res, Exception):
            raise res
        return res


LLM_TEMPLATE = (
    'In the text-to-3D prompt "{prompt}", the word "{word}" could be replaced by other words of the same '
    "kind (another colour for a colour, another object for an object, another size for a size, ...). "
    "Give {k} different single-word alternatives that fit the prompt. "
    'Answer with a JSON object {{"words": ["...", "..."]}} and nothing else.'
)


@register("proposer", "llm")
class LLMProposer(SubstituteProposer):
    """``k`` same-category alternatives from any OpenAI-compatible chat endpoint, cached on disk.

    The API key comes only from ``OPENAI_API_KEY``; it is never logged or stored. Each answer is
    cached in ``cache_dir`` under a hash of (model, prompt, word, k), so reruns ask nothing. A
    timeout, an HTTP error or a malformed answer fails only that word.

    Args:
        base_url: endpoint (``http://127.0.0.1:8000/v1`` for a local vLLM server).
        model: model name.
        cache_dir: answer cache folder (created).
        timeout_s: per-request timeout.
        client: an already-built ``openai.OpenAI``-like client (tests).
    """

    name = "llm"

    def __init__(
        self,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        cache_dir: str | os.PathLike | None = None,
        timeout_s: float = 30.0,
        client: Any = None,
        stop_words: Iterable[str] | None = None,
        **_: Any,
    ) -> None:
        super().__init__(stop_words)
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if client is None:
            from openai import OpenAI

            client = OpenAI(
                base_url=base_url or None,
                api_key=os.environ.get("OPENAI_API_KEY") or "unused",
                timeout=timeout_s,
                max_retries=0,
            )
        self.client = client

    def _cache_path(self, prompt: str, word: str, k: int) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256(json.dumps([self.model, prompt, word, k]).encode()).hexdigest()[:32]
        return self.cache_dir / f"{h}.json"

    def propose(self, prompt: str, word: str, start: int, end: int, k: int) -> list[str]:
        path = self._cache_path(prompt, word, k)
        if path is not None and path.is_file():
            return list(json.loads(path.read_text(encoding="utf-8"))["words"])
        resp = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": LLM_TEMPLATE.format(prompt=prompt, word=word, k=k)}],
            response_format={"type": "json_object"},
            temperature=0.0,
        )
        text = resp.choices[0].message.content or ""
        try:
            words = json.loads(text)["words"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed answer ({' '.join(text.split())[:80]!r})") from exc
        if not isinstance(words, list):
            raise ValueError("malformed answer ('words' is not a list)")
        words = [str(w) for w in words]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"prompt": prompt, "word": word, "words": words}), encoding="utf-8")
            tmp.replace(path)
        return words


def build_proposer(name: str, stop_words: Iterable[str] | None = None, **options: Any) -> SubstituteProposer:
    """The proposer registered as ``name``, built with ``options`` (unused options are ignored).

    Raises:
        KeyError: unknown name (the message lists the registered ones).
        FileNotFoundError / ValueError: a missing word list or masked LM folder (one line).
    """
    from debias3d.registry import find

    return find("proposer", name)(stop_words=stop_words, **options)
