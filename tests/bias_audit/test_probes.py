"""Word probes (occlusion, contrastive, choice), their intervals and verdicts, and the substitute proposers."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from debias3d.bias_audit.probes import (
    WordProbe,
    bootstrap_interval,
    choice_probability,
    probe_prompts,
    verdict,
)
from debias3d.bias_audit.substitutes import (
    LLMProposer,
    MLMProposer,
    ShapeWorldProposer,
    WordListProposer,
    build_proposer,
)
from debias3d.bias_audit.truth import auc, method_truth


def _shows(texts, rows, shown):
    """Toy evaluator: each prompt's D=2 samples show the words in ``shown[prompt]``; a variant
    scores +1 per word of its text that the sample shows."""
    out = []
    for t, r in zip(texts, rows.tolist(), strict=True):
        ws = set(t.split())
        out.append([float(len(ws & s)) for s in shown[r]])
    return torch.tensor(out)


SHOWN = [[{"red", "vase"}, {"red", "vase"}], [{"cup"}, {"cup", "tall"}]]
PROMPTS = ["a red vase", "a tall blue cup"]


@pytest.mark.parametrize("method", ["occlusion", "contrastive"])
def test_probe_finds_the_ignored_words(method):
    probe = WordProbe(lambda t, r: _shows(t, r, SHOWN), method, proposer=ShapeWorldProposer())
    res = probe.attribute(PROMPTS, k=3, stop_words={"a"}, internal_batch_size=3)
    s = {(i, w.word): w for i in range(2) for w in res.words(i)}
    assert math.isnan(s[0, "a"].score) and s[0, "a"].verdict is None  # stop words are not probed
    assert s[0, "red"].score == pytest.approx(1.0) and s[0, "red"].verdict == "shown"
    assert s[1, "blue"].score == pytest.approx(0.0) and s[1, "blue"].verdict == "ignored"
    # "tall" is shown by one sample of two: per-sample drops and an interval that straddles 0.5
    assert s[1, "tall"].per_sample.tolist() == pytest.approx([0.0, 1.0])
    assert s[1, "tall"].lo <= 0.5 <= s[1, "tall"].hi
    assert res.scores.shape == (2, 2)
    if method == "contrastive":
        assert len(s[0, "red"].alternatives) == 3 and "red" not in s[0, "red"].alternatives
    html = res.to_html()
    assert "tall" in html and "ignored" in html


def test_choice_probe_is_the_forced_choice_probability_with_chance_as_threshold():
    """Per sample: softmax over {word, K alternatives} of the scores / T; chance 1/(K+1) is the verdict line."""
    t = 0.5
    probe = WordProbe(lambda x, r: _shows(x, r, SHOWN), "choice", proposer=ShapeWorldProposer())
    res = probe.attribute(PROMPTS, k=3, stop_words={"a"}, temperature=t, n_boot=300)
    s = {(i, w.word): w for i in range(2) for w in res.words(i)}
    # every alternative scores 1 lower on a sample that shows the word: p = e^(2/T) / (e^(2/T) + 3 e^(1/T))
    p_shown = 1.0 / (1.0 + 3.0 * math.exp(-1.0 / t))
    assert s[0, "red"].per_sample.tolist() == pytest.approx([p_shown, p_shown])
    assert s[0, "red"].score == pytest.approx(p_shown) and s[0, "red"].verdict == "shown"
    # "blue" is never shown: every alternative ties with it, so p is exactly chance and the verdict is ignored
    assert s[1, "blue"].score == pytest.approx(0.25) and s[1, "blue"].threshold == pytest.approx(0.25)
    assert s[1, "blue"].verdict == "ignored"
    assert s[1, "tall"].per_sample.tolist() == pytest.approx([0.25, p_shown])
    assert s[1, "tall"].lo <= s[1, "tall"].score <= s[1, "tall"].hi
    assert s[1, "tall"].verdict == "unclear"  # one sample of two shows it
    # a colder softmax is surer of the same evidence; a given threshold replaces chance
    cold = probe.attribute(PROMPTS, k=3, stop_words={"a"}, temperature=0.05, threshold=0.99)
    assert cold.words(0)[1].score > p_shown and cold.words(0)[1].threshold == 0.99
    with pytest.raises(ValueError, match="temperature must be > 0"):
        probe.attribute(PROMPTS, temperature=0.0)
    with pytest.raises(ValueError, match="choice probe needs a substitute proposer"):
        WordProbe(lambda x, r: x, "choice")


def test_choice_probability_and_its_bootstrap():
    assert choice_probability(np.zeros(4), 0.1) == pytest.approx(0.2)
    # large drops: certain; large negative drops: never chosen; no overflow at a tiny temperature
    assert choice_probability(np.array([5.0, 5.0]), 1e-4) == pytest.approx(1.0)
    assert choice_probability(np.array([-5.0, 1.0]), 1e-4) == pytest.approx(0.0, abs=1e-12)
    drops = np.array([[0.3, 0.1], [0.0, -0.1], [np.nan, np.nan]])
    p = choice_probability(drops[:2], 0.1)
    lo, hi = bootstrap_interval(drops, n_boot=400, temperature=0.1)
    assert 0.0 <= lo <= p.mean() <= hi <= 1.0
    assert bootstrap_interval(np.array([[0.0]]), temperature=0.1) == (0.5, 0.5)


def test_occlusion_matches_word_deletion_by_hand():
    seen = []

    def fwd(texts, rows):
        seen.extend(texts)
        return torch.tensor([[float(len(t))] for t in texts])

    res = WordProbe(fwd, "occlusion").attribute(["a red  vase"], stop_words={"a"})
    assert "a vase" in seen and "a red" in seen  # the word removed, one space kept
    assert [w.score for w in res.words(0)][1:] == [
        len("a red  vase") - len("a vase"),
        len("a red  vase") - len("a red"),
    ]


def test_bootstrap_interval_and_verdict():
    m = np.array([[1.0, 1.2], [0.9, 1.1], [1.0, 1.0], [np.nan, np.nan]])  # the last sample is invalid
    lo, hi = bootstrap_interval(m, n_boot=500, ci=0.9)
    assert 0.9 <= lo <= m[:3].mean() <= hi <= 1.2
    assert bootstrap_interval(np.array([[0.3]])) == (0.3, 0.3)
    assert math.isnan(bootstrap_interval(np.full((2, 2), np.nan))[0])
    assert verdict(0.1, 0.2, 0.0) == "shown" and verdict(-0.2, -0.1, 0.0) == "ignored"
    assert verdict(-0.1, 0.1, 0.0) == "unclear" and verdict(math.nan, 1.0, 0.0) == "unclear"
    assert verdict(0.0, 0.0, 0.0) == "ignored"  # no effect at all: the word is not shown


def test_auc_and_method_truth():
    import pandas as pd

    assert auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert auc([0, 1], [True, False]) == 0.0 and math.isnan(auc([1, 2], [True, True]))
    rows = pd.DataFrame(
        {
            "prompt_id": ["p", "p", "p", "p", "q", "q", "q", "q"],
            "word": ["red", "tall", "red", "tall", "blue", "flat", "blue", "flat"],
            "sample": [0, 0, 1, 1, 0, 0, 1, 1],
            "shown": [True, False, True, False, True, True, False, True],
            "score_good": [0.9, 0.1, 0.8, 0.0, 0.7, 0.6, 0.2, 0.5],
            "score_bad": [0.1, 0.9, 0.0, 0.8, 0.2, 0.1, 0.9, 0.1],
        }
    )
    fid = {"red": 1.0, "tall": 0.0, "blue": 0.5, "flat": 1.0}
    tables = {
        m: rows.groupby("word")[f"score_{m}"].mean().rename("mean_attr").reset_index()
        for m in ("good", "bad")
    }
    r = method_truth(rows, ["good", "bad"], tables, fid, n_boot=50)
    assert r["good"]["auc"] == 1.0 and r["bad"]["auc"] < 0.2
    assert r["good"]["w_l_hit_rate"] == 1.0 and r["bad"]["w_l_hit_rate"] == 0.0
    assert r["good"]["w_l_chance"] == 0.5 and r["good"]["n_prompts"] == 2
    assert r["good"]["spearman"] > 0 > r["bad"]["spearman"]


# ------------------------------------------------------------------------------ proposers
def test_shapeworld_proposer_classes_and_bad_words():
    p = ShapeWorldProposer()
    alts, msg = p.substitutes("a red vase", "red", 2, 5, k=4)
    assert (
        len(alts) == 4
        and msg is None
        and all(a in ("green", "blue", "yellow", "white", "black", "orange", "purple") for a in alts)
    )
    assert p.substitutes("a red vase", "red", 2, 5, k=4)[0] == alts  # deterministic
    nouns, _ = p.substitutes("two vases", "vases", 4, 9, k=3)
    assert all(n.endswith("s") or n == "snowmen" for n in nouns)  # plurals for plurals: w_h can be probed
    alts, msg = p.substitutes("a glorp vase", "glorp", 2, 7, k=4)
    assert alts == [] and "prompt 'a glorp vase'" in msg and "word 'glorp'" in msg and "\n" not in msg


class _Junk(ShapeWorldProposer):
    name = "junk"

    def propose(self, prompt, word, start, end, k):
        if word == "boom":
            raise TimeoutError("read timed out")
        return [word, "##ing", "the", "", word.upper(), "two words"]


def test_junk_answers_are_cleaned_and_named():
    p = _Junk()
    alts, msg = p.substitutes("a red vase", "red", 2, 5, k=4)
    assert alts == [] and "only the word itself" in msg and "word 'red'" in msg
    alts, msg = p.substitutes("a boom vase", "boom", 2, 6, k=4)
    assert alts == [] and "proposer failed: TimeoutError: read timed out" in msg


def test_wordlist_proposer(tmp_path):
    f = tmp_path / "words.yaml"
    f.write_text("fruit: [apple, pear, plum]\ncolour: [red, teal]\n")
    p = build_proposer("wordlist", path=f)
    assert isinstance(p, WordListProposer)
    assert sorted(p.substitutes("a red apple", "apple", 6, 11, k=4)[0]) == ["pear", "plum"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WordListProposer(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must map class names"):
        WordListProposer(tmp_path / "bad.yaml")


def test_mlm_proposer_with_a_tiny_masked_lm(tmp_path):
    from audit_helpers import tiny_masked_lm

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "red",
        "blue",
        "green",
        "vase",
        "cup",
        "##s",
        "the",
    ]
    tiny_masked_lm(vocab, tmp_path)
    p = build_proposer("mlm", path=str(tmp_path), top=len(vocab))
    assert isinstance(p, MLMProposer)
    out = p.substitutes_many([("a red vase", "red", 2, 5), ("a blue cup", "cup", 7, 10)], k=3)
    for (alts, msg), word in zip(out, ("red", "cup"), strict=True):
        assert msg is None and 1 <= len(alts) <= 3
        assert word not in alts and not any(a.startswith("##") or a.startswith("[") for a in alts)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MLMProposer(tmp_path / "nope")


class _Chat(BaseHTTPRequestHandler):
    answers: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.answers.append(body["messages"][0]["content"])
        word = "blue" if '"red"' in body["messages"][0]["content"] else None
        if word is None:
            self.send_response(500)
            self.end_headers()
            return
        content = json.dumps({"words": ["red", "blue", "green", "##ish"]})
        data = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_proposer_local_server_cache_and_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    srv = HTTPServer(("127.0.0.1", 0), _Chat)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        p = LLMProposer(base_url=url, model="m", cache_dir=tmp_path / "cache", timeout_s=5)
        alts, msg = p.substitutes("a red vase", "red", 2, 5, k=4)
        assert alts == ["blue", "green"] and msg is None  # the word itself and pieces dropped
        n = len(_Chat.answers)
        again = LLMProposer(base_url=url, model="m", cache_dir=tmp_path / "cache", timeout_s=5)
        assert (
            again.substitutes("a red vase", "red", 2, 5, k=4)[0] == alts and len(_Chat.answers) == n
        )  # cached
        alts, msg = p.substitutes("a tall vase", "tall", 2, 6, k=4)  # the server fails: one line
        assert alts == [] and "word 'tall'" in msg and "proposer failed" in msg
        assert "test-key" not in msg
    finally:
        srv.shutdown()


def test_probe_prompts_on_a_tiny_evaluator(evaluator):
    """The evaluator path: cached features in, per-sample drops out, consistent with direct scoring."""
    torch.manual_seed(0)
    b, d = 2, 3
    views = torch.rand(b, d, 6, 3, 16, 16)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    res = probe_prompts(
        evaluator,
        ["a red vase", "two small blue cups"],
        views,
        valid,
        method="occlusion",
        internal_batch_size=2,
    )
    w = res.words(0)[1]
    assert w.word == "red" and math.isnan(w.per_sample[2])  # the invalid sample is left out
    from debias3d.models.evaluator.views import ViewBatch

    with torch.no_grad():
        full = evaluator.score(ViewBatch(views[0, :2], torch.ones(2, dtype=torch.bool)), ["a red vase"] * 2)
        cut = evaluator.score(ViewBatch(views[0, :2], torch.ones(2, dtype=torch.bool)), ["a vase"] * 2)
    col = list(evaluator.dimensions).index("overall")
    expect = (full[:, col] - cut[:, col]).double().numpy()
    assert w.per_sample[:2] == pytest.approx(expect, abs=1e-4)
    assert res.scores.shape == (b, d)


def test_missing_masked_lm_folder_is_one_line_and_the_audit_goes_on(tmp_path):
    from debias3d.bias_audit.config import AttributionConfig, AuditConfig, ProbeConfig
    from debias3d.bias_audit.pipeline import build_probe_proposer

    att = AttributionConfig(
        methods=("grad", "contrastive"),
        probes=ProbeConfig(proposer="mlm", mlm_path=str(tmp_path / "no-bert")),
    )
    proposer, msg = build_probe_proposer(AuditConfig(attribution=att), tmp_path, frozenset())
    assert proposer is None and "contrastive probe skipped" in msg and "no-bert" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="wordlist must name a YAML file"):
        ProbeConfig(proposer="wordlist")
    with pytest.raises(ValueError, match="select 'occlusion' must be one of methods"):
        AttributionConfig(methods=("grad",), select="occlusion")
    assert AttributionConfig(methods=("grad", "occlusion")).select == "occlusion"  # best of those run
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ProbeConfig(temperature=0.0)
    with pytest.raises(ValueError, match=r"choice_threshold must be in \(0, 1\)"):
        ProbeConfig(choice_threshold=1.0)
    with pytest.raises(ValueError, match="choice_dimension must be one of"):
        ProbeConfig(choice_dimension="colour")
    pc = ProbeConfig(threshold=0.01, choice_dimension="overall")
    assert pc.threshold_of("choice") is None and pc.threshold_of("contrastive") == 0.01
    assert pc.dimension_of("choice") == "overall" and pc.dimension_of("occlusion") == "overall"
    att = AttributionConfig(
        methods=("grad", "choice"), probes=ProbeConfig(proposer="mlm", mlm_path="/no/bert")
    )
    _, msg = build_probe_proposer(AuditConfig(attribution=att), tmp_path, frozenset())
    assert msg.startswith("choice probe skipped")


def test_probe_word_table_uses_each_words_own_threshold():
    import pandas as pd

    from debias3d.bias_audit.words import probe_word_table

    words = pd.DataFrame(
        {
            "prompt_id": ["0", "1", "0", "1"],
            "word": ["small", "small", "red", "red"],
            "is_stop": [False] * 4,
            "attr_choice": [0.45, 0.48, 0.45, 0.48],
            "thr_choice": [0.5, 0.5, 0.2, 0.2],  # small has 1 alternative, red 4
        }
    )
    t = probe_word_table(words, "choice", threshold=None).set_index("word")
    assert t.loc["small", "verdict"] == "ignored" and t.loc["small", "threshold"] == 0.5
    assert t.loc["red", "verdict"] == "shown" and t.loc["red", "threshold"] == pytest.approx(0.2)
    assert set(probe_word_table(words, "choice", threshold=0.47)["verdict"]) == {"unclear"}
