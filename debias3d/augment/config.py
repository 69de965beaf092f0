"""Typed config of the augmentation stage (``debias3d augment --config configs/shapeworld/augment.yaml``).

``AugmentConfig`` nests one sub-config per concern: ``llm`` (semantic augmentation backend),
``filter`` (automatic filtering, which replaces the paper's manual step) and ``visual`` (external
generator + reward ranker, Algorithm 1). Every field has a default and a help line; bad values are
rejected in ``__post_init__`` with a message that names the field.

>>> cfg = AugmentConfig()
>>> cfg.contexts, cfg.llm.backend, cfg.visual.backend, cfg.visual.ranking.level
(5, 'template', 'shapeworld', 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from debias3d.models.ranker.t3bench import T3BenchConfig

__all__ = ["AugmentConfig", "LLMConfig", "FilterConfig", "VisualConfig", "STRATEGIES"]

STRATEGIES = ("both", "only_wh", "only_wl", "random_words")
MAX_CONTEXTS = 100  # new prompts per source in one LLM answer


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {message}")


def _at_most(value: float, name: str, upper: float) -> None:
    _check(value <= upper, name, f"must be <= {upper}, got {value}")


@dataclass
class LLMConfig:
    """Context-writer backend (registry kind ``llm``)."""

    backend: str = field(
        default="template", metadata={"help": "llm backend: template (offline grammar) or openai"}
    )
    model: str = field(default="gpt-4o-mini", metadata={"help": "openai: model name sent to the endpoint"})
    base_url: str = field(default="", metadata={"help": "openai: endpoint root (empty = api.openai.com)"})
    timeout_s: float = field(default=60.0, metadata={"help": "openai: per-request timeout (s)"})
    max_retries: int = field(default=4, metadata={"help": "openai: retries on timeout/429/5xx"})
    backoff_base_s: float = field(
        default=1.0, metadata={"help": "openai: first retry delay, doubled each retry (s)"}
    )
    backoff_max_s: float = field(default=30.0, metadata={"help": "openai: retry delay cap (s)"})
    concurrency: int = field(default=8, metadata={"help": "openai: requests in flight at once"})
    temperature: float = field(default=0.9, metadata={"help": "openai: sampling temperature"})
    max_tokens: int = field(default=800, metadata={"help": "openai: completion token limit"})
    max_words: int = field(default=25, metadata={"help": "openai: word limit stated in the prompt template"})
    price_input_per_1m: float = field(default=0.15, metadata={"help": "openai: cost per 1M input tokens"})
    price_output_per_1m: float = field(default=0.60, metadata={"help": "openai: cost per 1M output tokens"})
    prompt_template: str = field(
        default="",
        metadata={
            "help": "openai: user-message template ({prompt} {words} {n} {max_words}); empty = built-in"
        },
    )
    require_api_key: bool = field(
        default=True, metadata={"help": "openai: fail when OPENAI_API_KEY is unset"}
    )
    template_tries: int = field(default=60, metadata={"help": "template: candidate specs tried per prompt"})

    def __post_init__(self) -> None:
        _check(bool(self.backend), "llm.backend", "must not be empty")
        _check(self.timeout_s > 0, "llm.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.max_retries >= 0, "llm.max_retries", f"must be >= 0, got {self.max_retries}")
        _check(self.backoff_base_s >= 0, "llm.backoff_base_s", f"must be >= 0, got {self.backoff_base_s}")
        _check(self.backoff_max_s >= 0, "llm.backoff_max_s", f"must be >= 0, got {self.backoff_max_s}")
        _check(self.concurrency >= 1, "llm.concurrency", f"must be >= 1, got {self.concurrency}")
        _check(self.max_tokens >= 1, "llm.max_tokens", f"must be >= 1, got {self.max_tokens}")
        _check(self.template_tries >= 1, "llm.template_tries", f"must be >= 1, got {self.template_tries}")
        _check(
            self.price_input_per_1m >= 0 and self.price_output_per_1m >= 0,
            "llm.price_*_per_1m",
            "must be >= 0",
        )
        _at_most(self.timeout_s, "llm.timeout_s", 3600)
        _at_most(self.max_retries, "llm.max_retries", 20)
        _at_most(self.backoff_max_s, "llm.backoff_max_s", 600)
        _at_most(self.concurrency, "llm.concurrency", 256)
        _at_most(self.max_tokens, "llm.max_tokens", 200_000)
        _at_most(self.max_words, "llm.max_words", 1000)
        _at_most(self.template_tries, "llm.template_tries", 100_000)


@dataclass
class FilterConfig:
    """Automatic filter of candidate prompts (each rejection goes to ``rejected.jsonl`` with a reason)."""

    require_words: bool = field(
        default=True, metadata={"help": "reject a prompt that lacks a kept word (w_h / w_l)"}
    )
    min_words: int = field(default=2, metadata={"help": "reject prompts with fewer words"})
    max_words: int = field(default=30, metadata={"help": "reject prompts with more words"})
    max_chars: int = field(default=240, metadata={"help": "reject prompts with more characters"})
    near_duplicate_threshold: float = field(
        default=0.95,
        metadata={"help": "reject when sentence-embedding cosine to another prompt exceeds this"},
    )
    text_encoder: str = field(
        default="minilm", metadata={"help": "text encoder for near duplicates and diversity"}
    )
    check_vocabulary: bool = field(
        default=True, metadata={"help": "world=shapeworld: reject words the ShapeWorld grammar does not know"}
    )
    check_buildable: bool = field(
        default=True, metadata={"help": "world=shapeworld: reject prompts the builder cannot show faithfully"}
    )
    dedupe_across_sources: bool = field(
        default=True,
        metadata={"help": "reject exact duplicates of prompts accepted for earlier source prompts"},
    )

    def __post_init__(self) -> None:
        _check(self.min_words >= 1, "filter.min_words", f"must be >= 1, got {self.min_words}")
        _check(self.max_words >= self.min_words, "filter.max_words", "must be >= filter.min_words")
        _check(self.max_chars >= 1, "filter.max_chars", f"must be >= 1, got {self.max_chars}")
        _check(
            0.0 < self.near_duplicate_threshold <= 1.0,
            "filter.near_duplicate_threshold",
            f"must be in (0, 1], got {self.near_duplicate_threshold}",
        )
        _at_most(self.max_words, "filter.max_words", 1000)
        _at_most(self.max_chars, "filter.max_chars", 100_000)


def _ranking_default() -> T3BenchConfig:
    # Reduced T3Bench rig for CPU runs: 12 icosahedron cameras, one field of view.
    return T3BenchConfig(level=0, fovs=(math.pi / 3,))


@dataclass
class VisualConfig:
    """Visual augmentation: external generator + reward ranker (Algorithm 1)."""

    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "generator_path": "generator_weights",
        "ranker_path": "ranker_weights",
    }

    backend: str = field(
        default="shapeworld", metadata={"help": "external generator: shapeworld, generator or command"}
    )
    generator: str = field(
        default="mini-trellis", metadata={"help": "backend=generator: registered generator name"}
    )
    generator_weights: str = field(
        default="", metadata={"help": "backend=generator: weights folder (empty = shipped)"}
    )
    generator_steps: int = field(
        default=0, metadata={"help": "backend=generator: sampler steps (0 = default)"}
    )
    command: str = field(
        default="", metadata={"help": "backend=command: command template with {prompt}, {out} and {seed}"}
    )
    command_timeout_s: float = field(
        default=600.0, metadata={"help": "backend=command: timeout per item (s)"}
    )
    mesh_resolution: int = field(default=48, metadata={"help": "backend=shapeworld: meshing resolution"})
    resolution: int = field(default=16, metadata={"help": "voxel resolution stored in the dataset"})
    seed_offset: int = field(
        default=1, metadata={"help": "added to each item's seed (a new seed, not the audit's)"}
    )
    ranker: str = field(
        default="shapeworld", metadata={"help": "reward ranker backend (registry kind ranker)"}
    )
    ranker_weights: str = field(default="", metadata={"help": "ranker weights (empty = shipped)"})
    ranking: T3BenchConfig = field(
        default_factory=_ranking_default, metadata={"help": "T3Bench-style view aggregation (reduced rig)"}
    )
    margin: float = field(default=0.0, metadata={"help": "x_nc wins when score_new > score_orig + margin"})
    pair_new_prompt: bool = field(
        default=True, metadata={"help": "a winning x_nc makes the pair {x_nc, t_nc}"}
    )
    pair_source_prompt: bool = field(
        default=True, metadata={"help": "a winning x_nc makes the many-to-many pair {x_nc, t_n}"}
    )
    keep_losers: bool = field(default=False, metadata={"help": "also write losing x_nc rows (winner=False)"})

    def __post_init__(self) -> None:
        _check(bool(self.backend), "visual.backend", "must not be empty")
        _check(
            self.command_timeout_s > 0,
            "visual.command_timeout_s",
            f"must be > 0, got {self.command_timeout_s}",
        )
        _check(self.resolution >= 4, "visual.resolution", f"must be >= 4, got {self.resolution}")
        _check(
            self.generator_steps >= 0, "visual.generator_steps", f"must be >= 0, got {self.generator_steps}"
        )
        _at_most(self.command_timeout_s, "visual.command_timeout_s", 7 * 86400)
        _at_most(self.resolution, "visual.resolution", 128)
        _check(
            8 <= self.mesh_resolution <= 512,
            "visual.mesh_resolution",
            f"must be in [8, 512], got {self.mesh_resolution}",
        )
        _at_most(self.generator_steps, "visual.generator_steps", 10_000)
        if self.backend == "command":
            _check(bool(self.command.strip()), "visual.command", "backend=command needs a command template")
            _check("{out}" in self.command, "visual.command", "the template must contain {out}")


@dataclass
class AugmentConfig:
    """Semantic + visual augmentation of an audit (``debias3d augment``)."""

    world: str = field(default="shapeworld", metadata={"help": "shapeworld (vocabulary checks on) or open"})
    strategy: str = field(
        default="both", metadata={"help": "kept words: both, only_wh, only_wl, random_words"}
    )
    contexts: int = field(default=5, metadata={"help": "C: new prompts written per source prompt"})
    seed: int = field(default=0, metadata={"help": "global seed; every item derives its own from it"})
    original: str = field(default="first", metadata={"help": "x_n among the audit samples: first or best"})
    original_score: str = field(
        default="overall", metadata={"help": "original=best: the score_<dim> to maximise"}
    )
    max_prompts: int = field(default=0, metadata={"help": "augment only the first N audit prompts (0 = all)"})
    random_words: int = field(default=2, metadata={"help": "strategy=random_words: words picked per prompt"})
    num_threads: int = field(
        default=0, metadata={"help": "torch intra-op threads per process (0 = torch default)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    report: bool = field(default=True, metadata={"help": "write report.html"})
    report_examples: int = field(
        default=12, metadata={"help": "accepted/rejected examples shown in the report"}
    )
    thumbnail_size: int = field(default=96, metadata={"help": "report thumbnail size (px)"})
    llm: LLMConfig = field(default_factory=LLMConfig, metadata={"help": "semantic augmentation backend"})
    filter: FilterConfig = field(default_factory=FilterConfig, metadata={"help": "automatic filter"})
    visual: VisualConfig = field(default_factory=VisualConfig, metadata={"help": "visual augmentation"})

    def __post_init__(self) -> None:
        _check(
            self.world in ("shapeworld", "open"), "world", f"must be shapeworld or open, got {self.world!r}"
        )
        _check(
            self.strategy in STRATEGIES,
            "strategy",
            f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
        )
        _check(self.contexts >= 1, "contexts", f"must be >= 1, got {self.contexts}")
        _check(
            self.original in ("first", "best"), "original", f"must be first or best, got {self.original!r}"
        )
        _check(self.max_prompts >= 0, "max_prompts", f"must be >= 0, got {self.max_prompts}")
        _check(self.num_threads >= 0, "num_threads", f"must be >= 0, got {self.num_threads}")
        _check(self.random_words >= 1, "random_words", f"must be >= 1, got {self.random_words}")
        _check(self.report_examples >= 0, "report_examples", f"must be >= 0, got {self.report_examples}")
        _check(self.thumbnail_size >= 16, "thumbnail_size", f"must be >= 16, got {self.thumbnail_size}")
        # upper bounds: a typo like contexts=100000000 must not start an endless job
        _at_most(self.contexts, "contexts", MAX_CONTEXTS)
        _at_most(self.max_prompts, "max_prompts", 10_000_000)
        _at_most(self.random_words, "random_words", 64)
        _at_most(self.num_threads, "num_threads", 1024)
        _at_most(self.report_examples, "report_examples", 1000)
        _at_most(self.thumbnail_size, "thumbnail_size", 1024)
