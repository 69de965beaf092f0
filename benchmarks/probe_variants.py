"""Word-probe score variants against ShapeWorld ground truth, on cached samples (seconds per variant).

    python benchmarks/attribution_truth.py --set tune --prompts 48 --cache CACHE/tune --build-only
    python benchmarks/probe_variants.py --cache CACHE/tune --json tune_variants.json

Reads the view features, valid masks and measurer truth that ``attribution_truth.py --cache``
stored, scores every content word of every prompt once with *all* of its ShapeWorld class mates
(and without the word), on every evaluator dimension, and keeps these raw scores in the cache
(``raw_<evaluator>.npz``). Each variant is then a few lines of numpy on those scores:

* ``drop`` — ``s(t) - mean_k s(t[w→a_k])`` (the contrastive probe as shipped; K = 4 or all);
* ``choice`` — forced choice: ``softmax(s / T)`` of the original word among {word, alternatives},
  per sample (CLIP-style zero-shot classification of the shape over the word's class);
* ``choice_lift`` — the same probability divided by its chance ``1 / (K + 1)``;
* ``win`` — share of alternatives that score below the original (ties ½);
* ``margin`` — ``s(t) - max_k s(t[w→a_k])``: does the original beat every alternative?
* ``zdrop`` — the drop standardised per word class over the set (no labels used);
* ``occlusion`` and sums of ranks of ``occlusion`` and ``drop``.

Every variant gets the three ground-truth figures of :mod:`debias3d.bias_audit.truth` (AUC with a
bootstrap interval, Spearman with per-word fidelity, w_l hit rate beside chance). Per-use scores of
the variants are written to ``uses_<evaluator>.parquet`` beside the raw scores, so the analysis can
be redone.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("benchmarks.probe_variants")

DIMS = ("alignment", "geometry", "texture", "overall")


def raw_scores(evaluator: Any, texts: list[str], feats: torch.Tensor, valid: torch.Tensor,
               stops: frozenset[str], batch: int = 512) -> dict[str, Any]:  # fmt: skip
    """Every content word's scores: ``base`` ``(B, D, 4)``; per word ``occ`` ``(D, 4)`` and ``alts``
    ``(K_all, D, 4)`` (class mates in the proposer's fixed order, so the first K are the probe's)."""
    from debias3d.bias_audit.probes import EvaluatorTextScore, _drop_word
    from debias3d.bias_audit.substitutes import ShapeWorldProposer
    from debias3d.bias_audit.words import split_words

    proposer = ShapeWorldProposer(stop_words=stops)
    rows: list[tuple[int, str]] = []
    words: list[dict[str, Any]] = []
    base_idx: dict[int, int] = {}
    for b, text in enumerate(texts):
        base_idx[b] = len(rows)
        rows.append((b, text))
        for j, (w, s, e) in enumerate(split_words(text)):
            lw = w.lower()
            if lw in stops:
                continue
            alts, _ = proposer.substitutes(text, text[s:e], s, e, k=1000)
            occ_row = len(rows)
            rows.append((b, _drop_word(text, s, e)))
            alt_rows = []
            for a in alts:
                alt_rows.append(len(rows))
                rows.append((b, text[:s] + a + text[e:]))
            words.append(
                {"prompt": b, "index": j, "word": lw, "alts": alts, "occ": occ_row, "alt_rows": alt_rows}
            )
    fwd = EvaluatorTextScore(evaluator)
    outs = []
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            part = rows[s : s + batch]
            idx = torch.tensor([r[0] for r in part], dtype=torch.long)
            outs.append(fwd([r[1] for r in part], idx, feats, valid).double())
    q = torch.cat(outs).numpy()  # (N, D, 4)
    base = np.stack([q[base_idx[b]] for b in range(len(texts))])
    for w in words:
        w["occ"] = q[w["occ"]]
        w["alts"] = (w["alts"], q[w["alt_rows"]] if w["alt_rows"] else np.zeros((0, *q.shape[1:])))
        del w["alt_rows"]
    return {"base": base, "words": words}


def save_raw(path: Path, raw: dict[str, Any]) -> None:
    arrays = {"base": raw["base"]}
    meta = []
    for n, w in enumerate(raw["words"]):
        arrays[f"occ_{n}"] = w["occ"]
        arrays[f"alts_{n}"] = w["alts"][1]
        meta.append({"prompt": w["prompt"], "index": w["index"], "word": w["word"], "alts": w["alts"][0]})
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def load_raw(path: Path) -> dict[str, Any]:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    words = []
    for n, m in enumerate(meta):
        words.append({**m, "occ": z[f"occ_{n}"], "alts": (m["alts"], z[f"alts_{n}"])})
    return {"base": z["base"], "words": words}


def _softmax_p(s0: np.ndarray, alts: np.ndarray, t: float) -> np.ndarray:
    """``(D,)`` probability of the original among {original, alternatives}; alts ``(K, D)``."""
    z = np.concatenate([s0[None], alts], axis=0) / t
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e[0] / e.sum(axis=0)


def variant_scores(raw: dict[str, Any], name: str) -> list[dict[str, np.ndarray]]:
    """Per prompt: ``{word: (D,) per-sample score}`` of variant ``name``.

    Names: ``<kind>:<dim>:<K>[:<T>]`` with kind in drop, choice, choice_lift, win, margin,
    occlusion; K an integer or ``all``; T the softmax temperature (choice kinds).
    """
    parts = name.split(":")
    kind, dim = parts[0], DIMS.index(parts[1])
    k = None if len(parts) < 3 or parts[2] == "all" else int(parts[2])
    t = float(parts[3]) if len(parts) > 3 else 1.0
    n_prompts = raw["base"].shape[0]
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n_prompts)]
    for w in raw["words"]:
        b = w["prompt"]
        if w["word"] in out[b]:
            continue
        s0 = raw["base"][b, :, dim]
        alts = w["alts"][1][:k, :, dim] if k is not None else w["alts"][1][:, :, dim]
        if kind == "occlusion":
            v = s0 - w["occ"][:, dim]
        elif not len(alts):
            continue
        elif kind == "drop":
            v = s0 - alts.mean(axis=0)
        elif kind == "choice":
            v = _softmax_p(s0, alts, t)
        elif kind == "choice_lift":
            v = _softmax_p(s0, alts, t) * (len(alts) + 1)
        elif kind == "choice_logit":
            p = np.clip(_softmax_p(s0, alts, t), 1e-12, 1 - 1e-12)
            v = np.log(p / (1 - p)) - math.log(1 / len(alts))
        elif kind == "win":
            v = ((s0[None] > alts) + 0.5 * (s0[None] == alts)).mean(axis=0)
        elif kind == "margin":
            v = s0 - alts.max(axis=0)
        elif kind == "ptop":
            # probability the original is the argmax under a logistic noise on differences
            v = 1.0 / (1.0 + np.exp(-(s0[None] - alts) / t)).prod(axis=0) ** (1.0 / len(alts))
        else:
            raise ValueError(f"unknown variant kind {kind!r}")
        out[b][w["word"]] = v
    return out


def truth_frame(texts: list[str], truth: list[list[dict[str, bool]]], valid: np.ndarray,
                scores: dict[str, list[dict[str, np.ndarray]]]) -> Any:  # fmt: skip
    """One row per (prompt, attribute word, sample) with each variant's per-sample score."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attribution_truth import truth_rows

    per_sample = {m: [{w: (math.nan, v) for w, v in d.items()} for d in per] for m, per in scores.items()}
    return truth_rows(texts, truth, valid, per_sample)


def add_derived(rows: Any, names: list[str], word_class: dict[str, str]) -> list[str]:
    """Label-free set-level transforms: per-class z-scores and rank sums of two variants."""
    extra = []
    cls = rows["word"].map(lambda w: word_class.get(w, "?"))
    for m in names:
        if m.startswith("drop:") or m.startswith("occlusion:"):
            col = rows[f"score_{m}"]
            g = col.groupby(cls)
            rows[f"score_z{m}"] = (col - g.transform("mean")) / g.transform("std").replace(0, 1)
            extra.append(f"z{m}")
    return extra


def evaluate(rows: Any, methods: list[str], n_boot: int = 300) -> dict[str, Any]:
    from debias3d.bias_audit.truth import method_truth

    ok = rows[[f"score_{m}" for m in methods]].notna().all(axis=1)
    rows = rows[ok]
    fid = rows.groupby("word")["shown"].mean().to_dict()
    tables = {
        m: rows.groupby(["word", "prompt_id"])[f"score_{m}"].mean().groupby("word").mean()
        .rename("mean_attr").reset_index()
        for m in methods
    }  # fmt: skip
    return method_truth(rows, methods, tables, fid, n_boot=n_boot, ci=0.9)


FEATURES = [
    *[f"drop:{d}:4" for d in DIMS],
    *[f"drop:{d}:all" for d in DIMS],
    *[f"occlusion:{d}" for d in DIMS],
    "margin:alignment:all",
    "choice:alignment:4:0.05",
]
CLASSES = ("colour", "size", "modifier", "action", "count")


def _design(rows: Any, word_class: dict[str, str], mean: Any = None, std: Any = None) -> tuple[Any, Any, Any]:
    """Standardised probe features, the word's class (one-hot) and class × main drops."""
    x = rows[[f"score_{f}" for f in FEATURES]].to_numpy(float)
    mean = np.nanmean(x, axis=0) if mean is None else mean
    std = np.nanstd(x, axis=0) + 1e-9 if std is None else std
    x = np.nan_to_num((x - mean) / std)
    cls = rows["word"].map(lambda w: word_class.get(w, "?")).to_numpy()
    onehot = np.stack([cls == c for c in CLASSES], axis=1).astype(float)
    main = x[:, [FEATURES.index("drop:alignment:all"), FEATURES.index("drop:overall:all"),
                 FEATURES.index("occlusion:overall")]]  # fmt: skip
    inter = (onehot[:, :, None] * main[:, None, :]).reshape(len(x), -1)
    return np.concatenate([np.ones((len(x), 1)), x, onehot, inter], axis=1), mean, std


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """Ridge logistic regression by Newton's method (IRLS); the intercept is not penalised."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2)
    reg[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        g = x.T @ (p - y) + reg * w
        h = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def learned_reference(train: Any, test: Any, word_class: dict[str, str]) -> dict[str, Any]:
    """A *supervised* reference, not a product score: a logistic model of "shown" on every probe
    feature, the word's class and class × drop, fit on ``train``'s measurer labels, scored on
    ``test``. Also the class base rate alone (``train``'s share shown per class)."""
    xt, mean, std = _design(train, word_class)
    w = fit_logistic(xt, train["shown"].to_numpy(float))
    xe, _, _ = _design(test, word_class, mean, std)
    test = test.copy()
    test["score_learned"] = xe @ w
    rate = train.groupby(train["word"].map(lambda v: word_class.get(v, "?")))["shown"].mean()
    test["score_class_rate"] = test["word"].map(lambda v: rate.get(word_class.get(v, "?"), np.nan))
    return evaluate(test, ["learned", "class_rate"])


def per_class(rows: Any, methods: list[str], word_class: dict[str, str]) -> dict[str, Any]:
    """AUC within each word class (colour, size, modifier, action, count) and pooled over
    within-class pairs only: what is left once the classes' base rates are taken out."""
    from debias3d.bias_audit.truth import auc

    cls = rows["word"].map(lambda w: word_class.get(w, "?"))
    out: dict[str, Any] = {"classes": {}, "within_class_auc": {}}
    for c, g in rows.groupby(cls):
        y = g["shown"].to_numpy(bool)
        out["classes"][c] = {"n_uses": len(g), "shown_share": float(y.mean()),
                             "auc": {m: auc(g[f"score_{m}"], y) for m in methods}}  # fmt: skip
    for m in methods:
        num = den = 0.0
        for _, g in rows.groupby(cls):
            y = g["shown"].to_numpy(bool)
            pairs = float(y.sum() * (~y).sum())
            a = auc(g[f"score_{m}"], y)
            if pairs and math.isfinite(a):
                num, den = num + a * pairs, den + pairs
        out["within_class_auc"][m] = num / den if den else math.nan
    return out


def default_variants() -> list[str]:
    v = ["occlusion:overall", "occlusion:alignment"]
    for dim in ("alignment", "overall"):
        for k in ("4", "all"):
            v += [f"drop:{dim}:{k}", f"win:{dim}:{k}", f"margin:{dim}:{k}"]
            for t in ("0.01", "0.02", "0.05", "0.1", "0.2"):
                v += [f"choice:{dim}:{k}:{t}", f"choice_lift:{dim}:{k}:{t}"]
    return v


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="a folder written by attribution_truth.py --cache")
    ap.add_argument("--evaluators", default="default,scene")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (default: a grid)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--learned-from", default=None,
                    help="another cache (the tuning set) to fit the supervised reference on")  # fmt: skip
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    import pandas as pd
    from safetensors.torch import load_file

    from debias3d.bias_audit.words import DEFAULT_STOP_WORDS
    from debias3d.data.shapeworld import vocab as v
    from debias3d.data.shapeworld.vocab import STOP_WORDS

    cache = Path(args.cache)
    meta = json.loads((cache / "meta.json").read_text())
    stops = frozenset(DEFAULT_STOP_WORDS | STOP_WORDS)
    names = args.variants.split(",") if args.variants else default_variants()
    word_class = {w: c for c, ws in (("colour", v.COLOURS), ("size", v.SIZES), ("modifier", v.MODIFIERS),
                                      ("action", v.ACTIONS), ("count", v.COUNTS)) for w in ws}  # fmt: skip
    result: dict[str, Any] = {
        "command": "python benchmarks/probe_variants.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cache": str(cache),
        "prompts": len(meta["texts"]),
        "samples": meta["samples"],
        "evaluators": {},
    }
    for ev_name in args.evaluators.split(","):
        raw_path = cache / f"raw_{ev_name}.npz"
        f = load_file(str(cache / f"features_{ev_name}.safetensors"))
        if raw_path.is_file():
            raw = load_raw(raw_path)
        else:
            from debias3d.models.evaluator.model import ShapeWorldHyperScore

            ev = ShapeWorldHyperScore.from_pretrained(ev_name).eval()
            raw = raw_scores(ev, meta["texts"], f["features"], f["valid"], stops)
            save_raw(raw_path, raw)
        scores = {n: variant_scores(raw, n) for n in dict.fromkeys(names + FEATURES)}
        rows = truth_frame(meta["texts"], meta["truth"], f["valid"].numpy(), scores)
        methods = names + add_derived(rows, names, word_class)
        # rank sums of occlusion and the drop (label-free combination)
        for a, b in (("occlusion:overall", "drop:alignment:4"), ("occlusion:overall", "drop:alignment:all")):
            if f"score_{a}" in rows and f"score_{b}" in rows:
                n = f"ranksum[{a}+{b}]"
                rows[f"score_{n}"] = rows[f"score_{a}"].rank(pct=True) + rows[f"score_{b}"].rank(pct=True)
                methods.append(n)
        rows.to_parquet(cache / f"uses_{ev_name}.parquet")
        gt = evaluate(rows, methods)
        result["evaluators"][ev_name] = {"n_uses": len(rows), "shown_share": float(rows["shown"].mean()),
                                         "variants": gt}  # fmt: skip
        shipped = [
            m for m in ("drop:alignment:4", "choice:alignment:4:0.05", "occlusion:overall") if m in names
        ]
        result["evaluators"][ev_name]["per_class"] = pc = per_class(rows, shipped, word_class)
        for c, r in pc["classes"].items():
            logger.info("  class %-9s %3d uses, %3.0f%% shown, AUC %s", c, r["n_uses"], 100 * r["shown_share"],
                        "  ".join(f"{m} {a:.2f}" for m, a in r["auc"].items()))  # fmt: skip
        logger.info(
            "  within-class AUC %s", "  ".join(f"{m} {a:.3f}" for m, a in pc["within_class_auc"].items())
        )
        if args.learned_from:
            train = pd.read_parquet(Path(args.learned_from) / f"uses_{ev_name}.parquet")
            ref = learned_reference(train, rows, word_class)
            result["evaluators"][ev_name]["supervised_reference"] = ref
            for m, r in ref.items():
                logger.info("  reference %-12s AUC %.3f [%.3f, %.3f]  rho %+.2f  w_l hit %.0f%%", m, r["auc"],
                            r["auc_ci"][0], r["auc_ci"][1], r["spearman"], 100 * r["w_l_hit_rate"])  # fmt: skip
        logger.info("evaluator %s: %d uses, %.0f%% shown", ev_name, len(rows), 100 * rows["shown"].mean())
        for m, r in sorted(gt.items(), key=lambda x: -(x[1]["auc"] or 0)):
            logger.info("  %-42s AUC %.3f [%.3f, %.3f]  rho %+.2f  w_l hit %.0f%% (chance %.0f%%, %d)",
                        m, r["auc"], r["auc_ci"][0], r["auc_ci"][1], r["spearman"], 100 * r["w_l_hit_rate"],
                        100 * r["w_l_chance"], r["n_prompts"])  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
