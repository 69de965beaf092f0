"""``AuditConfig``: every knob of ``debias3d audit`` (YAML: ``configs/shapeworld/audit.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from debias3d.config import check_bounds
from debias3d.models.settings import EvaluatorSettings, GeneratorSettings

__all__ = ["AuditConfig", "AttributionConfig", "ProbeConfig", "ViewContradictionConfig", "DIMENSIONS"]

DIMENSIONS: tuple[str, ...] = ("alignment", "geometry", "texture", "overall")
GRADIENT_METHODS: tuple[str, ...] = ("grad", "grad_x_input", "integrated_gradients")
PROBE_METHODS: tuple[str, ...] = ("occlusion", "contrastive", "choice")
_METHODS = GRADIENT_METHODS + PROBE_METHODS
PROPOSERS: tuple[str, ...] = ("shapeworld", "wordlist", "mlm", "llm")
#: Methods by agreement with ShapeWorld ground truth, best first (benchmarks/attribution_truth.py);
#: ``select`` defaults to the first one that is run.
SELECT_ORDER: tuple[str, ...] = (
    "contrastive",
    "choice",
    "occlusion",
    "grad",
    "grad_x_input",
    "integrated_gradients",
)


@dataclass
class ProbeConfig:
    """Counterfactual word probes (``occlusion``, ``contrastive``, ``choice``) and their substitute proposer."""

    proposer: str = field(
        default="shapeworld",
        metadata={
            "help": "substitutes for contrastive and choice: shapeworld, wordlist, mlm or llm (registry name)"
        },
    )
    k: int = field(default=4, metadata={"help": "alternatives per word (contrastive, choice)"})
    wordlist: str | None = field(
        default=None, metadata={"help": "YAML {class: [words]} for the wordlist proposer"}
    )
    mlm_path: str = field(default="", metadata={"help": "local masked-LM folder for the mlm proposer"})
    llm_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible endpoint (llm proposer)"}
    )
    llm_model: str = field(default="gpt-4o-mini", metadata={"help": "model name (llm proposer)"})
    llm_cache: str | None = field(
        default=None, metadata={"help": "answer cache folder (llm proposer; default: OUT/substitutes_cache)"}
    )
    llm_timeout_s: float = field(default=30.0, metadata={"help": "request timeout (llm proposer)"})
    occlusion_dimension: str = field(
        default="overall", metadata={"help": "score whose drop occlusion measures"}
    )
    contrastive_dimension: str = field(
        default="alignment", metadata={"help": "score whose drop the contrastive probe measures"}
    )
    choice_dimension: str = field(
        default="alignment", metadata={"help": "score the choice probe's forced choice is made on"}
    )
    temperature: float = field(
        default=0.05,
        metadata={"help": "softmax temperature of the choice probe, in score units (chosen on a tuning set)"},
    )
    threshold: float = field(
        default=0.0,
        metadata={"help": "score drop above which a word counts as shown (occlusion, contrastive verdicts)"},
    )
    choice_threshold: float | None = field(
        default=None,
        metadata={"help": "choice probability above which a word counts as shown (default: chance, 1/(K+1))"},
    )
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples of the intervals"})
    ci: float = field(default=0.9, metadata={"help": "interval level"})
    internal_batch_size: int = field(default=512, metadata={"help": "prompt variants per evaluator forward"})

    def __post_init__(self) -> None:
        if self.proposer not in PROPOSERS:
            raise ValueError(
                f"ProbeConfig.proposer must be one of {', '.join(PROPOSERS)}, got {self.proposer!r}"
            )
        for name in ("occlusion_dimension", "contrastive_dimension", "choice_dimension"):
            if getattr(self, name) not in DIMENSIONS:
                raise ValueError(
                    f"ProbeConfig.{name} must be one of {', '.join(DIMENSIONS)}, got {getattr(self, name)!r}"
                )
        for name in ("k", "n_boot", "internal_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.ci < 1.0:
            raise ValueError(f"ProbeConfig.ci must be in (0, 1), got {self.ci}")
        if self.proposer == "wordlist" and not self.wordlist:
            raise ValueError("ProbeConfig.wordlist must name a YAML file when proposer is wordlist")
        if not self.temperature > 0:
            raise ValueError(f"ProbeConfig.temperature must be > 0, got {self.temperature}")
        if self.choice_threshold is not None and not 0.0 < self.choice_threshold < 1.0:
            raise ValueError(f"ProbeConfig.choice_threshold must be in (0, 1), got {self.choice_threshold}")
        if self.llm_timeout_s <= 0:
            raise ValueError(f"ProbeConfig.llm_timeout_s must be > 0, got {self.llm_timeout_s}")

    def dimension_of(self, method: str) -> str:
        """The evaluator dimension probe ``method`` reads."""
        return {
            "occlusion": self.occlusion_dimension,
            "contrastive": self.contrastive_dimension,
            "choice": self.choice_dimension,
        }[method]

    def threshold_of(self, method: str) -> float | None:
        """The verdict threshold of probe ``method`` (``None``: each word's chance, ``choice`` only)."""
        return self.choice_threshold if method == "choice" else self.threshold


MAX_SAMPLES = 1024  # D, meshes per prompt
MAX_SEED = 2**62  # leaves room for seed + d under the 64-bit limit of torch / numpy seeds


@dataclass
class AttributionConfig:
    """Bias quantization: which methods score each word and which one picks w_h / w_l."""

    methods: tuple[str, ...] = field(
        default=("grad", "grad_x_input", "integrated_gradients", "occlusion", "contrastive"),
        metadata={
            "help": "methods to run: grad (the paper's), grad_x_input, integrated_gradients, "
            "occlusion, contrastive, choice (word probes)"
        },
    )
    select: str | None = field(
        default=None,
        metadata={
            "help": "method that picks w_h / w_l (and the augment targets); default: of the methods run, "
            "the one that agrees best with ShapeWorld ground truth (SELECT_ORDER, BENCHMARKS.md)"
        },
    )
    target: str = field(default="local", metadata={"help": "score to attribute: local (q_l) or global (q_g)"})
    dimension: str = field(
        default="overall", metadata={"help": "evaluator dimension the gradients attribute"}
    )
    aggregate: str = field(default="sum", metadata={"help": "sub-word pieces -> word: sum or mean"})
    n_steps: int = field(default=32, metadata={"help": "integrated-gradients quadrature points"})
    baseline: str = field(default="pad", metadata={"help": "integrated-gradients reference: pad or zeros"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward + backward"})
    internal_batch_size: int = field(
        default=256,
        metadata={"help": "max evaluator rows (prompt x step) per forward for integrated gradients"},
    )
    stop_words: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "words never chosen as w_h / w_l (default: English + ShapeWorld stop words)"},
    )
    extra_stop_words: tuple[str, ...] = field(default=(), metadata={"help": "added to the stop-word list"})
    deletion_k: int = field(default=1, metadata={"help": "k of the top-k vs bottom-k deletion test"})
    probes: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "word probes"})

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        for m in self.methods:
            if m not in _METHODS:
                raise ValueError(
                    f"AttributionConfig.methods: unknown method {m!r}; expected {', '.join(_METHODS)}"
                )
        if not self.methods:
            raise ValueError("AttributionConfig.methods must not be empty")
        if self.select is None:
            self.select = next(m for m in SELECT_ORDER if m in self.methods)
        if self.select not in self.methods:
            raise ValueError(
                f"AttributionConfig.select {self.select!r} must be one of methods {self.methods}"
            )
        if self.target not in ("local", "global"):
            raise ValueError(f"AttributionConfig.target must be local or global, got {self.target!r}")
        if self.dimension not in DIMENSIONS:
            raise ValueError(
                f"AttributionConfig.dimension must be one of {', '.join(DIMENSIONS)}, got {self.dimension!r}"
            )
        if self.aggregate not in ("sum", "mean"):
            raise ValueError(f"AttributionConfig.aggregate must be sum or mean, got {self.aggregate!r}")
        if self.baseline not in ("pad", "zeros"):
            raise ValueError(f"AttributionConfig.baseline must be pad or zeros, got {self.baseline!r}")
        check_bounds(
            self,
            ("n_steps", "batch_size", "internal_batch_size"),
            {"n_steps": 1024, "batch_size": 4096, "internal_batch_size": 65536, "deletion_k": 100},
        )
        if self.deletion_k < 0:
            raise ValueError(f"AttributionConfig.deletion_k must be >= 0, got {self.deletion_k}")
        if self.stop_words is not None:
            self.stop_words = tuple(self.stop_words)
        self.extra_stop_words = tuple(self.extra_stop_words)

    @property
    def gradient_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m in GRADIENT_METHODS)

    @property
    def probe_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m in PROBE_METHODS)


@dataclass
class ViewContradictionConfig:
    """D-SDS prompt debiasing (``--view-contradictions``), appendix C.3 settings by default."""

    enabled: bool = field(default=False, metadata={"help": "run the view-contradiction (PMI) audit"})
    mlm_path: str = field(
        default="", metadata={"help": "local folder of bert-base-uncased (BertForMaskedLM)"}
    )
    views: tuple[str, ...] = field(default=("front", "back", "side", "top"), metadata={"help": "view words"})
    template: str = field(
        default="This image is depicting a {mask} view of {prompt}", metadata={"help": "MLM template"}
    )
    threshold: float = field(default=0.95, metadata={"help": "flag words whose PMI for a view is below this"})
    faithfulness: float = field(default=0.5, metadata={"help": "P(u) of ordinary words"})
    protected: tuple[str, ...] = field(default=(), metadata={"help": "words with P(u) = 1 (never flagged)"})

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        self.protected = tuple(self.protected)
        if not 0.0 < self.faithfulness <= 1.0:
            raise ValueError(
                f"ViewContradictionConfig.faithfulness must be in (0, 1], got {self.faithfulness}"
            )
        if self.threshold <= 0:
            raise ValueError(f"ViewContradictionConfig.threshold must be > 0, got {self.threshold}")
        if not self.views:
            raise ValueError("ViewContradictionConfig.views must not be empty")


@dataclass
class AuditConfig(EvaluatorSettings, GeneratorSettings):
    """Bias audit: localize (generate D samples, score), quantize (attribute), report."""

    generator_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "backend options for the generator (trellis: export, simplify, ...; docs/trellis.md)"
        },
    )
    samples: int = field(default=4, metadata={"help": "D, meshes generated per prompt"})
    seed: int = field(default=0, metadata={"help": "base seed; sample d of a prompt uses seed + d"})
    steps: int | None = field(
        default=None, metadata={"help": "generator sampler steps (default: the model's)"}
    )
    generate_batch_size: int = field(
        default=64, metadata={"help": "prompt x sample items per generator batch"}
    )
    mesh_format: str = field(default="glb", metadata={"help": "mesh files written to meshes/ (glb)"})
    max_tokens: int | None = field(
        default=None, metadata={"help": "prompt token limit (default: the text encoder's)"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device (accelerate picks one per process)"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    ground_truth: str = field(
        default="auto",
        metadata={"help": "ShapeWorld ground-truth agreement: auto (if prompts parse), on, off"},
    )
    ground_truth_k: int = field(default=5, metadata={"help": "k lowest-fidelity words checked against w_l"})
    fidelity_table: str | None = field(
        default=None,
        metadata={
            "help": "words.csv/parquet (word, fidelity) or a `world fidelity` folder; default: measured on the samples"
        },
    )
    heatmaps: bool = field(default=True, metadata={"help": "write per-prompt PNG + SVG heatmaps"})
    report: bool = field(default=True, metadata={"help": "write report.html"})
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    view_contradictions: ViewContradictionConfig = field(default_factory=ViewContradictionConfig)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"AuditConfig.samples must be >= 1, got {self.samples}")
        if self.generate_batch_size < 1:
            raise ValueError(f"AuditConfig.generate_batch_size must be >= 1, got {self.generate_batch_size}")
        if self.mesh_format != "glb":
            raise ValueError(f"AuditConfig.mesh_format must be glb, got {self.mesh_format!r}")
        if self.ground_truth not in ("auto", "on", "off"):
            raise ValueError(f"AuditConfig.ground_truth must be auto, on or off, got {self.ground_truth!r}")
        if self.ground_truth_k < 1:
            raise ValueError(f"AuditConfig.ground_truth_k must be >= 1, got {self.ground_truth_k}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"AuditConfig.steps must be >= 1, got {self.steps}")
        check_bounds(self, at_most={"samples": MAX_SAMPLES, "generate_batch_size": 4096, "ground_truth_k": 1000,
                                    "steps": 10_000, "max_tokens": 100_000, "num_threads": 1024})  # fmt: skip
        if not 0 <= self.seed <= MAX_SEED:
            # sample d uses seed + d, and torch / numpy seeds must fit in 64 bits
            raise ValueError(f"AuditConfig.seed must be in [0, {MAX_SEED}], got {self.seed}")
