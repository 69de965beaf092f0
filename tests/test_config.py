"""Typed YAML configs: unknown keys and wrong types are one-line errors naming file, key, type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from debias3d.config import ConfigError, describe, dump_config, load_config, to_dict


@dataclass
class Sampler:
    steps: int = field(default=25, metadata={"help": "Euler steps."})
    cfg_interval: tuple[float, float] = field(default=(0.5, 1.0), metadata={"help": "CFG on for t in here."})


@dataclass
class Cfg:
    seed: int = field(default=0, metadata={"help": "Random seed."})
    lr: float = 1e-4
    name: str = "run"
    mode: Literal["local", "global"] = "local"
    words: list[str] = field(default_factory=list)
    freq: dict[str, float] = field(default_factory=dict)
    out: str | None = None
    sampler: Sampler = field(default_factory=Sampler)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config(Cfg)
    assert cfg == Cfg()


def test_yaml_values_and_nested(tmp_path):
    p = write(tmp_path, "seed: 3\nlr: 1\nwords: [a, b]\nfreq: {spiky: 0.02}\nsampler:\n  steps: 7\n")
    cfg = load_config(Cfg, p)
    assert cfg.seed == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.words == ["a", "b"] and cfg.freq == {"spiky": 0.02}
    assert cfg.sampler.steps == 7 and cfg.sampler.cfg_interval == (0.5, 1.0)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("sede: 1\n", ["cfg.yaml", "'sede'", "unknown key", "did you mean 'seed'"]),
        ("seed: abc\n", ["cfg.yaml", "'seed'", "expected int", "got str"]),
        ("seed: true\n", ["'seed'", "expected int", "got bool"]),
        ("lr: fast\n", ["'lr'", "expected float"]),
        ("mode: both\n", ["'mode'", "one of 'local', 'global'"]),
        ("words: [1, 2]\n", ["'words[0]'", "expected str"]),
        ("sampler:\n  stepz: 3\n", ["'sampler.stepz'", "unknown key", "Sampler accepts"]),
        ("sampler:\n  cfg_interval: [0.1]\n", ["'sampler.cfg_interval'", "expected tuple"]),
        ("sampler: 3\n", ["'sampler'", "expected mapping (Sampler)"]),
        ("lr: -1\n", ["cfg.yaml", "lr must be > 0"]),
        ("- a\n- b\n", ["top level must be a mapping"]),
        ("seed: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_bad_configs_name_file_key_and_type(tmp_path, text, needles):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, p)
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_overrides_after_file(tmp_path):
    p = write(tmp_path, "seed: 3\nsampler:\n  steps: 7\n")
    cfg = load_config(Cfg, p, ["sampler.steps=11", "words=[x, y]", "out=null", "name=hello world"])
    assert cfg.sampler.steps == 11 and cfg.words == ["x", "y"] and cfg.out is None
    assert cfg.name == "hello world" and cfg.seed == 3


def test_exponent_floats_are_floats(tmp_path):
    """PyYAML reads `3e-4` as a string (YAML 1.1); float fields still take it, in files and overrides."""
    cfg = load_config(Cfg, write(tmp_path, "lr: 3e-4\nsampler:\n  cfg_interval: [5E-1, 1]\n"))
    assert cfg.lr == 3e-4 and cfg.sampler.cfg_interval == (0.5, 1.0)
    assert load_config(Cfg, None, ["lr=2e-5"]).lr == 2e-5
    with pytest.raises(ConfigError, match="expected float"):
        load_config(Cfg, None, ["lr=nan"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(Cfg, None, ["seed=1e3"])


def test_override_of_one_mapping_key_keeps_the_other_defaults(tmp_path):
    """`corpus.word_frequency.yellow=0.01` sets one key; the field's other default keys stay."""
    from debias3d.data.shapeworld.corpus import DEFAULT_WORD_FREQUENCY, CorpusConfig

    cfg = load_config(CorpusConfig, None, ["word_frequency.yellow=0.01"])
    assert cfg.word_frequency == {**DEFAULT_WORD_FREQUENCY, "yellow": 0.01}
    # a mapping given in the file is the base; the override edits it, the defaults do not return
    p = write(tmp_path, "word_frequency:\n  red: 0.5\n")
    assert load_config(CorpusConfig, p, ["word_frequency.blue=0.2"]).word_frequency == {
        "red": 0.5,
        "blue": 0.2,
    }
    # the whole mapping can still be replaced, and a nested dataclass still starts from its defaults
    assert load_config(CorpusConfig, None, ["word_frequency={red: 0.3}"]).word_frequency == {"red": 0.3}
    cfg = load_config(Cfg, None, ["freq.a=0.5", "sampler.steps=3"])
    assert cfg.freq == {"a": 0.5} and cfg.sampler == Sampler(steps=3)


def test_backbone_corpus_overrides_are_typed_and_merge():
    """train-backbone's `corpus.*` overrides build a checked CorpusConfig that keeps the skew."""
    from debias3d.data.shapeworld.corpus import DEFAULT_WORD_FREQUENCY, CorpusConfig
    from debias3d.models.backbone.train import BackboneTrainConfig

    cfg = load_config(BackboneTrainConfig, None, ["corpus.word_frequency.spiky=0.2", "corpus.n=10"])
    assert isinstance(cfg.corpus, CorpusConfig) and cfg.corpus.n == 10
    assert cfg.corpus.word_frequency == {**DEFAULT_WORD_FREQUENCY, "spiky": 0.2}
    with pytest.raises(ConfigError, match="corpus.nn"):
        load_config(BackboneTrainConfig, None, ["corpus.nn=10"])


@pytest.mark.parametrize("bad", ["sampler.steps", "nope.x=1", "sampler.steps=many"])
def test_bad_overrides(bad):
    with pytest.raises(ConfigError):
        load_config(Cfg, None, [bad])


def test_roundtrip_dump_load(tmp_path):
    cfg = load_config(Cfg, None, ["seed=9", "freq={a: 0.5}", "sampler.cfg_interval=[0.2, 0.9]"])
    path = dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Cfg, path) == cfg
    assert to_dict(cfg)["sampler"]["cfg_interval"] == [0.2, 0.9]


def test_describe_lists_nested_keys_with_help():
    rows = {r[0]: r for r in describe(Cfg)}
    assert rows["seed"][3] == "Random seed."
    assert rows["sampler.steps"][1] == "int" and rows["sampler.steps"][2] == "25"


@pytest.mark.parametrize(
    "cls_path, old, new",
    [
        ("debias3d.finetune.config:FinetuneConfig", "generator_path", "generator_weights"),
        ("debias3d.augment.config:AugmentConfig", "visual.generator_path", "visual.generator_weights"),
        ("debias3d.augment.config:AugmentConfig", "visual.ranker_path", "visual.ranker_weights"),
        ("debias3d.demo:DemoConfig", "finetune.generator_path", "finetune.generator_weights"),
    ],
)
def test_weights_have_one_spelling_and_the_old_key_still_loads(tmp_path, caplog, cls_path, old, new):
    import importlib
    import logging

    module, _, name = cls_path.partition(":")
    cls = importlib.import_module(module).__dict__[name]

    def value(cfg, dotted):
        for part in dotted.split("."):
            cfg = getattr(cfg, part)
        return cfg

    assert value(load_config(cls, overrides=[f"{new}=/w/new"]), new) == "/w/new"
    with caplog.at_level(logging.WARNING, logger="debias3d.config"):
        cfg = load_config(cls, overrides=[f"{old}=/w/old"])
    assert value(cfg, new) == "/w/old"
    warnings = [r.getMessage() for r in caplog.records if r.name == "debias3d.config"]
    assert len(warnings) == 1 and f"'{old}' is deprecated; use '{new}'" in warnings[0]
    assert "\n" not in warnings[0]
    with pytest.raises(ConfigError, match=f"give only '{new}'"):
        load_config(cls, overrides=[f"{old}=/a", f"{new}=/b"])


def test_the_stage_configs_spell_weights_alike():
    """Every stage's config names generator / evaluator / ranker weights ``<role>_weights``."""
    import dataclasses

    from debias3d.augment.config import VisualConfig
    from debias3d.bias_audit.config import AuditConfig
    from debias3d.eval.config import EvalConfig
    from debias3d.eval.fidelity import FidelityConfig
    from debias3d.finetune.config import FinetuneConfig

    for cls in (VisualConfig, AuditConfig, EvalConfig, FidelityConfig, FinetuneConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not {n for n in names if n.endswith("_path") and n.split("_")[0] in ("generator", "ranker")}
        assert "generator_weights" in names, cls
