"""The model settings the stage configs share (trl's ``ModelConfig`` pattern): one spelling, one help.

A stage config inherits the groups it uses, so the keys stay flat (``generator_weights: ...`` in YAML,
``generator_weights=...`` as an override) and mean the same in audit, eval, fine-tuning and fidelity.
A dataclass lists inherited fields from the last base to the first, so a config names its groups in
reverse (``class AuditConfig(EvaluatorSettings, GeneratorSettings)``) to start with the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EvaluatorSettings", "GeneratorSettings"]


@dataclass
class GeneratorSettings:
    """Which generator a stage runs: :class:`~debias3d.models.generator.GeneratorSpec` name and weights."""

    generator: str = field(default="mini-trellis", metadata={"help": "generator backend (registry name)"})
    generator_weights: str | None = field(
        default=None, metadata={"help": "weights folder or hub id (null: default)"}
    )


@dataclass
class EvaluatorSettings:
    """Which quality evaluator scores the meshes."""

    evaluator: str = field(
        default="shapeworld-hyperscore", metadata={"help": "evaluator backend (registry name)"}
    )
    evaluator_weights: str | None = field(
        default=None, metadata={"help": "evaluator weights (null: shipped)"}
    )
