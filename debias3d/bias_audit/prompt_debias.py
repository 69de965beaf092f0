"""View-prompt contradictions with a masked language model (D-SDS prompt debiasing).

Text-to-3D pipelines that add view prompts ("front view", "back view", ...) can be pulled off the
requested view by a word that contradicts it ("smiling" seen from the back). D-SDS (Hong et al.,
Sec. 4.2 and appendix C.3) finds such words with pointwise mutual information::

    PMI(v, u) = P(v | u) / P(v) = P(v | u) / Σ_{u' ∈ {u, ¬u}} P(v | u') P(u')          (Eq. 14)

* ``P(v | u)`` comes from a masked LM: in ``"This image is depicting a [MASK] view of <prompt>"``
  the probability of each view word at ``[MASK]``, normalised over the views. ``P(v | ¬u)`` is the
  same with the word ``u`` removed from the prompt.
* ``P(u)`` is a user-set faithfulness: 1 for protected words (then PMI = 1: never flagged), ½
  otherwise, so ``P(v) = ½ P(v | u) + ½ P(v | ¬u)``.
* A word contradicts view ``v`` when its PMI for ``v`` is below the threshold (0.95).

The real backend is ``bert-base-uncased`` (``BertForMaskedLM``) from a local folder; the tests use
a tiny random ``BertConfig`` model and a tiny WordPiece vocabulary. With real weights::

    auditor = ViewContradictionAuditor.from_pretrained("/models/bert-base-uncased")
    auditor.audit(["a smiling dog"])[0].flagged   # {'back': ['smiling']}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from debias3d.bias_audit.words import split_words

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_VIEWS", "DEFAULT_TEMPLATE", "ViewContradictions", "ViewContradictionAuditor"]

#: D-SDS's view prompts (appendix C.3), as the single word that fills ``[MASK]``.
DEFAULT_VIEWS: tuple[str, ...] = ("front", "back", "side", "top")
#: The template from appendix C.3 ("This image is depicting a" + view prompt + user prompt).
DEFAULT_TEMPLATE = "This image is depicting a {mask} view of {prompt}"


@dataclass
class ViewContradictions:
    """Result for one prompt.

    Attributes:
        prompt: the prompt.
        views: view words, in column order.
        p_full: ``P(v | prompt)`` per view (normalised over views).
        words: the prompt's words, in order.
        pmi: per word, PMI for each view (``len(views)`` floats).
        flagged: view → words whose PMI for that view is below the threshold.
    """

    prompt: str
    views: tuple[str, ...]
    p_full: list[float]
    words: list[str]
    pmi: list[list[float]]
    flagged: dict[str, list[str]] = field(default_factory=dict)

    def debiased_prompts(self) -> dict[str, str]:
        """Per view, the prompt with its contradicting words removed (D-SDS's debiased prompts)."""
        out = {}
        for v in self.views:
            drop = set(self.flagged.get(v, []))
            out[v] = " ".join(w for w in self.words if w not in drop)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "views": list(self.views),
            "p_full": [round(p, 6) for p in self.p_full],
            "words": self.words,
            "pmi": [[round(x, 6) for x in row] for row in self.pmi],
            "flagged": self.flagged,
        }


class ViewContradictionAuditor:
    """PMI between view prompts and prompt words with a masked LM (D-SDS Eq. 14, appendix C.3).

    Args:
        model: a ``BertForMaskedLM``-like model (``model(input_ids=, attention_mask=).logits``).
        tokenizer: its tokenizer (must have a mask token; each view word must be one token).
        views: view words (default front / back / side / top).
        template: text with ``{mask}`` and ``{prompt}``.
        threshold: flag words with PMI below this (0.95).
        faithfulness: ``P(u)`` of ordinary words (½).
        protected: words with ``P(u) = 1`` (never flagged).
        batch_size: sentences per MLM forward.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        views: Sequence[str] = DEFAULT_VIEWS,
        template: str = DEFAULT_TEMPLATE,
        threshold: float = 0.95,
        faithfulness: float = 0.5,
        protected: Iterable[str] = (),
        batch_size: int = 64,
    ) -> None:
        if not 0.0 < faithfulness <= 1.0:
            raise ValueError(f"faithfulness P(u) must be in (0, 1], got {faithfulness}")
        if "{mask}" not in template or "{prompt}" not in template:
            raise ValueError("template must contain {mask} and {prompt}")
        if tokenizer.mask_token is None:
            raise ValueError("the tokenizer has no mask token; a masked LM is needed")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.views = tuple(views)
        self.template = template
        self.threshold = float(threshold)
        self.faithfulness = float(faithfulness)
        self.protected = frozenset(w.lower() for w in protected)
        self.batch_size = int(batch_size)
        ids = []
        for v in self.views:
            pieces = tokenizer.encode(v, add_special_tokens=False)
            if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"view word {v!r} is {len(pieces)} tokens (or unknown) for this tokenizer; it must be one known token"
                )
            ids.append(pieces[0])
        self.view_ids = torch.tensor(ids)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "cpu", **kwargs: Any
    ) -> ViewContradictionAuditor:
        """Load ``BertForMaskedLM`` + tokenizer from a local folder (e.g. ``bert-base-uncased``)."""
        from pathlib import Path

        from transformers import AutoTokenizer, BertForMaskedLM

        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"masked LM folder {str(path)!r} not found; download bert-base-uncased on a machine with "
                "network access and set view_contradictions.mlm_path to its local folder"
            )
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = BertForMaskedLM.from_pretrained(str(path), local_files_only=True).to(device)
        return cls(model, tok, **kwargs)

    @torch.no_grad()
    def view_probs(self, prompts: Sequence[str]) -> torch.Tensor:
        """``P(v | prompt)`` ``(N, V)``: MLM probabilities of the view words at ``[MASK]``, normalised."""
        texts = [self.template.format(mask=self.tokenizer.mask_token, prompt=p) for p in prompts]
        out = []
        device = next(self.model.parameters()).device
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[s : s + self.batch_size], padding=True, truncation=True, return_tensors="pt"
            )
            enc = {
                k: v.to(device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            logits = self.model(**enc).logits  # (n, L, vocab)
            pos = (enc["input_ids"] == self.tokenizer.mask_token_id).int().argmax(dim=1)
            at_mask = logits[torch.arange(logits.shape[0]), pos].float().softmax(-1)
            p = at_mask[:, self.view_ids.to(device)]
            out.append((p / p.sum(-1, keepdim=True).clamp_min(1e-30)).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.views))

    def audit(self, prompts: Sequence[str]) -> list[ViewContradictions]:
        """PMI of every (word, view) pair of every prompt; one batched MLM pass over all variants."""
        variants: list[str] = []
        layout: list[tuple[str, list[str], int]] = []
        for prompt in prompts:
            words = [w for w, _, _ in split_words(prompt)]
            start = len(variants)
            variants.append(" ".join(words))
            variants += [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
            layout.append((prompt, words, start))
        probs = self.view_probs(variants).double()
        results = []
        for prompt, words, start in layout:
            full = probs[start]
            pmi_rows, flagged = [], {v: [] for v in self.views}
            for i, word in enumerate(words):
                part = probs[start + 1 + i]
                protected = word.lower() in self.protected
                p_u = 1.0 if protected else self.faithfulness
                pmi = full / (p_u * full + (1.0 - p_u) * part).clamp_min(1e-30)
                pmi_rows.append([float(x) for x in pmi])
                if protected:  # P(u) = 1 gives PMI = 1; never omit, whatever the threshold
                    continue
                for j, v in enumerate(self.views):
                    if float(pmi[j]) < self.threshold:
                        flagged[v].append(word)
            results.append(
                ViewContradictions(
                    prompt,
                    self.views,
                    [float(x) for x in full],
                    words,
                    pmi_rows,
                    {v: ws for v, ws in flagged.items() if ws},
                )
            )
        return results
