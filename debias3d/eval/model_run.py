"""One model's evaluation: its samples generated once and read by every scorer, kept as a :class:`ModelRun`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from debias3d.data.assets import save_mesh
from debias3d.eval.config import EvalConfig
from debias3d.eval.inputs import EvalPrompt
from debias3d.runs import (
    Timer,
    atomic_write_json,
    read_json,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """Everything measured on one model.

    Attributes:
        name: ``base``, ``finetuned`` or an ablation name.
        samples: one row per (prompt, sample): ``prompt_index``, ``prompt_id``, ``prompt``,
            ``category``, ``t3_group``, ``sample``, ``seed``, ``fidelity``, ``score_<dim>``,
            ``valid``, ``t3_quality`` (NaN when not rendered), ``mesh`` (relative path or ""),
            ``score_clamped`` (how many of the sample's scores were clamped to ``score_range``).
        verdicts: one row per (prompt, sample, word): ``prompt_index``, ``sample``, ``word``,
            ``kind``, ``shown`` (ShapeWorld ground truth; empty without parseable prompts).
        words: fidelity.py's per-word table (``word``, ``kind``, ``n``, ``fidelity``, corpus columns).
        diversity: one row per prompt: ``prompt_index``, ``category``, ``diversity``.
        fidelity_summary: fidelity.py's ``summary.json``.
        score_range: the evaluator's documented score range (``score_<dim>`` are clamped to it);
            None when the evaluator declares none.
    """

    name: str
    samples: pd.DataFrame
    verdicts: pd.DataFrame
    words: pd.DataFrame
    diversity: pd.DataFrame
    fidelity_summary: dict[str, Any] = field(default_factory=dict)
    score_range: tuple[float, float] | None = None

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the run under ``out_dir`` (reloadable with :meth:`load`)."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.samples.to_parquet(d / "samples.parquet", index=False)
        self.verdicts.to_parquet(d / "verdicts.parquet", index=False)
        self.words.to_parquet(d / "words.parquet", index=False)
        self.diversity.to_parquet(d / "diversity.parquet", index=False)
        meta = json.loads(
            json.dumps(
                {
                    "name": self.name,
                    "fidelity_summary": self.fidelity_summary,
                    "score_range": self.score_range,
                },
                default=float,
            )
        )
        atomic_write_json(d / "run.json", meta)
        return d

    @classmethod
    def load(cls, d: str | os.PathLike) -> ModelRun:
        """Read a run written by :meth:`save`."""
        d = Path(d)
        meta = read_json(d / "run.json")
        return cls(
            meta["name"],
            pd.read_parquet(d / "samples.parquet"),
            pd.read_parquet(d / "verdicts.parquet"),
            pd.read_parquet(d / "words.parquet"),
            pd.read_parquet(d / "diversity.parquet"),
            meta.get("fidelity_summary", {}),
            tuple(meta["score_range"]) if meta.get("score_range") else None,
        )


def _score_range(evaluator: Any) -> tuple[float, float] | None:
    r = getattr(evaluator, "score_range", None)
    return (float(r[0]), float(r[1])) if r is not None else None


class _Replay:
    """Generator shim that hands fidelity.py the assets already generated (no second generation)."""

    def __init__(self, assets: list[Any], metadata: dict[str, Any]) -> None:
        self.assets = assets
        self.metadata = metadata

    def generate(
        self, prompts: Sequence[str], seeds: Any = None, num_samples: int = 1, **_: Any
    ) -> list[Any]:
        if len(self.assets) != len(prompts) * num_samples:
            raise ValueError("replay: prompts differ from the generated ones")
        return self.assets


def _t3bench_scores(
    assets: list[Any], prompts: list[str], ranker: Any, cfg: EvalConfig, show: bool
) -> np.ndarray:
    from debias3d.models.ranker.t3bench import T3BenchQuality
    from debias3d.progress import tqdm
    from debias3d.render.renderer import RenderError

    q = T3BenchQuality(ranker, cfg.ranking)
    out = np.full(len(assets), np.nan)
    for k in tqdm(range(len(assets)), desc="t3bench", unit="mesh", disable=not show, leave=False):
        if assets[k] is None:
            continue
        try:
            out[k] = q(assets[k], prompts[k]).score
        except RenderError as exc:  # an empty or degenerate sample scores NaN, the run goes on
            logger.debug("t3bench: sample %d not rendered: %s", k, exc)
    return out


def evaluate_model(
    name: str,
    generator: Any,
    prompts: Sequence[EvalPrompt],
    cfg: EvalConfig,
    evaluator: Any,
    ranker: Any = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    timer: Timer | None = None,
) -> ModelRun:
    """Generate D samples per prompt with ``generator`` and measure them (see the module doc).

    Args:
        name: the model's name in tables (``base`` / ``finetuned`` / ``only_wh`` ...).
        generator: any generator with ``generate(prompts, seeds, num_samples, ...)``.
        prompts: the evaluation prompts.
        cfg: evaluation settings (D, seeds, bootstrap, rig).
        evaluator: a HyperScore-style evaluator (``evaluate(assets, prompts, batch_size)``).
        ranker: a ranker for the T3Bench quality (None: quality is NaN).
        out_dir: the eval folder; ``<out_dir>/<name>/`` and ``<out_dir>/meshes/<name>/`` are written.
        progress: show progress bars.

    Returns:
        :class:`ModelRun`.
    """
    from debias3d.eval.benchmarks import t3bench_group
    from debias3d.eval.diversity import prompt_diversity
    from debias3d.eval.fidelity import run_fidelity
    from debias3d.progress import tqdm

    timer = timer or Timer()
    D = cfg.samples  # noqa: N806 — the paper's symbol
    texts = [p.text for p in prompts]
    kwargs: dict[str, Any] = {"num_samples": D, "batch_size": cfg.generate_batch_size}
    if cfg.steps is not None:
        kwargs["steps"] = cfg.steps
    logger.info("eval[%s]: generating %d prompts x D=%d", name, len(texts), D)
    with timer(f"{name}.generate"):
        assets: list[Any] = []
        chunk = max(1, cfg.generate_batch_size // D)
        for s in tqdm(
            range(0, len(texts), chunk), desc=f"generate[{name}]", unit="batch", disable=not progress
        ):
            part = texts[s : s + chunk]
            assets += generator.generate(part, seeds=[cfg.seed] * len(part), **kwargs)
    if len(assets) != len(texts) * D:
        raise ValueError(f"{name}: generator returned {len(assets)} assets for {len(texts)} prompts x D={D}")

    rows = []
    for k in range(len(assets)):
        pi, d = divmod(k, D)
        p = prompts[pi]
        rows.append({"model": name, "prompt_index": p.index, "prompt_id": p.id, "prompt": p.text,
                     "category": p.category, "t3_group": t3bench_group(p.text, p.spec), "sample": d,
                     "seed": cfg.seed + d, "mesh": ""})  # fmt: skip
    samples = pd.DataFrame(rows)

    with timer(f"{name}.evaluator"):
        dims = list(evaluator.dimensions)
        scores, valid = [], []
        bs = cfg.evaluator_batch_size
        for s in tqdm(
            range(0, len(assets), bs), desc=f"evaluator[{name}]", unit="batch", disable=not progress
        ):
            res = evaluator.evaluate(
                assets[s : s + bs], [a.prompt for a in assets[s : s + bs]], batch_size=bs
            )
            scores.append(res.scores.cpu().numpy())
            valid.append(res.valid.cpu().numpy())
        sc = np.concatenate(scores) if scores else np.zeros((0, len(dims)))
        score_range = getattr(evaluator, "score_range", None)
        if score_range is not None:
            # The head is unbounded; a score means what its label says only on the documented range.
            lo, hi = (float(v) for v in score_range)
            clipped = np.clip(sc, lo, hi)
            samples["score_clamped"] = (clipped != sc).sum(axis=1).astype(int)
            sc = clipped
        for j, dim in enumerate(dims):
            samples[f"score_{dim}"] = sc[:, j].astype(float)
        samples["valid"] = np.concatenate(valid).astype(bool) if valid else np.zeros(0, bool)

    samples["t3_quality"] = np.nan
    if ranker is not None and cfg.t3bench:
        with timer(f"{name}.t3bench"):
            pick = [k for k in range(len(assets)) if k % D < cfg.t3bench_samples]
            q = _t3bench_scores(
                [assets[k] for k in pick], [texts[k // D] for k in pick], ranker, cfg, progress
            )
            samples.loc[pick, "t3_quality"] = q

    # ShapeWorld ground truth on the prompts the parser can read.
    with timer(f"{name}.fidelity"):
        gt = [i for i, p in enumerate(prompts) if p.spec is not None]
        samples["fidelity"] = np.nan
        verdicts = pd.DataFrame(columns=["prompt_index", "sample", "word", "kind", "shown"])
        words = pd.DataFrame(columns=["word", "kind", "n", "fidelity"])
        fsum: dict[str, Any] = {}
        if gt:
            sub_assets = [assets[i * D + d] for i in gt for d in range(D)]
            recs = [prompts[i] for i in gt]
            meta = dict(getattr(generator, "metadata", {}) or {})
            fdir = Path(out_dir) / name / "fidelity" if out_dir is not None else None
            fres = run_fidelity(_Replay(sub_assets, meta), recs, D=D, out_dir=fdir, seed=cfg.seed,
                                rare_fraction=cfg.rare_fraction)  # fmt: skip
            back = np.asarray([prompts[i].index for i in gt])
            verdicts = fres.verdicts.copy()
            verdicts["prompt_index"] = back[verdicts["prompt_index"].to_numpy()]
            fs = fres.samples.copy()
            fs["prompt_index"] = back[fs["prompt_index"].to_numpy()]
            fid = fs.set_index(["prompt_index", "sample"])["fidelity"]
            samples["fidelity"] = [
                float(fid.get((pi, d), np.nan))
                for pi, d in zip(samples["prompt_index"], samples["sample"], strict=True)
            ]
            words, fsum = fres.words, fres.summary
        elif prompts:
            logger.warning("eval[%s]: no prompt parses as ShapeWorld; ground-truth fidelity skipped", name)

    div_rows = []
    if cfg.diversity:
        with timer(f"{name}.diversity"):
            for i, p in enumerate(
                tqdm(prompts, desc=f"diversity[{name}]", unit="prompt", disable=not progress)
            ):
                div = prompt_diversity(assets[i * D : (i + 1) * D], cfg.diversity_points, seed=cfg.seed)
                div_rows.append({"prompt_index": p.index, "category": p.category, "diversity": div})
    diversity = pd.DataFrame(div_rows, columns=["prompt_index", "category", "diversity"])

    if out_dir is not None and cfg.save_meshes:
        mdir = Path(out_dir) / "meshes" / name
        mdir.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(prompts[: cfg.save_meshes]):
            for d in range(D):
                a = assets[i * D + d]
                if a is None or len(getattr(a.mesh, "faces", ())) == 0:
                    continue
                rel = f"meshes/{name}/{p.id}_{d}.glb"
                save_mesh(a.mesh, Path(out_dir) / rel, "glb")
                samples.loc[(samples["prompt_index"] == p.index) & (samples["sample"] == d), "mesh"] = rel

    run = ModelRun(name, samples, verdicts, words, diversity, fsum, score_range=_score_range(evaluator))
    if out_dir is not None:
        run.save(Path(out_dir) / name)
    return run
