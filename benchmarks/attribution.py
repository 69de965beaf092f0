"""Benchmark word-level attribution (bias quantization) and the whole audit.

    python benchmarks/attribution.py --json benchmarks/results/attribution.json
    python benchmarks/attribution.py --audit-prompts 64 --json benchmarks/results/attribution_audit.json

Cases (``B`` = ``--batch`` ShapeWorld evaluation prompts, ``D`` = ``--samples`` cached views each):

* ``floor``: one evaluator forward + backward (to the embeddings) on the batch's views (``B·D``
  rows) — the issue's physical floor; ``text_side_floor`` the same on cached view features.
* ``grad``: :func:`attribute_prompts` with the paper's method from views (tokenize, embed, encode
  the views once, forward + backward, token → word tensors) and ``grad_cached`` from the view
  features the audit already holds; ratios to the floor (target <= 1.5x).
* ``per_prompt``: the same attributions in a loop over prompts (from cached features, and from
  views); speed-up of batching (target >= 10x).
* ``captum``: captum ``Saliency`` and ``IntegratedGradients(n_steps=50)`` on the same forward
  function and cached features vs our ``grad`` / ``integrated_gradients`` (same
  ``internal_batch_size``), and captum fed raw views (re-encoded at every step).
* ``audit`` (``--audit-prompts N``): wall time of :func:`run_audit` on N ShapeWorld prompts × D
  (generation, rendering, scoring, three attribution methods, deletion test, report; target <= 3 min
  for 64 prompts × 4).

Without shipped weights (``debias3d/assets/...``) the models are randomly initialised at their
full default size, which costs the same compute as trained ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import write_json

logger = logging.getLogger("benchmarks.attribution")


def load_evaluator(weights: str | None) -> tuple[Any, str]:
    from debias3d.models.evaluator.model import ShapeWorldHyperScore, default_weights_dir

    path = Path(weights) if weights else default_weights_dir()
    if (path / "model.safetensors").is_file() or path.is_file():
        return ShapeWorldHyperScore.from_pretrained(path), f"trained ({path})"
    torch.manual_seed(0)
    return ShapeWorldHyperScore().eval(), "random init (no shipped weights yet)"


def load_generator(weights: str | None, text_encoder: Any) -> tuple[Any, str]:
    from debias3d.models.backbone.generator import (
        DEFAULT_WEIGHTS_DIR,
        MiniTrellisConfig,
        MiniTrellisGenerator,
    )

    path = Path(weights) if weights else DEFAULT_WEIGHTS_DIR
    if (path / "model.safetensors").is_file():
        return MiniTrellisGenerator.from_pretrained(path, text_encoder=text_encoder), f"trained ({path})"
    torch.manual_seed(0)
    return MiniTrellisGenerator(
        MiniTrellisConfig(), text_encoder=text_encoder
    ), "random init (no shipped weights yet)"


def timeit(fn: Any, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_attribution(
    evaluator: Any, batch: int, samples: int, repeats: int, ig_steps: int, ibs: int
) -> dict[str, Any]:
    from captum.attr import IntegratedGradients, Saliency

    from debias3d.bias_audit.attribute import (
        EvaluatorScore,
        GradientAttribution,
        attribute_prompts,
        encode_sample_views,
    )
    from debias3d.data.shapeworld.grammar import evaluation_prompts

    prompts = [p.text for p in evaluation_prompts(n_per_category=8, seed=0)][:batch]
    size = evaluator.config.image_size
    g = torch.Generator().manual_seed(0)
    views = torch.rand((len(prompts), samples, evaluator.config.n_views, 3, size, size), generator=g)
    valid = torch.ones((len(prompts), samples), dtype=torch.bool)
    enc = evaluator.tokenize(prompts)
    emb = evaluator.embed_tokens(enc["input_ids"]).detach()
    mask = enc["attention_mask"]
    fwd = EvaluatorScore(evaluator)
    feats = encode_sample_views(evaluator, views)  # what the audit keeps per batch (localize)

    def fwd_bwd(inputs: torch.Tensor) -> None:
        x = emb.clone().requires_grad_(True)
        torch.autograd.grad(fwd(x, inputs, valid, mask).sum(), x)

    res: dict[str, Any] = {"batch": len(prompts), "samples": samples, "rows": len(prompts) * samples}
    # The floor: one evaluator forward + backward (to the embeddings) on the batch's views.
    res["floor_s"] = timeit(lambda: fwd_bwd(views), repeats)
    res["text_side_floor_s"] = timeit(lambda: fwd_bwd(feats), repeats)
    res["encode_views_s"] = timeit(lambda: encode_sample_views(evaluator, views), repeats)
    # attribute_prompts from views: encodes them once, then one forward + backward on the features.
    res["grad_s"] = timeit(lambda: attribute_prompts(evaluator, prompts, views, valid, "grad"), repeats)
    res["grad_over_floor"] = res["grad_s"] / res["floor_s"]
    # ... from the audit's cached features (localize encoded them for scoring already).
    res["grad_cached_s"] = timeit(
        lambda: attribute_prompts(evaluator, prompts, feats, valid, "grad"), repeats
    )
    res["grad_cached_over_floor"] = res["grad_cached_s"] / res["floor_s"]

    def per_prompt(inputs: torch.Tensor) -> None:
        for i, p in enumerate(prompts):
            attribute_prompts(evaluator, [p], inputs[i : i + 1], valid[i : i + 1], "grad")

    res["per_prompt_cached_s"] = timeit(lambda: per_prompt(feats), max(1, repeats // 2))
    res["speedup_vs_per_prompt_cached"] = res["per_prompt_cached_s"] / res["grad_cached_s"]
    res["per_prompt_views_s"] = timeit(lambda: per_prompt(views), max(1, repeats // 2))
    res["speedup_vs_per_prompt_views"] = res["per_prompt_views_s"] / res["grad_cached_s"]

    args = (feats, valid, mask)
    ours_sal = GradientAttribution(fwd, "grad")
    res["ours_grad_tensor_s"] = timeit(lambda: ours_sal.attribute(emb, additional_forward_args=args), repeats)
    sal = Saliency(fwd)
    res["captum_saliency_s"] = timeit(
        lambda: sal.attribute(emb.clone(), additional_forward_args=args, abs=True), repeats
    )
    res["speedup_vs_captum_saliency"] = res["captum_saliency_s"] / res["ours_grad_tensor_s"]
    # captum Saliency fed raw views (what a user gets by wrapping the evaluator's forward directly).
    res["captum_saliency_views_s"] = timeit(
        lambda: sal.attribute(emb.clone(), additional_forward_args=(views, valid, mask), abs=True), repeats
    )
    res["speedup_vs_captum_saliency_views"] = res["captum_saliency_views_s"] / res["grad_cached_s"]

    ours_ig = GradientAttribution(fwd, "integrated_gradients")
    res["ig_steps"] = ig_steps
    res["internal_batch_size"] = ibs
    r_ig = max(1, repeats // 3)
    res["ours_ig_s"] = timeit(
        lambda: ours_ig.attribute(
            emb, additional_forward_args=args, n_steps=ig_steps, internal_batch_size=ibs
        ),
        r_ig,
    )
    cig = IntegratedGradients(fwd)
    res["captum_ig_s"] = timeit(
        lambda: cig.attribute(emb, additional_forward_args=args, n_steps=ig_steps, internal_batch_size=ibs),
        r_ig,
    )
    res["speedup_vs_captum_ig"] = res["captum_ig_s"] / res["ours_ig_s"]
    # captum IG fed raw views re-encodes them at every step: timed once (it is slow).
    t0 = time.perf_counter()
    b = cig.attribute(
        emb, additional_forward_args=(views, valid, mask), n_steps=ig_steps, internal_batch_size=ibs
    )
    res["captum_ig_views_s"] = time.perf_counter() - t0
    res["speedup_vs_captum_ig_views"] = res["captum_ig_views_s"] / res["ours_ig_s"]
    a = ours_ig.attribute(emb, additional_forward_args=args, n_steps=ig_steps, internal_batch_size=ibs)
    res["ig_max_abs_diff_vs_captum"] = float((a - b.to(a.dtype)).abs().max())
    return res


def bench_audit(evaluator: Any, n: int, samples: int, gen_weights: str | None) -> dict[str, Any]:
    from debias3d.bias_audit.config import AuditConfig
    from debias3d.bias_audit.pipeline import run_audit
    from debias3d.data.prompts import Prompt, PromptSet
    from debias3d.data.shapeworld.grammar import evaluation_prompts

    generator, gen_kind = load_generator(gen_weights, evaluator.text_encoder)
    ps = PromptSet(
        [Prompt(p.text, p.category) for p in evaluation_prompts(n_per_category=max(1, n // 8), seed=0)][:n]
    )
    cfg = AuditConfig(samples=samples)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_audit(ps, cfg, Path(tmp) / "audit", generator=generator, evaluator=evaluator)
        wall = time.perf_counter() - t0
        timings = json.loads((Path(tmp) / "audit" / "timings.json").read_text())
    return {
        "prompts": len(ps),
        "samples": samples,
        "generator": gen_kind,
        "wall_s": wall,
        "stages_s": timings,
        "faithfulness_grad": summary["faithfulness"].get("grad"),
        "ground_truth": {k: v for k, v in (summary.get("ground_truth") or {}).items() if k != "per_word"},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32, help="prompts per attribution batch")
    p.add_argument("--samples", type=int, default=4, help="D, cached samples per prompt")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    p.add_argument("--ig-steps", type=int, default=50, help="integrated-gradients steps (captum comparison)")
    p.add_argument(
        "--internal-batch-size", type=int, default=256, help="rows per IG forward (both libraries)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument(
        "--evaluator-weights", default=None, help="evaluator folder (default: shipped, else random)"
    )
    p.add_argument(
        "--generator-weights", default=None, help="generator folder (default: shipped, else random)"
    )
    p.add_argument(
        "--audit-prompts", type=int, default=0, help="also time a whole audit of N prompts (0: skip)"
    )
    p.add_argument("--skip-attribution", action="store_true", help="only the audit case")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    evaluator, ev_kind = load_evaluator(args.evaluator_weights)
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "evaluator": ev_kind,
    }
    if not args.skip_attribution:
        out["attribution"] = bench_attribution(
            evaluator, args.batch, args.samples, args.repeats, args.ig_steps, args.internal_batch_size
        )
        logger.info("attribution: %s", json.dumps(out["attribution"], indent=1))
    if args.audit_prompts:
        out["audit"] = bench_audit(evaluator, args.audit_prompts, args.samples, args.generator_weights)
        logger.info(
            "audit of %d prompts x D=%d: %.1fs %s",
            args.audit_prompts,
            args.samples,
            out["audit"]["wall_s"],
            out["audit"]["stages_s"],
        )
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
