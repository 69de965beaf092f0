"""Scene specifications: the structured meaning of a ShapeWorld prompt.

A :class:`SceneSpec` is what the grammar writes from, what the parser returns, what the builder
builds and what the measurer checks against. Specs are frozen and canonical (modifiers in vocabulary
order), so ``parse(write(spec)) == spec`` is a plain equality.

>>> s = SceneSpec((ObjectSpec("vase", colour="red", modifiers=("narrow", "long")),))
>>> s.objects[0].modifiers
('long', 'narrow')
>>> SceneSpec.from_json(s.to_json()) == s
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from debias3d.data.shapeworld import vocab


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a noun and its attributes.

    Args:
        noun: one of :data:`vocab.NOUNS`.
        colour: a vocabulary colour, or ``None`` for the noun's default (non-vocabulary) colour.
        size: ``"small"``, ``"large"`` or ``None``.
        modifiers: modifier words (any order in, vocabulary order stored).
        action: an action word or ``None``.
        material: an unmeasured filler word (``"ceramic"``, ...) or ``None``.
    """

    noun: str
    colour: str | None = None
    size: str | None = None
    modifiers: tuple[str, ...] = ()
    action: str | None = None
    material: str | None = None

    def __post_init__(self) -> None:
        if self.noun not in vocab.NOUNS:
            raise ValueError(f"ObjectSpec.noun: unknown noun {self.noun!r}")
        if self.colour is not None and self.colour not in vocab.COLOURS:
            raise ValueError(f"ObjectSpec.colour: unknown colour {self.colour!r}")
        if self.size is not None and self.size not in vocab.SIZES:
            raise ValueError(f"ObjectSpec.size: unknown size {self.size!r}")
        if self.action is not None and self.action not in vocab.ACTIONS:
            raise ValueError(f"ObjectSpec.action: unknown action {self.action!r}")
        if self.material is not None and self.material not in vocab.MATERIALS:
            raise ValueError(f"ObjectSpec.material: unknown material {self.material!r}")
        mods = set(self.modifiers)
        unknown = mods - set(vocab.MODIFIERS)
        if unknown:
            raise ValueError(f"ObjectSpec.modifiers: unknown modifiers {sorted(unknown)}")
        for group in vocab.EXCLUSIVE_MODIFIERS:
            if len(mods & group) > 1:
                raise ValueError(f"ObjectSpec.modifiers: {sorted(mods & group)} exclude each other")
        canonical = tuple(m for m in vocab.MODIFIERS if m in mods)
        object.__setattr__(self, "modifiers", canonical)

    def words(self) -> list[str]:
        """Attribute words of this object (colour, size, modifiers, action), in prompt order."""
        out = [w for w in (self.size, self.colour) if w is not None]
        out += list(self.modifiers)
        if self.action is not None:
            out.append(self.action)
        return out

    def without(self, word: str) -> ObjectSpec:
        """A copy with ``word`` removed (colour, size, modifier or action)."""
        if word == self.colour:
            return replace(self, colour=None)
        if word == self.size:
            return replace(self, size=None)
        if word == self.action:
            return replace(self, action=None)
        if word in self.modifiers:
            return replace(self, modifiers=tuple(m for m in self.modifiers if m != word))
        return self

    def inapplicable(self) -> list[str]:
        """Modifier/action words the builder cannot show on this noun."""
        bad = [m for m in self.modifiers if self.noun not in vocab.MODIFIERS[m]]
        if self.action is not None and self.noun not in vocab.ACTIONS[self.action]:
            bad.append(self.action)
        return bad


@dataclass(frozen=True)
class SceneSpec:
    """A scene: one or two object specs, a count and a spatial relation.

    * single object: ``objects=(A,)``, ``count=1``, ``relation=None``
    * grouped ("two red cups"): ``objects=(A,)``, ``count in {2, 3}``, ``relation=None``
    * stacked ("three stacked bowls"): ``objects=(A,)``, ``count in {2, 3}``, ``relation="stacked"``
    * "A on top of B" / "A next to B": ``objects=(A, B)``, ``count=1``, ``relation`` set
    """

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    count: int = 1
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        objs = tuple(self.objects)
        object.__setattr__(self, "objects", objs)
        if not objs or not all(isinstance(o, ObjectSpec) for o in objs):
            raise ValueError("SceneSpec.objects: need one or two ObjectSpec")
        if self.count not in (1, *vocab.COUNTS.values()):
            raise ValueError(f"SceneSpec.count: must be 1, 2 or 3, got {self.count}")
        if self.relation is not None and self.relation not in vocab.RELATIONS:
            raise ValueError(f"SceneSpec.relation: unknown relation {self.relation!r}")
        if self.relation in ("on top of", "next to"):
            if len(objs) != 2 or self.count != 1:
                raise ValueError(f"SceneSpec: relation {self.relation!r} needs two objects and count 1")
        elif len(objs) != 1:
            raise ValueError("SceneSpec.objects: several objects need a relation 'on top of' or 'next to'")
        if self.relation == "stacked" and self.count < 2:
            raise ValueError("SceneSpec: 'stacked' needs count 2 or 3")

    @property
    def n_instances(self) -> int:
        """How many objects the scene shows (count for groups, 2 for relations)."""
        return self.count if len(self.objects) == 1 else len(self.objects)

    def instances(self) -> list[ObjectSpec]:
        """One ObjectSpec per shown object (a group repeats its object)."""
        return list(self.objects) * (self.count if len(self.objects) == 1 else 1)

    def words(self) -> list[str]:
        """All attribute words: per-object words, count word, relation phrase."""
        out: list[str] = []
        if self.count > 1:
            out.append(vocab.COUNT_WORDS[self.count])
        for o in self.objects:
            out += o.words()
        if self.relation is not None:
            out.append(self.relation)
        return out

    def without(self, word: str, object_index: int | None = None) -> SceneSpec:
        """A copy with ``word`` removed from one object (or all objects when index is None)."""
        objs = tuple(
            o.without(word) if object_index is None or i == object_index else o
            for i, o in enumerate(self.objects)
        )
        return replace(self, objects=objs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [{k: v for k, v in asdict(o).items()} for o in self.objects],
            "relation": self.relation,
            "count": self.count,
        }

    def to_json(self) -> str:
        """Compact JSON (the corpus ``spec`` column)."""
        d = self.to_dict()
        for o in d["objects"]:
            o["modifiers"] = list(o["modifiers"])
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        objs = tuple(ObjectSpec(**{**o, "modifiers": tuple(o.get("modifiers", ()))}) for o in d["objects"])
        return cls(objs, relation=d.get("relation"), count=int(d.get("count", 1)))

    @classmethod
    def from_json(cls, text: str) -> SceneSpec:
        return cls.from_dict(json.loads(text))
