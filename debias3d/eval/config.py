"""``EvalConfig``: every knob of ``debias3d eval`` (YAML: ``configs/shapeworld/eval.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from debias3d.config import check_bounds
from debias3d.models.ranker.t3bench import T3BenchConfig
from debias3d.models.settings import EvaluatorSettings, GeneratorSettings

__all__ = ["EvalConfig", "EvalTargets", "T3BENCH_GROUPS", "ALIGNMENT_ROUTES"]

#: T3Bench's three prompt groups, in table order.
T3BENCH_GROUPS: tuple[str, ...] = ("single", "surroundings", "multi")
#: Where the T3Bench alignment column comes from (``caption_llm`` is the real-model route, see docs/eval.md).
ALIGNMENT_ROUTES: tuple[str, ...] = ("evaluator", "caption_llm")


def _ranking_default() -> T3BenchConfig:
    # Level 0 (12 icosahedron cameras) and one FoV keep a CPU run short; T3Bench uses level 2 + 5 FoVs.
    return T3BenchConfig(level=0, fovs=(1.0471975512,))


@dataclass
class EvalTargets:
    """Acceptance targets of a before/after run on the embedded world (reported with a met flag,
    never tuned for)."""

    neglected_gain_points: float = field(
        default=15.0, metadata={"help": "fidelity gain of the neglected words, in points, at least"}
    )
    rest_drop_points: float = field(
        default=2.0, metadata={"help": "fidelity drop of the other words, in points, at most"}
    )
    evaluator_overall_categories: int = field(
        default=6, metadata={"help": "prompt categories whose evaluator 'overall' improves, at least"}
    )


@dataclass
class EvalConfig(EvaluatorSettings, GeneratorSettings):
    """Before/after evaluation: MATE-3D-style and T3Bench-style tables, ground truth, diversity.

    ``generator_weights`` are the base model's."""

    ranker: str = field(default="shapeworld", metadata={"help": "ranker backend for T3Bench quality"})
    ranker_weights: str | None = field(default=None, metadata={"help": "ranker weights (default: shipped)"})
    prompts: str | None = field(
        default=None,
        metadata={"help": "prompt file (txt/csv/json/jsonl); null = ShapeWorld's fixed evaluation set"},
    )
    categories: str | None = field(
        default=None,
        metadata={
            "help": "category file for `prompts` (e.g. MATE-3D's prompt_MATE_3D.xlsx; csv/json also read); "
            "null = the prompt file's own categories, if any"
        },
    )
    per_category: int = field(
        default=8, metadata={"help": "ShapeWorld evaluation set: prompts per category (+ word top-ups)"}
    )
    prompt_seed: int = field(default=0, metadata={"help": "seed of the ShapeWorld evaluation prompt set"})
    max_prompts: int = field(default=0, metadata={"help": "evaluate only the first N prompts (0 = all)"})
    samples: int = field(default=4, metadata={"help": "D, samples per prompt (same seeds before and after)"})
    seed: int = field(default=1000, metadata={"help": "base seed; sample d of a prompt uses seed + d"})
    steps: int | None = field(default=None, metadata={"help": "generator sampler steps (default: model's)"})
    generate_batch_size: int = field(
        default=64, metadata={"help": "prompt x sample items per generator batch"}
    )
    evaluator_batch_size: int = field(default=32, metadata={"help": "meshes per evaluator forward"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% CIs"})
    ci: float = field(default=0.95, metadata={"help": "coverage of the bootstrap intervals"})
    neglected_quantile: float = field(
        default=0.25, metadata={"help": "neglected words = this bottom share of BASE word fidelity"}
    )
    min_word_uses: int = field(
        default=3, metadata={"help": "words used fewer times than this are left out of the word split"}
    )
    rare_fraction: float = field(
        default=0.25, metadata={"help": "fidelity.py's rare-word threshold (share of median corpus freq)"}
    )
    t3bench: bool = field(default=True, metadata={"help": "compute the T3Bench-style table (renders)"})
    t3bench_samples: int = field(
        default=1, metadata={"help": "samples per prompt scored on the icosphere (rendering is the cost)"}
    )
    alignment_route: str = field(
        default="evaluator",
        metadata={"help": "T3Bench alignment: evaluator (alignment dim) or caption_llm (real models)"},
    )
    ranking: T3BenchConfig = field(
        default_factory=_ranking_default, metadata={"help": "icosphere rig + aggregation for T3Bench"}
    )
    diversity: bool = field(default=True, metadata={"help": "mean pairwise Chamfer of each prompt's samples"})
    diversity_points: int = field(default=512, metadata={"help": "surface points per mesh for Chamfer"})
    save_meshes: int = field(
        default=8,
        metadata={"help": "write the D meshes of the first N prompts to meshes/<model>/ (0 = none)"},
    )
    report: bool = field(default=True, metadata={"help": "write report.html"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    targets: EvalTargets = field(default_factory=EvalTargets, metadata={"help": "acceptance targets"})

    def __post_init__(self) -> None:
        checks = [
            ("per_category", self.per_category >= 1, "must be >= 1"),
            ("max_prompts", self.max_prompts >= 0, "must be >= 0"),
            ("samples", self.samples >= 1, "must be >= 1"),
            ("generate_batch_size", self.generate_batch_size >= 1, "must be >= 1"),
            ("evaluator_batch_size", self.evaluator_batch_size >= 1, "must be >= 1"),
            ("bootstrap", self.bootstrap >= 1, "must be >= 1"),
            ("ci", 0.0 < self.ci < 1.0, "must be in (0, 1)"),
            ("neglected_quantile", 0.0 < self.neglected_quantile < 1.0, "must be in (0, 1)"),
            ("min_word_uses", self.min_word_uses >= 1, "must be >= 1"),
            ("t3bench_samples", self.t3bench_samples >= 1, "must be >= 1"),
            ("diversity_points", self.diversity_points >= 16, "must be >= 16"),
            ("save_meshes", self.save_meshes >= 0, "must be >= 0"),
            (
                "alignment_route",
                self.alignment_route in ALIGNMENT_ROUTES,
                f"must be one of {ALIGNMENT_ROUTES}",
            ),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise ValueError(f"EvalConfig.{name} {msg}, got {getattr(self, name)!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"EvalConfig.steps must be >= 1, got {self.steps}")
        check_bounds(self, at_most={"per_category": 10_000, "max_prompts": 10_000_000, "samples": 1024,
                                    "generate_batch_size": 4096, "evaluator_batch_size": 4096, "bootstrap": 100_000,
                                    "t3bench_samples": 1024, "diversity_points": 100_000, "save_meshes": 100_000,
                                    "steps": 10_000, "num_threads": 1024})  # fmt: skip
        if not 0 <= self.seed <= 2**62:
            raise ValueError(f"EvalConfig.seed must be in [0, {2**62}], got {self.seed}")
