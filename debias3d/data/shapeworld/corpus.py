"""ShapeWorld corpus: text-shape pairs with a configurable, *skewed* word coverage.

The embedded generator is trained on this corpus, so its word coverage decides the generator's
bias: frequent words are learnt, rare words are ignored, and the audit loop has to find and repair
that. A target frequency per word (share of prompts that contain it) is reached by calibrating the
grammar's word weights on a few thousand sampled specs before the corpus is drawn.

>>> ds = make_corpus(8, seed=0)
>>> sorted(ds.column_names)
['category', 'colors', 'occupancy', 'prompt', 'seed', 'spec']
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.builder import build_voxels
from debias3d.data.shapeworld.grammar import Prompt, sample_spec
from debias3d.data.shapeworld.parser import parse
from debias3d.data.shapeworld.phrasing import write_prompt
from debias3d.data.shapeworld.spec import SceneSpec

logger = logging.getLogger(__name__)

#: The words the default corpus makes rare (~0.3% of prompts each): the bias to be found.
RARE_WORDS: tuple[str, ...] = ("spiky", "narrow", "flat", "yellow", "purple", "leaning")

#: Target share of prompts for each of the :data:`RARE_WORDS` (~18 prompts in a 6000-pair corpus):
#: at 1.5% the generator still learnt several of them, so the default skew is steeper.
RARE_SHARE: float = 0.003

#: Target share of prompts containing each word. Frequent shape and colour words dominate, the
#: :data:`RARE_WORDS` are seen ~0.3% of the time; words not listed keep the grammar's own rate.
DEFAULT_WORD_FREQUENCY: dict[str, float] = {
    # colours
    "red": 0.14,
    "blue": 0.14,
    "green": 0.08,
    "white": 0.07,
    "black": 0.06,
    "orange": 0.06,
    "yellow": RARE_SHARE,
    "purple": RARE_SHARE,
    # sizes
    "small": 0.12,
    "large": 0.12,
    # modifiers
    "tall": 0.2,
    "round": 0.07,
    "long": 0.08,
    "short": 0.06,
    "wide": 0.05,
    "thick": 0.05,
    "flat": RARE_SHARE,
    "narrow": RARE_SHARE,
    "spiky": RARE_SHARE,
    # actions (action + imaginative prompts, a quarter of the corpus, always carry one)
    "floating": 0.1,
    "upside-down": 0.07,
    "lying": 0.06,
    "leaning": RARE_SHARE,
}

DEFAULT_CATEGORY_WEIGHTS: dict[str, float] = {c: 1.0 for c in vocab.CATEGORIES}


@dataclass
class CorpusConfig:
    """How to draw a ShapeWorld corpus."""

    n: int = field(default=5000, metadata={"help": "number of text-shape pairs"})
    seed: int = field(default=0, metadata={"help": "seed for prompts, jitter and calibration"})
    resolution: int = field(default=16, metadata={"help": "voxel grid resolution R (grids are R^3)"})
    word_frequency: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_WORD_FREQUENCY),
        metadata={"help": "target share of prompts containing each word (unlisted words: grammar default)"},
    )
    category_weights: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_CATEGORY_WEIGHTS),
        metadata={"help": "relative weight of each of the 8 prompt categories"},
    )
    calibration_rounds: int = field(
        default=6, metadata={"help": "weight-calibration rounds (0 = raw weights)"}
    )
    calibration_samples: int = field(default=3000, metadata={"help": "specs sampled per calibration round"})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"CorpusConfig.n: must be >= 1, got {self.n}")
        if self.resolution < 8:
            raise ValueError(f"CorpusConfig.resolution: must be >= 8, got {self.resolution}")
        unknown = set(self.word_frequency) - set(vocab.WORD_KIND) - set(vocab.NOUNS)
        if unknown:
            raise ValueError(f"CorpusConfig.word_frequency: unknown words {sorted(unknown)}")
        bad = {w: f for w, f in self.word_frequency.items() if not 0.0 <= f <= 1.0}
        if bad:
            raise ValueError(f"CorpusConfig.word_frequency: frequencies must be in [0, 1], got {bad}")
        unknown = set(self.category_weights) - set(vocab.CATEGORIES)
        if unknown:
            raise ValueError(f"CorpusConfig.category_weights: unknown categories {sorted(unknown)}")
        if any(w < 0 for w in self.category_weights.values()) or sum(self.category_weights.values()) <= 0:
            raise ValueError("CorpusConfig.category_weights: need non-negative weights with a positive sum")
        if self.calibration_rounds < 0 or self.calibration_samples < 1:
            raise ValueError("CorpusConfig.calibration_rounds/calibration_samples: must be >= 0 / >= 1")


def _spec_words(spec: SceneSpec) -> set[str]:
    return set(spec.words()) | {o.noun for o in spec.objects}


def _draw_specs(
    n: int, rng: np.random.Generator, weights: Mapping[str, float], category_weights: Mapping[str, float]
) -> list[tuple[str, SceneSpec]]:
    cats = [c for c in vocab.CATEGORIES if category_weights.get(c, 0.0) > 0]
    p = np.array([category_weights[c] for c in cats], float)
    p /= p.sum()
    out = []
    for c in rng.choice(len(cats), size=n, p=p):
        cat = cats[int(c)]
        out.append((cat, sample_spec(cat, rng, weights)))
    return out


def word_frequencies(specs: list[SceneSpec] | list[str]) -> dict[str, float]:
    """Share of specs (or spec JSON strings) that contain each word (attribute words and nouns)."""
    counts: Counter[str] = Counter()
    for s in specs:
        spec = SceneSpec.from_json(s) if isinstance(s, str) else s
        counts.update(_spec_words(spec))
    n = max(len(specs), 1)
    return {w: c / n for w, c in sorted(counts.items())}


def corpus_word_counts(prompts: Iterable[str]) -> dict[str, Any]:
    """Attribute-word counts of a corpus: ``{"n_prompts": N, "counts": {word: prompts using it}}``."""
    counts: Counter[str] = Counter()
    n = 0
    for p in prompts:
        n += 1
        try:
            words = set(parse(p).words())
        except ValueError:
            continue
        counts.update(words)
    return {"n_prompts": n, "counts": dict(sorted(counts.items()))}


def calibrate_weights(
    word_frequency: Mapping[str, float],
    category_weights: Mapping[str, float] | None = None,
    rounds: int = 6,
    samples: int = 3000,
    seed: int = 0,
) -> dict[str, float]:
    """Grammar word weights whose sampled prompts hit ``word_frequency`` (multiplicative updates).

    Returns:
        word -> weight multiplier for :func:`grammar.sample_spec`.
    """
    cw = dict(category_weights or DEFAULT_CATEGORY_WEIGHTS)
    weights = {w: 1.0 for w in word_frequency}
    rng = np.random.default_rng(seed + 7919)
    for r in range(rounds):
        freq = word_frequencies([s for _c, s in _draw_specs(samples, rng, weights, cw)])
        for w, target in word_frequency.items():
            got = freq.get(w, 0.0)
            step = (max(target, 1e-4) / max(got, 0.5 / samples)) ** 0.8
            weights[w] = float(np.clip(weights[w] * step, 1e-4, 1e4))
        logger.debug("calibration round %d: %s", r, {w: round(freq.get(w, 0.0), 3) for w in word_frequency})
    return weights


def make_corpus(
    n: int = 5000,
    seed: int = 0,
    word_frequency: Mapping[str, float] | None = None,
    category_weights: Mapping[str, float] | None = None,
    resolution: int = 16,
    calibration_rounds: int = 6,
    calibration_samples: int = 3000,
):
    """Draw ``n`` text-shape pairs as a ``datasets.Dataset``.

    Args:
        n: number of pairs.
        seed: seed for everything (same seed, same corpus).
        word_frequency: target share of prompts per word (default :data:`DEFAULT_WORD_FREQUENCY`).
        category_weights: relative category weights (default uniform).
        resolution: grid resolution R.
        calibration_rounds, calibration_samples: see :func:`calibrate_weights`.

    Returns:
        ``datasets.Dataset`` with columns ``prompt`` (str), ``category`` (str), ``spec`` (JSON str),
        ``occupancy`` (uint8, flat R^3 in [x, y, z] C order), ``colors`` (uint8, flat R^3*3) and
        ``seed`` (int64, the builder jitter seed). Reshape with
        ``np.asarray(row["occupancy"], np.uint8).reshape(R, R, R)``.
    """
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    wf = dict(DEFAULT_WORD_FREQUENCY if word_frequency is None else word_frequency)
    cw = dict(category_weights or DEFAULT_CATEGORY_WEIGHTS)
    weights = calibrate_weights(wf, cw, calibration_rounds, calibration_samples, seed) if wf else {}
    rng = np.random.default_rng(seed)
    drawn = _draw_specs(n, rng, weights, cw)
    r = resolution
    occ = np.zeros((n, r**3), np.uint8)
    col = np.zeros((n, r**3 * 3), np.uint8)
    prompts, cats, specs, seeds = [], [], [], []
    for i, (cat, spec) in enumerate(drawn):
        s = int(rng.integers(0, 2**31 - 1))
        grid = build_voxels(spec, r, np.random.default_rng(s))
        arr = grid.to_arrays()
        occ[i] = arr["occupancy"].reshape(-1)
        col[i] = arr["colors"].reshape(-1)
        prompts.append(write_prompt(spec, rng))
        cats.append(cat)
        specs.append(spec.to_json())
        seeds.append(s)
    # build the Arrow table directly: fixed-size uint8 lists, no per-element Python conversion
    table = pa.table(
        {
            "prompt": pa.array(prompts, pa.string()),
            "category": pa.array(cats, pa.string()),
            "spec": pa.array(specs, pa.string()),
            "occupancy": pa.FixedSizeListArray.from_arrays(pa.array(occ.reshape(-1)), r**3),
            "colors": pa.FixedSizeListArray.from_arrays(pa.array(col.reshape(-1)), r**3 * 3),
            "seed": pa.array(seeds, pa.int64()),
        }
    )
    ds = datasets.Dataset(InMemoryTable(table))
    realised = word_frequencies(specs)
    logger.info(
        "corpus: %d pairs; realised frequency of targeted words: %s",
        n,
        {w: round(realised.get(w, 0.0), 3) for w in wf},
    )
    return ds


def write_corpus(cfg: CorpusConfig, out_dir: str | Path):
    """Draw the corpus of ``cfg`` and ``save_to_disk`` it in ``out_dir``.

    Also writes ``out_dir/corpus_config.json`` and ``out_dir/word_frequency.json`` (target and
    realised share of prompts per word). Returns the dataset.
    """
    out = Path(out_dir)
    ds = make_corpus(
        cfg.n,
        cfg.seed,
        cfg.word_frequency,
        cfg.category_weights,
        cfg.resolution,
        cfg.calibration_rounds,
        cfg.calibration_samples,
    )
    ds.save_to_disk(str(out))
    realised = word_frequencies(list(ds["spec"]))
    (out / "corpus_config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True))
    (out / "word_frequency.json").write_text(
        json.dumps({"target": cfg.word_frequency, "realised": realised}, indent=2, sort_keys=True)
    )
    return ds


def row_to_grid(row: Mapping, resolution: int = 16):
    """Rebuild the :class:`VoxelGrid` of one corpus row."""
    from debias3d.data.assets import VoxelGrid

    r = resolution
    occ = np.asarray(row["occupancy"], np.uint8).reshape(r, r, r)
    col = np.asarray(row["colors"], np.uint8).reshape(r, r, r, 3)
    return VoxelGrid.from_arrays(occ, col)


def row_to_prompt(row: Mapping) -> Prompt:
    """The :class:`Prompt` of one corpus row."""
    return Prompt(row["prompt"], row["category"], spec=SceneSpec.from_json(row["spec"]))
