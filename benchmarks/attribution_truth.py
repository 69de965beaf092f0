"""Which word score finds the words the generator ignores? Every method against ShapeWorld ground truth.

    python benchmarks/attribution_truth.py --prompts 60 --samples 4 \\
        --json benchmarks/results/attribution_truth.json

The shipped mini-TRELLIS generator makes ``--samples`` meshes for each of the first ``--prompts``
prompts of ShapeWorld's fixed evaluation set (the eval stage's set, seeds 0..D-1). The meshes are
generated once; each shipped evaluator (``default``: MATE-3D unit-sphere views, ``scene``:
scene-framed views) renders and encodes them once, and every method scores the words on those
same cached view features, in batches of ``--batch`` prompts (the audit's batch):

* ``grad`` (the paper's ``Σ|∂q/∂e|``), ``grad_x_input`` — the overall score;
* ``occlusion`` — overall-score drop without the word (and ``occlusion_alignment``);
* ``contrastive`` — alignment-score drop with K same-kind ShapeWorld words (and
  ``contrastive_overall``).

Against the measurer's per-sample verdicts (:mod:`debias3d.bias_audit.truth`): AUC with a 90 %
bootstrap interval over prompts, Spearman with per-word fidelity, and the per-prompt w_l hit rate
beside its chance rate. Cost: wall time of each method over all batches divided by one ``grad``
pass on the same cached features and batches (median of ``--repeats`` runs). The best probe's
verdict threshold (Youden's J on the uses) is reported too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("benchmarks.attribution_truth")

# (name, kind, dimension)
METHODS = [
    ("grad", "grad", "overall"),
    ("grad_x_input", "grad_x_input", "overall"),
    ("occlusion", "occlusion", "overall"),
    ("occlusion_alignment", "occlusion", "alignment"),
    ("contrastive", "contrastive", "alignment"),
    ("contrastive_overall", "contrastive", "overall"),
    ("choice", "choice", "alignment"),
]


def youden_threshold(scores: np.ndarray, shown: np.ndarray) -> float:
    """The score threshold that maximises TPR - FPR for "shown" (Youden's J)."""
    s = scores[np.isfinite(scores)]
    y = shown[np.isfinite(scores)]
    best, thr = -1.0, 0.0
    for t in np.unique(s):
        tpr = float((s[y] > t).mean()) if y.any() else 0.0
        fpr = float((s[~y] > t).mean()) if (~y).any() else 0.0
        if tpr - fpr > best:
            best, thr = tpr - fpr, float(t)
    return thr


def run_methods(evaluator: Any, texts: list[str], feats: torch.Tensor, valid: torch.Tensor, batch: int, k: int,
                proposer: Any, stops: frozenset[str]) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Per method, per prompt: ``{word: (prompt score, per-sample scores or None)}`` and timings."""
    from debias3d.bias_audit.attribute import attribute_prompts
    from debias3d.bias_audit.probes import probe_prompts

    out: dict[str, Any] = {"words": {}, "seconds": {}}
    for name, kind, dim in METHODS:
        t0 = time.perf_counter()
        per_prompt: list[dict[str, tuple[float, np.ndarray | None]]] = []
        for s in range(0, len(texts), batch):
            tb, fb, vb = texts[s : s + batch], feats[s : s + batch], valid[s : s + batch]
            if kind in ("grad", "grad_x_input"):
                res = attribute_prompts(evaluator, tb, fb, vb, method=kind, dimension=dim)
                for j in range(len(tb)):
                    ws = res.words(j, "sum", stops)
                    tot = sum(abs(w.attr) for w in ws) or 1.0
                    d: dict[str, tuple[float, np.ndarray | None]] = {}
                    for w in ws:
                        d.setdefault(w.word, (abs(w.attr) / tot, None))
                    per_prompt.append(d)
            else:
                res = probe_prompts(evaluator, tb, fb, vb, method=kind, dimension=dim, proposer=proposer, k=k,
                                    stop_words=stops, internal_batch_size=512)  # fmt: skip
                for j in range(len(tb)):
                    d = {}
                    for w in res.words(j):
                        if w.probed:
                            d.setdefault(w.word, (w.score, w.per_sample))
                    per_prompt.append(d)
        out["seconds"][name] = time.perf_counter() - t0
        out["words"][name] = per_prompt
    return out


def truth_rows(texts: list[str], truth: list[list[dict[str, bool]]], valid: torch.Tensor,
               words: dict[str, list[dict[str, Any]]]) -> Any:  # fmt: skip
    import pandas as pd

    rows = []
    for i in range(len(texts)):
        for d, tr in enumerate(truth[i]):
            if not bool(valid[i, d]):
                continue
            for word, shown in tr.items():
                if " " in word:
                    continue
                row = {"prompt_id": str(i), "word": word, "sample": d, "shown": bool(shown)}
                for m, per in words.items():
                    v = per[i].get(word)
                    if v is None:
                        row[f"score_{m}"] = np.nan
                    else:
                        row[f"score_{m}"] = float(v[1][d]) if v[1] is not None else float(v[0])
                rows.append(row)
    return pd.DataFrame(rows)


def load_prompts(which: str, n: int, tune_seed: int, tune_per_category: int) -> list[Any]:
    """The prompts of a set: ``eval`` = the first ``n`` of ShapeWorld's fixed evaluation set (the
    eval stage's); ``tune`` = a uniform grammar sample, ``tune_per_category`` per category with
    ``tune_seed`` (the demo's audit sample for seed 1), without any prompt of the evaluation set."""
    from debias3d.data.shapeworld.grammar import sample_prompts
    from debias3d.data.shapeworld.vocab import CATEGORIES
    from debias3d.eval.config import EvalConfig
    from debias3d.eval.pipeline import load_eval_prompts

    evaluation = load_eval_prompts(EvalConfig())
    if which == "eval":
        return evaluation[:n]
    held_out = {p.text for p in evaluation}
    rng = np.random.default_rng(tune_seed)
    out, seen = [], set()
    for cat in CATEGORIES:
        for p in sample_prompts(tune_per_category, category=cat, rng=rng):
            if p.text not in held_out and p.text not in seen:
                seen.add(p.text)
                out.append(p)
    return out[:n]


def cached_features(
    prompts: list[Any], samples: int, evaluators: dict[str, Any], cache: Path | None
) -> dict[str, Any]:
    """Generate the meshes once and keep what every score needs: per evaluator the view features
    ``(B, D, N, C)`` and valid mask ``(B, D)``, and the measurer's per-sample truth.

    With ``cache``, these are read from / written to ``cache`` (``meta.json`` with the prompts,
    truth and generation time; ``features_<evaluator>.safetensors``), so score variants are
    evaluated without regenerating; a cache made for other prompts or ``D`` is an error.
    """
    from safetensors.torch import load_file, save_file

    texts = [p.text for p in prompts]
    meta_path = cache / "meta.json" if cache is not None else None
    if meta_path is not None and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["texts"] != texts or meta["samples"] != samples:
            raise SystemExit(f"--cache {cache}: made for other prompts or samples; use another folder")
        missing = [n for n in evaluators if not (cache / f"features_{n}.safetensors").is_file()]
        if not missing:
            feats = {n: load_file(str(cache / f"features_{n}.safetensors")) for n in evaluators}
            logger.info("read %d x %d samples from %s", len(texts), samples, cache)
            return {"texts": texts, "truth": meta["truth"], "issues": meta["issues"],
                    "generate_s": meta["generate_s"], "features": feats, "cached": True}  # fmt: skip
        logger.info("cache %s lacks %s; generating again", cache, ", ".join(missing))
    from debias3d.bias_audit.localize import generate_samples
    from debias3d.data.shapeworld.measurer import score_prompt
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    t0 = time.perf_counter()
    te = next(iter(evaluators.values())).text_encoder
    gen = MiniTrellisGenerator.from_pretrained(None, text_encoder=te)
    assets, issues = generate_samples(gen, texts, samples, seed=0)
    t_gen = time.perf_counter() - t0
    logger.info("generated %d x %d meshes in %.0f s", len(texts), samples, t_gen)
    truth = [
        [score_prompt(p.spec, a.voxels if a.voxels is not None else a) if a is not None else {} for a in row]
        for p, row in zip(prompts, assets, strict=True)
    ]
    feats = {}
    for name, ev in evaluators.items():
        flat = [a for row in assets for a in row]
        vb = ev.prepare_views(flat)
        with torch.no_grad():
            vf = ev.view_features(vb)
        feats[name] = {
            "features": vf.features.reshape(len(texts), samples, *vf.features.shape[1:]).contiguous(),
            "valid": vb.valid.reshape(len(texts), samples).contiguous(),
        }
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for name, f in feats.items():
            save_file(f, str(cache / f"features_{name}.safetensors"))
        meta = {
            "texts": texts,
            "samples": samples,
            "truth": truth,
            "issues": issues,
            "generate_s": round(t_gen, 1),
        }
        meta_path.write_text(json.dumps(meta))  # type: ignore[union-attr]
    return {"texts": texts, "truth": truth, "issues": issues, "generate_s": round(t_gen, 1),
            "features": feats, "cached": False}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=("eval", "tune"), default="eval",
                    help="eval: the fixed evaluation set; tune: a disjoint grammar sample for choosing variants")  # fmt: skip
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tune-seed", type=int, default=1)
    ap.add_argument("--tune-per-category", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--evaluators", default="default,scene")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="folder for the generated samples' view features and truth")
    ap.add_argument("--build-only", action="store_true", help="fill --cache and stop")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from debias3d.bias_audit.substitutes import ShapeWorldProposer
    from debias3d.bias_audit.truth import method_truth
    from debias3d.bias_audit.words import DEFAULT_STOP_WORDS
    from debias3d.data.shapeworld.vocab import STOP_WORDS
    from debias3d.models.evaluator.model import ShapeWorldHyperScore

    stops = frozenset(DEFAULT_STOP_WORDS | STOP_WORDS)
    prompts = load_prompts(args.set, args.prompts, args.tune_seed, args.tune_per_category)
    t0 = time.perf_counter()
    evaluators = {
        name: ShapeWorldHyperScore.from_pretrained(name).eval() for name in args.evaluators.split(",")
    }
    data = cached_features(prompts, args.samples, evaluators, Path(args.cache) if args.cache else None)
    if args.build_only:
        return {}
    texts, truth = data["texts"], data["truth"]
    proposer = ShapeWorldProposer(stop_words=stops)
    result: dict[str, Any] = {
        "command": "python benchmarks/attribution_truth.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "set": args.set,
        "prompts": len(texts),
        "samples": args.samples,
        "batch": args.batch,
        "k": args.k,
        "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "generate_s": data["generate_s"],
        "issues": data["issues"],
        "evaluators": {},
    }
    for name, ev in evaluators.items():
        feats, valid = data["features"][name]["features"], data["features"][name]["valid"]
        timings: dict[str, list[float]] = {}
        run = None
        for _ in range(args.repeats):
            run = run_methods(ev, texts, feats, valid, args.batch, args.k, proposer, stops)
            for m, s in run["seconds"].items():
                timings.setdefault(m, []).append(s)
        assert run is not None
        sec = {m: statistics.median(v) for m, v in timings.items()}
        rows = truth_rows(texts, truth, valid, run["words"])
        fid = rows.groupby("word")["shown"].mean().to_dict()
        tables = {
            m: rows.groupby(["word", "prompt_id"])[f"score_{m}"].mean().groupby("word").mean()
            .rename("mean_attr").reset_index()
            for m, _, _ in METHODS
        }  # fmt: skip
        gt = method_truth(rows, [m for m, _, _ in METHODS], tables, fid, n_boot=500, ci=0.9)
        for m in gt:
            gt[m]["seconds"] = round(sec[m], 3)
            gt[m]["cost_vs_grad"] = round(sec[m] / sec["grad"], 2)
        if args.cache:
            rows.to_parquet(Path(args.cache) / f"uses_methods_{name}.parquet", index=False)
        best = max(
            (m for m, kind, _ in METHODS if kind in ("occlusion", "contrastive", "choice")),
            key=lambda m: gt[m]["auc"],
        )
        thr = youden_threshold(rows[f"score_{best}"].to_numpy(float), rows["shown"].to_numpy(bool))
        result["evaluators"][name] = {
            "n_uses": len(rows),
            "shown_share": float(rows["shown"].mean()),
            "methods": gt,
            "best_probe": best,
            "best_probe_youden_threshold": thr,
        }
        logger.info("evaluator %s:", name)
        for m, r in gt.items():
            logger.info(
                "  %-20s AUC %.3f [%.3f, %.3f]  rho %+.2f  w_l hit %.0f%% (chance %.0f%%, %d prompts)  cost %.2fx grad",
                m, r["auc"], r["auc_ci"][0], r["auc_ci"][1], r["spearman"], 100 * r["w_l_hit_rate"],
                100 * r["w_l_chance"], r["n_prompts"], r["cost_vs_grad"],
            )  # fmt: skip
    result["total_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
