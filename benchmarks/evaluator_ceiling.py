"""How well could *any* view-based evaluator rank alignment, if it cannot see some kinds of words?

Alignment (the evaluator's target) is the share of a prompt's attribute words that the ShapeWorld
measurer finds in the shape. This script rebuilds the evaluator's training samples (same config,
same seed), reads the measurer's per-word verdicts, and scores an *oracle* that knows every
verdict except those of some word kinds, which it replaces with the kind's base rate. The SRCC of
that oracle against the true alignment is the ceiling for an evaluator blind to those kinds.

MATE-3D's rig centres each mesh and scales it to the unit sphere, so an evaluator fed those views
cannot see *small* / *large* (absolute size) and barely sees *floating* (height above the ground).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evaluator_ceiling.py --prompts 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

HIDDEN_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("size",),
    ("action",),
    ("size", "action"),
    ("size", "action", "count"),
)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=300, help="ShapeWorld prompts (6 samples each)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (the shipped config uses 0)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    from scipy.stats import spearmanr
    from tqdm.auto import tqdm

    from debias3d.data.shapeworld import vocab
    from debias3d.data.shapeworld.measurer import word_scores
    from debias3d.models.evaluator.data import EvaluatorDataConfig, make_samples

    t0 = time.time()
    samples = make_samples(EvaluatorDataConfig(n_prompts=args.prompts, seed=args.seed))
    alignment, verdicts = [], []
    for s in tqdm(samples, desc="measure words", leave=False):
        words: dict[str, tuple[str, bool]] = {}
        for w in word_scores(s.prompt, s.grid):
            kind = vocab.WORD_KIND.get(w.word, w.kind)
            words[w.word] = (kind, words.get(w.word, (kind, True))[1] and bool(w.shown))
        alignment.append(float(s.ratings[0]))
        verdicts.append(list(words.values()))
    y = np.array(alignment)
    kinds = sorted({k for v in verdicts for k, _ in v})
    base = {k: float(np.mean([ok for v in verdicts for kk, ok in v if kk == k])) for k in kinds}
    rows = []
    for hidden in HIDDEN_SETS:
        oracle = [
            np.mean([base[k] if k in hidden else float(ok) for k, ok in v]) if v else a
            for v, a in zip(verdicts, y, strict=True)
        ]
        rows.append({"hidden": list(hidden), "srcc": float(spearmanr(oracle, y).statistic)})
    result = {
        "samples": len(samples),
        "prompts": args.prompts,
        "word_uses": {k: int(sum(kk == k for v in verdicts for kk, _ in v)) for k in kinds},
        "shown_rate": base,
        "oracle_srcc": rows,
        "seconds": round(time.time() - t0, 1),
    }
    print(f"{len(samples)} samples; SRCC of an oracle blind to some word kinds vs the true alignment")
    for r in rows:
        print(f"  blind to {', '.join(r['hidden']) or 'nothing':24s} {r['srcc']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
