"""Attribution: the paper's grad, grad x input, own integrated gradients (completeness), batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debias3d.bias_audit.attribute import (
    EvaluatorScore,
    GradientAttribution,
    attribute_prompts,
    encode_sample_views,
    make_baselines,
    quadrature,
)

PROMPTS = [
    "a red vase with a long, narrow neck",
    "two small blue cups",
    "a spiky snowman floating in the air",
]


def _inputs(evaluator, prompts, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = evaluator.config.image_size
    views = torch.rand((len(prompts), d, 6, 3, size, size), generator=g)
    valid = torch.ones((len(prompts), d), dtype=torch.bool)
    enc = evaluator.tokenize(prompts)
    emb = evaluator.embed_tokens(enc["input_ids"]).detach()
    return enc, emb, views, valid


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_quadrature_weights_sum_to_one(rule):
    a, w = quadrature(16, rule)
    assert a.min() >= 0 and a.max() <= 1
    assert float(w.sum()) == pytest.approx(1.0)
    # integrates x^2 on [0, 1]
    assert float((w * a**2).sum()) == pytest.approx(1 / 3, rel=1e-2)


def test_grad_is_abs_gradient_summed_over_embedding_dim(evaluator):
    """Eq. 3: e'_i = Σ_E |∂q/∂e_i| — compared with a hand-written backward pass."""
    enc, emb, views, valid = _inputs(evaluator, PROMPTS)
    fwd = EvaluatorScore(evaluator, "overall")
    mask = enc["attention_mask"]
    x = emb.clone().requires_grad_(True)
    fwd(x, views, valid, mask).sum().backward()
    expected = x.grad.abs().sum(-1)  # (B, T)
    attr = GradientAttribution(fwd, "grad").attribute(emb, additional_forward_args=(views, valid, mask))
    assert attr.shape == emb.shape
    assert (attr >= 0).all()
    torch.testing.assert_close(attr.sum(-1), expected, rtol=1e-5, atol=1e-9)


def test_grad_x_input(evaluator):
    enc, emb, views, valid = _inputs(evaluator, PROMPTS[:2])
    fwd = EvaluatorScore(evaluator, "alignment")
    args = (views, valid, enc["attention_mask"])
    g = GradientAttribution(fwd, "grad").attribute(emb, additional_forward_args=args)
    gx = GradientAttribution(fwd, "grad_x_input").attribute(emb, additional_forward_args=args)
    torch.testing.assert_close(gx.abs(), g * emb.abs(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    ("baseline", "n_steps"), [("pad", 64), pytest.param("zeros", 64, marks=pytest.mark.slow)]
)
def test_integrated_gradients_completeness_within_1_percent(evaluator, baseline, n_steps):
    """Σ attr = q(e) - q(e₀) within 1% (the all-zeros path through LayerNorm needs more points)."""
    enc, emb, views, valid = _inputs(evaluator, PROMPTS[:2])
    fwd = EvaluatorScore(evaluator, "overall")
    mask = enc["attention_mask"]
    special = enc["offset_mapping"][..., 1] <= enc["offset_mapping"][..., 0]
    x0 = make_baselines(baseline, enc["input_ids"], emb, evaluator.embed_tokens, special, 0)
    ig = GradientAttribution(fwd, "integrated_gradients")
    attr, delta = ig.attribute(
        emb,
        baselines=x0,
        additional_forward_args=(views, valid, mask),
        n_steps=n_steps,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        diff = fwd(emb, views, valid, mask) - fwd(x0, views, valid, mask)
    total = attr.double().sum(dim=(1, 2))
    assert (diff.abs() > 1e-6).all(), "the test needs a real score difference"
    rel = ((total - diff.double()).abs() / diff.double().abs()).max().item()
    assert rel < 0.01, f"completeness error {rel:.4f}"
    torch.testing.assert_close(delta.double(), diff.double() - total, rtol=1e-4, atol=1e-7)
    if baseline == "pad":  # special tokens keep their embedding: no attribution
        assert attr[special].abs().max() == 0


@pytest.mark.parametrize("method", ["grad", "grad_x_input", "integrated_gradients"])
def test_batched_equals_per_prompt(evaluator, method):
    enc, emb, views, valid = _inputs(evaluator, PROMPTS)
    prompts = PROMPTS[:2]
    views, valid = views[:2], valid[:2]
    batched = attribute_prompts(evaluator, prompts, views, valid, method=method, n_steps=4)
    for i, p in enumerate(prompts):
        one = attribute_prompts(evaluator, [p], views[i : i + 1], valid[i : i + 1], method=method, n_steps=4)
        np.testing.assert_allclose(batched.token_attr[i], one.token_attr[0], rtol=2e-4, atol=1e-7)
        assert batched.tokens[i] == one.tokens[0]


@pytest.mark.parametrize("method", ["grad", "integrated_gradients"])
def test_cached_view_features_give_the_same_attributions(evaluator, method):
    """Views encoded once (the audit's path) == views re-encoded on every forward."""
    enc, emb, views, valid = _inputs(evaluator, PROMPTS, d=2)
    feats = encode_sample_views(evaluator, views)
    assert feats.dim() == 4 and feats.shape[:2] == (3, 2)
    assert encode_sample_views(evaluator, feats) is feats
    a = attribute_prompts(evaluator, PROMPTS, views, valid, method=method, n_steps=4)
    b = attribute_prompts(evaluator, PROMPTS, feats, valid, method=method, n_steps=4)
    for x, y in zip(a.token_attr, b.token_attr, strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_text_encoded_once_per_prompt_matches_per_sample(evaluator):
    """EvaluatorScore shares a prompt's text features between its D samples; same q and ∂q/∂e
    as running the text encoder on every (prompt, sample) row."""

    class PerSample:  # the evaluator without score_from_text: the fallback path
        def __init__(self, ev):
            self.ev, self.dimensions = ev, ev.dimensions

        def score_from_embeddings(self, *a):
            return self.ev.score_from_embeddings(*a)

    enc, emb, views, valid = _inputs(evaluator, PROMPTS, d=3)
    valid[1, 2] = False
    out = []
    for ev in (evaluator, PerSample(evaluator)):
        x = emb.clone().requires_grad_(True)
        q = EvaluatorScore(ev)(x, views, valid, enc["attention_mask"])
        (g,) = torch.autograd.grad(q.sum(), x)
        out.append((q.detach(), g))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-7)


def test_internal_batch_size_chunks_give_same_result(evaluator):
    enc, emb, views, valid = _inputs(evaluator, PROMPTS[:2])
    fwd = EvaluatorScore(evaluator)
    ig = GradientAttribution(fwd, "integrated_gradients")
    args = (views, valid, enc["attention_mask"])
    full = ig.attribute(emb, additional_forward_args=args, n_steps=3)
    chunked = ig.attribute(emb, additional_forward_args=args, n_steps=3, internal_batch_size=4)
    torch.testing.assert_close(full, chunked, rtol=1e-4, atol=1e-8)


def test_invalid_samples_do_not_contribute(evaluator):
    enc, emb, views, valid = _inputs(evaluator, PROMPTS[:1], d=2)  # noqa: F841
    fwd = EvaluatorScore(evaluator)
    mask = enc["attention_mask"]
    valid2 = torch.tensor([[True, False]])
    q_both = fwd(emb, views, valid2, mask)
    q_one = fwd(emb, views[:, :1], valid[:, :1], mask)
    torch.testing.assert_close(q_both, q_one)


def test_matches_captum(evaluator):
    captum = pytest.importorskip("captum.attr")
    enc, emb, views, valid = _inputs(evaluator, PROMPTS[:2])
    fwd = EvaluatorScore(evaluator)
    args = (views, valid, enc["attention_mask"])
    ours = GradientAttribution(fwd, "grad").attribute(emb, additional_forward_args=args)
    theirs = captum.Saliency(fwd).attribute(emb, additional_forward_args=args, abs=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-9)
    ig_ours = GradientAttribution(fwd, "integrated_gradients").attribute(
        emb, additional_forward_args=args, n_steps=6
    )
    ig_theirs = captum.IntegratedGradients(fwd).attribute(emb, additional_forward_args=args, n_steps=6)
    torch.testing.assert_close(ig_ours, ig_theirs.to(ig_ours.dtype), rtol=1e-3, atol=1e-7)


def test_toy_functions_and_errors():
    w = torch.tensor([1.0, -2.0])
    f = lambda x: (x * w).sum(dim=(1, 2))  # noqa: E731
    x = torch.randn(4, 3, 2)
    attr = GradientAttribution(f, "grad").attribute(x)
    torch.testing.assert_close(attr, w.abs().expand_as(x))
    ig, delta = GradientAttribution(f, "integrated_gradients").attribute(
        x, n_steps=2, return_convergence_delta=True
    )
    torch.testing.assert_close(ig, x * w)  # linear: IG = (x - 0) * w exactly
    assert delta.abs().max() < 1e-5
    with pytest.raises(ValueError, match="unknown attribution method"):
        GradientAttribution(f, "lime")
    with pytest.raises(ValueError, match="target"):
        GradientAttribution(lambda x: torch.stack([f(x), f(x)], 1), "grad").attribute(x)


def test_result_plots_and_html(evaluator):
    enc, emb, views, valid = _inputs(evaluator, ["a <script>alert(1)</script> vase", "a red cup"])
    res = attribute_prompts(evaluator, ["a <script>alert(1)</script> vase", "a red cup"], views, valid)
    fig = res.plot_token_attr(0)
    assert fig.axes
    fig2 = res.plot_token_attr(1, words=True)
    assert fig2.axes
    html = res.to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html
    ws = res.words(1)
    assert [w.word for w in ws] == ["a", "red", "cup"]
    assert res.scores.shape == (2,)
