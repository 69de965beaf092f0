"""Where does the generator's fidelity stop: the grid, the training fit, or generalisation?

Three figures per word and per category, on the same measurer as ``debias3d world fidelity``:

* **ground truth** -- the builder's own voxel grids (R = 16, D jittered builds per prompt) of the
  fixed evaluation set. This is the ceiling of any generator at this resolution.
* **training prompts** -- the generator on prompts drawn from its own training corpus (the first
  ``--train-per-category`` of each category). Low here means the model underfits those scenes.
* **evaluation prompts** -- the generator on the fixed evaluation set (as ``world fidelity``).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fidelity_ceiling.py --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import write_json


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="generator folder (default: the shipped model)")
    p.add_argument("--corpus", default=None,
                   help="training corpus folder (default: rebuilt from the generator's training record)")  # fmt: skip
    p.add_argument("--per-category", type=int, default=8, help="evaluation prompts per category")
    p.add_argument("--train-per-category", type=int, default=10, help="training prompts per category")
    p.add_argument("--samples", "-D", type=int, default=4, help="samples (or jittered builds) per prompt")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def ground_truth(prompts, D: int, resolution: int = 16) -> dict:  # noqa: N803
    from debias3d.data.shapeworld.builder import build_voxels
    from debias3d.data.shapeworld.measurer import word_scores

    words, cats = defaultdict(list), defaultdict(list)
    for p in prompts:
        for d in range(D):
            scores = word_scores(p.spec, build_voxels(p.spec, resolution, rng=d))
            for s in scores:
                words[s.word].append(bool(s.shown))
            cats[p.category].append(float(np.mean([s.shown for s in scores])) if scores else np.nan)
    every = [x for v in words.values() for x in v]
    return {"fidelity": float(np.nanmean([x for v in cats.values() for x in v])),
            "word_fidelity": float(np.mean(every)),
            "words": {w: float(np.mean(v)) for w, v in sorted(words.items())},
            "categories": {c: float(np.nanmean(v)) for c, v in sorted(cats.items())}}  # fmt: skip


def training_prompts(corpus_dir: str | Path, per_category: int) -> list:
    from datasets import load_from_disk

    from debias3d.data.shapeworld import vocab
    from debias3d.data.shapeworld.corpus import row_to_prompt

    ds = load_from_disk(str(corpus_dir)).select_columns(["prompt", "category", "spec"])
    by: dict[str, list] = defaultdict(list)
    for row in ds:
        if len(by[row["category"]]) < per_category:
            by[row["category"]].append(row_to_prompt(row))
        if all(len(by[c]) >= per_category for c in vocab.CATEGORIES):
            break
    return [p for c in sorted(by) for p in by[c]]


def corpus_folder(gen, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    import tempfile

    from debias3d.config import from_dict
    from debias3d.data.shapeworld.corpus import CorpusConfig, write_corpus

    cfg = gen.metadata.get("training_record", {}).get("corpus", {}).get("config")
    if not cfg:
        raise SystemExit("fidelity_ceiling: the generator has no corpus config in its record; pass --corpus")
    out = Path(tempfile.mkdtemp(prefix="corpus-")) / "corpus"
    t0 = time.time()
    write_corpus(from_dict(CorpusConfig, cfg), out)
    print(f"rebuilt the training corpus in {time.time() - t0:.0f} s -> {out}", file=sys.stderr)
    return out


def summarise(res) -> dict:
    s = res.summary
    return {"fidelity": s["fidelity"], "word_fidelity": s["word_fidelity"],
            "frequent_fidelity": s.get("frequent_fidelity"), "rare_fidelity": s.get("rare_fidelity"),
            "words": dict(zip(res.words["word"], res.words["fidelity"].astype(float), strict=True)),
            "categories": s["categories"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from debias3d.data.shapeworld.grammar import evaluation_prompts
    from debias3d.eval.fidelity import run_fidelity
    from debias3d.models.generator import GeneratorSpec, build_generator

    gen = build_generator(GeneratorSpec("mini-trellis", args.weights))
    evals = evaluation_prompts(args.per_category, seed=0)
    t0 = time.time()
    out = {"command": "benchmarks/fidelity_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "D": args.samples, "ground_truth": ground_truth(evals, args.samples)}  # fmt: skip
    out["evaluation_prompts"] = summarise(run_fidelity(gen, evals, D=args.samples, seed=0))
    train = training_prompts(corpus_folder(gen, args.corpus), args.train_per_category)
    out["training_prompts"] = summarise(run_fidelity(gen, train, D=args.samples, seed=0))
    out["seconds"] = round(time.time() - t0, 1)

    cats = sorted(out["ground_truth"]["categories"])
    print(f"{'category':12s} {'ground truth':>12s} {'train prompts':>13s} {'eval prompts':>12s}")
    for c in cats:
        print(f"{c:12s} {out['ground_truth']['categories'][c]:12.3f} "
              f"{out['training_prompts']['categories'].get(c, float('nan')):13.3f} "
              f"{out['evaluation_prompts']['categories'].get(c, float('nan')):12.3f}")  # fmt: skip
    print(f"{'all':12s} {out['ground_truth']['fidelity']:12.3f} {out['training_prompts']['fidelity']:13.3f} "
          f"{out['evaluation_prompts']['fidelity']:12.3f}")  # fmt: skip
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
