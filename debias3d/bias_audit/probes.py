"""Counterfactual word probes: does the shape show this word? (attribution beside the gradient).

The paper's gradient ``e'_i = Σ|∂q/∂e_i|`` measures how sensitive the *evaluator* is to a word, not
whether the *generator* showed it. A probe asks the second question directly, on the same shape:
change the prompt, keep the mesh, and see how much the evaluator's score drops.

* ``occlusion`` — remove the word from the evaluator's prompt (captum's ``FeatureAblation`` with
  one feature per word, the ablated value being "no word"); drop = ``q(x, t) - q(x, t \\ w)``.
* ``contrastive`` — replace the word by ``K`` same-kind alternatives from a substitute proposer
  (:mod:`debias3d.bias_audit.substitutes`); drop = ``q(x, t) - mean_k q(x, t[w→a_k])``. A shape
  that shows "red" loses score when its prompt says "blue"; one that ignored "red" does not.
* ``choice`` — the same ``K`` swaps read as a forced choice (zero-shot classification of the shape
  over the word's kind, as CLIP does over class names): per sample, the probability that the
  evaluator picks the prompt's own word among {word, ``a_1..a_K``},
  ``p = softmax(q(x, t[w→·]) / T)_word = 1 / (1 + Σ_k exp(-(q(x, t) - q(x, t[w→a_k])) / T))``.
  Chance is ``1 / (K + 1)``, so a word the shape does not show scores near or below it; that
  is the verdict threshold unless one is given.

A large drop (or choice probability) means the shape shows the word; a drop near zero (or
negative) means the generator ignored it. The probes run per sample on the evaluator's cached view
features (no re-render; only the text side and the fusion run), batched over prompts, words and
alternatives in chunks of ``internal_batch_size`` rows. Every word gets a score (mean over the
``D`` samples and ``K`` alternatives; ``choice``: mean probability over the samples), a bootstrap
interval (resampling samples and alternatives) and a verdict: ``shown`` (interval above the
threshold), ``ignored`` (at or below) or ``unclear`` (straddles it).

The API is captum-shaped: :class:`WordProbe` is built from a forward function and its
:meth:`~WordProbe.attribute` returns a :class:`ProbeResult` that draws word heatmaps and writes HTML.

>>> import torch
>>> fwd = lambda texts, rows: torch.tensor([[1.0 if "red" in t else 0.0] for t in texts])
>>> res = WordProbe(fwd, "occlusion").attribute(["a red box"], stop_words={"a"})
>>> [(w.word, w.score) for w in res.words(0)]
[('a', nan), ('red', 1.0), ('box', 0.0)]
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "PROBES",
    "SWAP_PROBES",
    "VERDICTS",
    "ProbeWord",
    "ProbeResult",
    "WordProbe",
    "EvaluatorTextScore",
    "probe_prompts",
    "bootstrap_interval",
    "choice_probability",
    "verdict",
]

PROBES: tuple[str, ...] = ("occlusion", "contrastive", "choice")
#: Probes that swap the word for a proposer's same-kind alternatives.
SWAP_PROBES: tuple[str, ...] = ("contrastive", "choice")
VERDICTS: tuple[str, ...] = ("shown", "ignored", "unclear")


def _drop_word(text: str, start: int, end: int) -> str:
    """``text`` without ``text[start:end]`` (one space kept between its neighbours)."""
    return " ".join((text[:start].rstrip() + " " + text[end:].lstrip()).split())


def choice_probability(drops: np.ndarray, temperature: float) -> np.ndarray:
    """Forced-choice probability of the original word from its drops ``(..., K)`` → ``(...)``.

    ``p = 1 / (1 + Σ_k exp(-drop_k / T))``: the softmax weight of the original prompt's score among
    the original and its ``K`` alternatives at temperature ``T`` (computed in log space).

    >>> float(choice_probability(np.zeros(3), 0.05))  # no difference: chance, 1 / (K + 1)
    0.25
    """
    z = -np.asarray(drops, dtype=float) / float(temperature)
    lse = np.logaddexp.reduce(z, axis=-1)
    return np.exp(-np.logaddexp(0.0, lse))


def bootstrap_interval(
    drops: np.ndarray,
    n_boot: int = 200,
    ci: float = 0.9,
    rng: np.random.Generator | None = None,
    temperature: float | None = None,
) -> tuple[float, float]:
    """Percentile interval of the mean of a ``(D, K)`` drop matrix, resampling rows and columns.

    Rows (samples) and columns (alternatives) are resampled independently with replacement, the
    two-way bootstrap of a crossed design. NaN cells (invalid samples) are left out of each mean.
    With ``temperature`` the statistic is the mean over samples of the forced-choice probability
    (:func:`choice_probability` of each resampled row) instead of the mean drop.
    """
    m = np.asarray(drops, dtype=float)
    m = m[np.isfinite(m).all(axis=1)] if m.ndim == 2 else m.reshape(-1, 1)
    if m.size == 0:
        return math.nan, math.nan
    d, k = m.shape
    if d * k == 1:
        v = float(m[0, 0]) if temperature is None else float(choice_probability(m[0], temperature))
        return v, v
    rng = rng if rng is not None else np.random.default_rng(0)
    ri = rng.integers(0, d, size=(n_boot, d))
    ci_ = rng.integers(0, k, size=(n_boot, k))
    picked = m[ri[:, :, None], ci_[:, None, :]]  # (n_boot, D, K)
    if temperature is None:
        means = picked.mean(axis=(1, 2))
    else:
        means = choice_probability(picked, temperature).mean(axis=1)
    a = (1.0 - ci) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def verdict(lo: float, hi: float, threshold: float) -> str:
    """``shown`` if the interval lies above ``threshold``, ``ignored`` if at or below it, else ``unclear``.

    A drop of exactly the threshold (a word that changes nothing) counts as ignored.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "unclear"
    if lo > threshold:
        return "shown"
    if hi <= threshold:
        return "ignored"
    return "unclear"


@dataclass
class ProbeWord:
    """One word of a prompt with its probe result.

    Attributes:
        word: lower-cased text; index: position among the prompt's words; start / end: span.
        is_stop: a stop word (not probed: ``score`` is NaN).
        score: mean score drop over valid samples and alternatives (``choice``: mean probability
            of the word over valid samples); NaN when not probed.
        lo / hi: bootstrap interval of ``score``.
        verdict: ``shown``, ``ignored`` or ``unclear`` (``None`` when not probed).
        threshold: the verdict's threshold (``choice``: chance, ``1 / (K + 1)``, unless one is given).
        per_sample: ``(D,)`` drop per sample (mean over alternatives; ``choice``: the probability;
            NaN for invalid samples).
        alternatives: what replaced the word (``[""]`` for occlusion).
    """

    word: str
    index: int
    start: int
    end: int
    is_stop: bool
    score: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    verdict: str | None = None
    threshold: float = math.nan
    per_sample: np.ndarray = field(default_factory=lambda: np.zeros(0))
    alternatives: list[str] = field(default_factory=list)

    @property
    def attr(self) -> float:
        """Alias of ``score`` (the interface of :class:`~debias3d.bias_audit.words.Word`)."""
        return self.score

    @property
    def probed(self) -> bool:
        return math.isfinite(self.score)


@dataclass
class ProbeResult:
    """Probe results of a batch of prompts (captum ``LLMAttributionResult``-like).

    Attributes:
        prompts: ``B`` texts; method: ``occlusion`` / ``contrastive`` / ``choice``.
        word_rows: per prompt, its :class:`ProbeWord` list.
        scores: ``(B, D)`` the original prompt's per-sample score on the probed dimension.
        issues: one-line messages (words without substitutes, failed proposers, ...).
        rows: evaluator rows scored (prompt variants × samples), for cost accounting.
    """

    prompts: list[str]
    method: str
    word_rows: list[list[ProbeWord]]
    scores: np.ndarray
    issues: list[str] = field(default_factory=list)
    rows: int = 0

    def __len__(self) -> int:
        return len(self.prompts)

    def words(self, index: int) -> list[ProbeWord]:
        return self.word_rows[index]

    def plot_word_attr(
        self, index: int = 0, vmax: float | None = None, show: bool = False, ax: Any = None
    ) -> Any:
        """Word heatmap of prompt ``index`` (score per word; stop words blank)."""
        from debias3d.bias_audit.report import heatmap_figure

        ws = self.words(index)
        fig = heatmap_figure(
            [w.word for w in ws],
            [w.score for w in ws],
            title=f"{self.method}: {self.prompts[index]}",
            ax=ax,
            vmax=vmax,
        )
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return fig

    def to_html(self, indices: Sequence[int] | None = None) -> str:
        """Each prompt's words shaded by score, with the verdict and interval on hover (escaped)."""
        from debias3d.bias_audit.report import attr_colour

        vals = [w.score for ws in self.word_rows for w in ws if w.probed]
        vmax = max((abs(v) for v in vals), default=1.0) or 1.0
        rows = []
        for i in range(len(self)) if indices is None else indices:
            spans = []
            for w in self.words(i):
                tip = "stop word" if not w.probed else f"{w.score:.3g} [{w.lo:.3g}, {w.hi:.3g}] {w.verdict}"
                bg = attr_colour(w.score, vmax) if w.probed else "#fff"
                spans.append(
                    f'<span title="{html.escape(tip)}" style="background:{bg};padding:1px 3px;margin:1px;'
                    f'border-radius:3px">{html.escape(w.word)}</span>'
                )
            rows.append(f"<p><b>{html.escape(self.prompts[i])}</b><br>{''.join(spans)}</p>")
        return "\n".join(rows)


class WordProbe:
    """Captum-shaped counterfactual probe: built from a forward function, ``.attribute(...)``.

    Args:
        forward_func: ``f(texts, rows, *additional_forward_args) -> (N, D)`` or ``(N, D, K)``
            per-sample scores of ``N`` prompt variants; ``rows`` ``(N,)`` says which input prompt
            each variant belongs to (so the function scores it on that prompt's samples).
        method: ``occlusion``, ``contrastive`` or ``choice``.
        proposer: a :class:`~debias3d.bias_audit.substitutes.SubstituteProposer` (``contrastive``,
            ``choice``).
    """

    def __init__(
        self, forward_func: Callable[..., Tensor], method: str = "occlusion", proposer: Any = None
    ) -> None:
        if method not in PROBES:
            raise ValueError(f"unknown probe {method!r}; expected one of {', '.join(PROBES)}")
        if method in SWAP_PROBES and proposer is None:
            raise ValueError(f"the {method} probe needs a substitute proposer")
        self.forward_func = forward_func
        self.method = method
        self.proposer = proposer

    def _variants(
        self, prompts: Sequence[str], k: int, stops: frozenset[str], baselines: str
    ) -> tuple[list[list[ProbeWord]], list[tuple[int, int, str]], list[str]]:
        """Every prompt's words, and the variant rows ``(prompt, word index or -1, text)``."""
        from debias3d.bias_audit.words import split_words

        word_rows: list[list[ProbeWord]] = []
        rows: list[tuple[int, int, str]] = []
        issues: list[str] = []
        asks: list[tuple[int, int, tuple[str, str, int, int]]] = []
        for b, text in enumerate(prompts):
            ws = [
                ProbeWord(w.lower(), j, s, e, w.lower() in stops)
                for j, (w, s, e) in enumerate(split_words(text))
            ]
            word_rows.append(ws)
            rows.append((b, -1, text))
            for w in ws:
                if w.is_stop:
                    continue
                if self.method == "occlusion":
                    w.alternatives = [baselines]
                    alt = (
                        text[: w.start] + baselines + text[w.end :]
                        if baselines
                        else _drop_word(text, w.start, w.end)
                    )
                    rows.append((b, w.index, alt))
                else:
                    asks.append((b, w.index, (text, text[w.start : w.end], w.start, w.end)))
        if asks:
            answers = self.proposer.substitutes_many([a for _, _, a in asks], k)
            for (b, j, (text, _, s, e)), (alts, msg) in zip(asks, answers, strict=True):
                if msg:
                    issues.append(msg)
                word_rows[b][j].alternatives = alts
                for a in alts:
                    rows.append((b, j, text[:s] + a + text[e:]))
        for b, ws in enumerate(word_rows):
            if not any(w.alternatives for w in ws):
                issues.append(f"probe {self.method}: prompt {prompts[b]!r}: no word could be probed")
        return word_rows, rows, issues

    def attribute(
        self,
        inputs: Sequence[str],
        baselines: str = "",
        target: int | None = None,
        additional_forward_args: Any = None,
        k: int = 4,
        internal_batch_size: int | None = None,
        stop_words: Iterable[str] | None = None,
        n_boot: int = 200,
        ci: float = 0.9,
        threshold: float | None = None,
        seed: int = 0,
        temperature: float = 0.05,
    ) -> ProbeResult:
        """Probe every content word of every prompt.

        Args:
            inputs: ``B`` prompts.
            baselines: occlusion's replacement text (``""`` = delete the word).
            target: score column of a ``(N, D, K)`` forward output.
            additional_forward_args: passed to the forward function after ``(texts, rows)``.
            k: alternatives per word (``contrastive``, ``choice``).
            internal_batch_size: variant rows per forward (``None``: all at once).
            stop_words: words not probed (default: English function words).
            n_boot / ci: bootstrap resamples and interval level.
            threshold: verdict threshold on the score (``None``: 0 for the drops, chance
                ``1 / (K + 1)`` of each word for ``choice``).
            seed: bootstrap seed.
            temperature: softmax temperature ``T`` of ``choice``, in the forward's score units.

        Returns:
            :class:`ProbeResult`.
        """
        from debias3d.bias_audit.words import DEFAULT_STOP_WORDS

        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        args = () if additional_forward_args is None else additional_forward_args
        args = args if isinstance(args, tuple) else (args,)
        stops = frozenset(w.lower() for w in (DEFAULT_STOP_WORDS if stop_words is None else stop_words))
        prompts = list(inputs)
        word_rows, rows, issues = self._variants(prompts, k, stops, baselines)
        n = len(rows)
        chunk = n if not internal_batch_size else max(1, int(internal_batch_size))
        outs = []
        with torch.no_grad():
            for s in range(0, n, chunk):
                part = rows[s : s + chunk]
                idx = torch.tensor([r[0] for r in part], dtype=torch.long)
                out = self.forward_func([r[2] for r in part], idx, *args)
                if out.dim() == 3:
                    if target is None:
                        raise ValueError("forward returned (N, D, K) scores; pass target=<column>")
                    out = out[..., target]
                outs.append(out.double().cpu())
        q = torch.cat(outs).numpy() if outs else np.zeros((0, 1))  # (N, D)
        base = {r[0]: q[i] for i, r in enumerate(rows) if r[1] == -1}
        per: dict[tuple[int, int], list[np.ndarray]] = {}
        for i, (b, j, _) in enumerate(rows):
            if j >= 0:
                per.setdefault((b, j), []).append(base[b] - q[i])
        rng = np.random.default_rng(seed)
        d = q.shape[1] if q.ndim == 2 else 1
        choice = self.method == "choice"
        for (b, j), drops in per.items():
            m = np.stack(drops, axis=1)  # (D, K)
            w = word_rows[b][j]
            w.per_sample = choice_probability(m, temperature) if choice else m.mean(axis=1)
            finite = np.isfinite(m).all(axis=1)
            w.score = float(w.per_sample[finite].mean()) if finite.any() else math.nan
            w.lo, w.hi = bootstrap_interval(m, n_boot, ci, rng, temperature if choice else None)
            w.threshold = (
                (1.0 / (m.shape[1] + 1) if choice else 0.0) if threshold is None else float(threshold)
            )
            w.verdict = verdict(w.lo, w.hi, w.threshold) if w.probed else None
        for ws in word_rows:
            for w in ws:
                if not len(w.per_sample):
                    w.per_sample = np.full(d, np.nan)
        scores = np.stack([base[b] for b in range(len(prompts))]) if prompts else np.zeros((0, d))
        return ProbeResult(prompts, self.method, word_rows, scores, issues, rows=n * d)


class EvaluatorTextScore:
    """Forward function ``(texts, rows, features, valid) -> (N, D, K)`` over a HyperScore-style evaluator.

    Variant ``i`` is scored against the ``D`` cached samples of prompt ``rows[i]``; samples with
    ``valid=False`` give NaN (left out of every mean).

    Args:
        evaluator: ``tokenize``, ``embed_tokens`` and ``score_from_text`` / ``score_from_embeddings``.

    Call:
        ``texts`` (N strings), ``rows`` ``(N,)``, ``features`` ``(B, D, N_v, C)`` cached view
        features (or ``(B, D, V, 3, H, W)`` views), ``valid`` ``(B, D)`` → ``(N, D, K)``.
    """

    def __init__(self, evaluator: Any) -> None:
        from debias3d.bias_audit.attribute import EvaluatorScore

        self.evaluator = evaluator
        self._score = EvaluatorScore(evaluator, dimension=tuple(evaluator.dimensions)[0])

    def __call__(self, texts: Sequence[str], rows: Tensor, features: Tensor, valid: Tensor) -> Tensor:
        ev = self.evaluator
        enc = ev.tokenize(list(texts))
        dev = features.device
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        emb = ev.embed_tokens(ids)
        r = rows.to(dev)
        s = self._score.per_sample(emb, features[r], valid[r], mask)
        return torch.where(valid[r][..., None], s, torch.full_like(s, float("nan")))


def probe_prompts(
    evaluator: Any,
    prompts: Sequence[str],
    features: Tensor,
    valid: Tensor,
    method: str = "occlusion",
    dimension: str = "overall",
    proposer: Any = None,
    k: int = 4,
    stop_words: Iterable[str] | None = None,
    internal_batch_size: int | None = 256,
    n_boot: int = 200,
    ci: float = 0.9,
    threshold: float | None = None,
    temperature: float = 0.05,
) -> ProbeResult:
    """Probe every content word of ``B`` prompts on their cached samples, in batched passes.

    Args:
        evaluator: HyperScore-style evaluator.
        prompts: ``B`` texts.
        features: ``(B, D, N, C)`` cached view features (or ``(B, D, V, 3, H, W)`` views, encoded
            here once).
        valid: ``(B, D)`` bool.
        method: ``occlusion``, ``contrastive`` or ``choice``.
        dimension: score column the probe reads.
        proposer / k: substitutes for ``contrastive`` and ``choice``.
        stop_words / internal_batch_size / n_boot / ci / threshold / temperature: see
            :meth:`WordProbe.attribute`.
    """
    from debias3d.bias_audit.attribute import encode_sample_views

    dims = tuple(evaluator.dimensions)
    if dimension not in dims:
        raise ValueError(f"unknown dimension {dimension!r}; the evaluator has {', '.join(dims)}")
    feats = encode_sample_views(evaluator, features)
    probe = WordProbe(EvaluatorTextScore(evaluator), method, proposer)
    return probe.attribute(
        prompts,
        target=dims.index(dimension),
        additional_forward_args=(feats, valid.to(feats.device)),
        k=k,
        internal_batch_size=internal_batch_size,
        stop_words=stop_words,
        n_boot=n_boot,
        ci=ci,
        threshold=threshold,
        temperature=temperature,
    )
