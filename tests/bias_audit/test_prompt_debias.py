"""D-SDS view contradictions with a tiny random BertForMaskedLM and a tiny WordPiece vocabulary."""

from __future__ import annotations

import pytest
import torch

from debias3d.bias_audit.prompt_debias import ViewContradictionAuditor

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "this", "image", "is", "depicting", "a", "view", "of",
    "front", "back", "side", "top",
    "smiling", "dog", "red", "vase", "with", "long", "neck", "##s",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(cfg).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


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
