"""D-SDS view contradictions with a tiny random BertForMaskedLM and a tiny WordPiece vocabulary."""

from __future__ import annotations

import pytest
from audit_helpers import VIEW_VOCAB, tiny_masked_lm

from debias3d.bias_audit.prompt_debias import ViewContradictionAuditor


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_bert")
    return d, *tiny_masked_lm(VIEW_VOCAB, d, max_positions=64)


def test_pmi_matches_eq14(tiny_mlm):
    _, model, tok = tiny_mlm
    aud = ViewContradictionAuditor(model, tok, threshold=0.95, faithfulness=0.5)
    res = aud.audit(["a smiling dog"])[0]
    assert res.words == ["a", "smiling", "dog"]
    full = aud.view_probs(["a smiling dog"])[0].double()
    part = aud.view_probs(["a dog"])[0].double()
    assert float(full.sum()) == pytest.approx(1.0)
    expected = full / (0.5 * full + 0.5 * part)
    assert res.pmi[1] == pytest.approx(expected.tolist(), rel=1e-5)
    for j, v in enumerate(res.views):
        assert ("smiling" in res.flagged.get(v, [])) == (expected[j] < 0.95)
    # the view-normalised probabilities make PMI a weighted ratio: some view >= 1 unless all equal
    assert max(res.pmi[1]) >= 1.0 - 1e-9
    assert set(res.debiased_prompts()) == {"front", "back", "side", "top"}


def test_protected_words_never_flagged(tiny_mlm):
    _, model, tok = tiny_mlm
    aud = ViewContradictionAuditor(model, tok, threshold=1.01, protected=["dog"])
    res = aud.audit(["a smiling dog", "a red vase with long necks"])
    assert res[0].pmi[2] == pytest.approx([1.0] * 4)
    assert all("dog" not in ws for ws in res[0].flagged.values())
    # threshold above 1: every unprotected word falls below it for some view
    assert any(res[0].flagged.values())
    assert res[1].words[-1] == "necks"


def test_from_pretrained_and_errors(tiny_mlm, tmp_path):
    d, model, tok = tiny_mlm
    aud = ViewContradictionAuditor.from_pretrained(d)
    assert aud.audit(["a vase"])[0].to_dict()["views"] == ["front", "back", "side", "top"]
    with pytest.raises(FileNotFoundError, match="bert-base-uncased"):
        ViewContradictionAuditor.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="one"):
        ViewContradictionAuditor(model, tok, views=("overhead",))
    with pytest.raises(ValueError, match="faithfulness"):
        ViewContradictionAuditor(model, tok, faithfulness=0.0)
