"""``AuditConfig``: every knob of ``debias3d audit`` (YAML: ``configs/shapeworld/audit.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AuditConfig", "AttributionConfig", "ViewContradictionConfig", "DIMENSIONS"]

DIMENSIONS: tuple[str, ...] = ("alignment", "geometry", "texture", "overall")
_METHODS = ("grad", "grad_x_input", "integrated_gradients")


MAX_SAMPLES = 1024  # D, meshes per prompt
MAX_SEED = 2**62  # leaves room for seed + d under the 64-bit limit of torch / numpy seeds


@dataclass
class AttributionConfig:
    """Bias quantization: which score is back-propagated and how tokens become words."""

    methods: tuple[str, ...] = field(
        default=("grad", "grad_x_input", "integrated_gradients"),
        metadata={
            "help": "attribution methods to run: grad (the paper's), grad_x_input, integrated_gradients"
        },
    )
    primary: str = field(default="grad", metadata={"help": "method that picks w_h / w_l and the word table"})
    target: str = field(default="local", metadata={"help": "score to attribute: local (q_l) or global (q_g)"})
    dimension: str = field(default="overall", metadata={"help": "evaluator dimension to attribute"})
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
        metadata={"help": "words never chosen as w_l (default: English + ShapeWorld stop words)"},
    )
    extra_stop_words: tuple[str, ...] = field(default=(), metadata={"help": "added to the stop-word list"})
    deletion_k: int = field(default=1, metadata={"help": "k of the top-k vs bottom-k deletion test"})

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        for m in self.methods:
            if m not in _METHODS:
                raise ValueError(
                    f"AttributionConfig.methods: unknown method {m!r}; expected {', '.join(_METHODS)}"
                )
        if not self.methods:
            raise ValueError("AttributionConfig.methods must not be empty")
        if self.primary not in self.methods:
            raise ValueError(
                f"AttributionConfig.primary {self.primary!r} must be one of methods {self.methods}"
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
        for name in ("n_steps", "batch_size", "internal_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"AttributionConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name, upper in (
            ("n_steps", 1024),
            ("batch_size", 4096),
            ("internal_batch_size", 65536),
            ("deletion_k", 100),
        ):
            value = getattr(self, name)
            if value is not None and value > upper:
                raise ValueError(f"AttributionConfig.{name} must be <= {upper}, got {value}")
        if self.deletion_k < 0:
            raise ValueError(f"AttributionConfig.deletion_k must be >= 0, got {self.deletion_k}")
        if self.stop_words is not None:
            self.stop_words = tuple(self.stop_words)
        self.extra_stop_words = tuple(self.extra_stop_words)


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
class AuditConfig:
    """Bias audit: localize (generate D samples, score), quantize (attribute), report."""

    generator: str = field(default="mini-trellis", metadata={"help": "generator backend (registry name)"})
    generator_weights: str | None = field(
        default=None, metadata={"help": "generator weights folder (default: shipped)"}
    )
    evaluator: str = field(
        default="shapeworld-hyperscore", metadata={"help": "evaluator backend (registry name)"}
    )
    evaluator_weights: str | None = field(
        default=None, metadata={"help": "evaluator weights folder (default: shipped)"}
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
        # upper bounds: a typo like samples=100000000 must not grow memory until the machine stops
        for name, upper in (
            ("samples", MAX_SAMPLES),
            ("generate_batch_size", 4096),
            ("ground_truth_k", 1000),
            ("steps", 10_000),
            ("max_tokens", 100_000),
            ("num_threads", 1024),
        ):
            value = getattr(self, name)
            if value is not None and value > upper:
                raise ValueError(f"AuditConfig.{name} must be <= {upper}, got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            # sample d uses seed + d, and torch / numpy seeds must fit in 64 bits
            raise ValueError(f"AuditConfig.seed must be in [0, {MAX_SEED}], got {self.seed}")
