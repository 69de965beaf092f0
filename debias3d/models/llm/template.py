"""Offline context writer (registry: ``llm`` / ``template``): new contexts from the ShapeWorld grammar.

It stands where the paper's GPT-4 stood, and every prompt it writes stays buildable by the
ShapeWorld builder, so the visual augmentation always has a ground-truth shape.

How a context is written (one candidate per try, deterministic for ``seed``):

1. parse the source prompt into a :class:`~debias3d.data.shapeworld.spec.SceneSpec`;
2. pick the *anchor* object (the one holding most kept words; both objects when the kept words
   span a relation);
3. pick a new *frame* for it: alone, a group of two/three, next to another object, on top of /
   under another object, stacked, or with an action; kept count/relation words fix the frame;
4. re-roll every attribute that is not kept (colour, size, extra modifiers, material, and, when
   the noun itself is not kept, the noun among those that can carry the kept words);
5. keep the candidate when the builder can show it (``scene_problems`` is empty), its text contains
   every kept word (lemmatised) and it is new.

>>> w = TemplateContextWriter()
>>> r = w.write("a red vase with a long neck", ["vase", "long"], n=3, seed=0)
>>> len(r.prompts), all("vase" in p.lower() and "long" in p for p in r.prompts)
(3, True)
>>> w.write("a red vase with a long neck", ["vase", "long"], n=3, seed=0).prompts == r.prompts
True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from debias3d.data.text import lemma, missing_words
from debias3d.models.llm.base import ContextWriterBase, LLMResult
from debias3d.registry import register

__all__ = ["TemplateContextWriter"]

logger = logging.getLogger(__name__)

FRAMES = ("single", "single", "group", "next to", "on top of", "stacked", "action")


@register("llm", "template")
class TemplateContextWriter(ContextWriterBase):
    """Grammar-based context writer over the ShapeWorld vocabulary.

    Args:
        tries_per_prompt: candidate specs tried per requested prompt before giving up (default 60).
        extra_modifier_prob: chance to add one non-kept modifier to an object (default 0.4).
        noun_swap_prob: chance to change a noun that is not kept (default 0.4).
    """

    name = "template"
    answer_settings = ("tries_per_prompt", "extra_modifier_prob", "noun_swap_prob")

    def __init__(
        self, tries_per_prompt: int = 60, extra_modifier_prob: float = 0.4, noun_swap_prob: float = 0.4
    ):
        if tries_per_prompt < 1:
            raise ValueError(f"tries_per_prompt must be >= 1, got {tries_per_prompt}")
        self.tries_per_prompt = int(tries_per_prompt)
        self.extra_modifier_prob = float(extra_modifier_prob)
        self.noun_swap_prob = float(noun_swap_prob)

    @classmethod
    def from_config(cls, cfg: Any) -> TemplateContextWriter:
        """Build from an ``LLMConfig`` (uses ``template_tries``)."""
        return cls(tries_per_prompt=cfg.template_tries)

    # ------------------------------------------------------------------------------------ API
    def write(self, prompt: str, keep_words: Sequence[str], n: int, seed: int) -> LLMResult:
        """Write up to ``n`` new ShapeWorld prompts containing every word of ``keep_words``."""
        from debias3d.data.shapeworld.builder import scene_problems
        from debias3d.data.shapeworld.parser import ParseError, parse
        from debias3d.data.shapeworld.phrasing import write_prompt

        try:
            spec = parse(prompt)
        except ParseError as err:
            return LLMResult(error=f"template: source prompt is not a ShapeWorld prompt: {err}")
        keep = [lemma(w) if " " not in w else w.lower() for w in keep_words]
        rng = np.random.default_rng(seed)
        seen = {" ".join(prompt.lower().split())}
        out: list[str] = []
        tries = 0
        for tries in range(1, self.tries_per_prompt * max(n, 1) + 1):  # noqa: B007 — tries is reported
            if len(out) >= n:
                break
            cand = self._candidate(spec, keep, rng)
            if cand is None or scene_problems(cand):
                continue
            text = write_prompt(cand, rng)
            key = " ".join(text.lower().split())
            if key in seen or missing_words(text, keep):
                continue
            seen.add(key)
            out.append(text)
        error = None if out else f"template: no buildable context keeps {keep} after {tries} tries"
        raw = f"{len(out)} prompts from {tries} tries"
        return LLMResult(prompts=out, raw=raw, error=error)

    # ------------------------------------------------------------------------------ internals
    def _candidate(self, spec: Any, keep: list[str], rng: np.random.Generator) -> Any:
        from debias3d.data.shapeworld import vocab
        from debias3d.data.shapeworld.spec import SceneSpec

        kset = set(keep)
        objs = list(spec.objects)

        def held(o: Any) -> set[str]:
            ws = {o.noun, *o.words()} | ({o.material} if o.material else set())
            return ws & kset

        kept_relation = next((r for r in vocab.RELATIONS if r in kset), None)
        kept_count = next((vocab.COUNTS[c] for c in vocab.COUNTS if c in kset), None)
        if len(objs) == 2 and (
            kept_relation in ("on top of", "next to") or (held(objs[0]) and held(objs[1]))
        ):
            a, b = (self._reroll(o, held(o), rng) for o in objs)
            if a is None or b is None:
                return None
            rel = kept_relation or spec.relation
            if rel not in ("on top of", "next to"):
                rel = "next to"
            try:
                return SceneSpec((a, b), relation=rel)
            except ValueError:
                return None
        anchor = max(objs, key=lambda o: len(held(o)))
        obj = self._reroll(anchor, held(anchor), rng)
        if obj is None:
            return None
        if kept_relation == "stacked":
            frame = "stacked"
        elif kept_count is not None:
            frame = "group" if rng.random() < 0.7 else "stacked"
        elif obj.action is not None:
            frame = "single"
        else:
            frame = FRAMES[int(rng.integers(len(FRAMES)))]
        count = kept_count or int(rng.integers(2, 4))
        try:
            if frame == "single":
                return SceneSpec((obj,))
            if frame == "action":
                acts = vocab.applicable_actions(obj.noun)
                return SceneSpec((replace(obj, action=acts[int(rng.integers(len(acts)))]),)) if acts else None
            if frame == "group":
                return SceneSpec((obj,), count=count)
            if frame == "stacked":
                return SceneSpec((obj,), relation="stacked", count=count)
            other_nouns = [x for x in vocab.NOUNS if x != obj.noun]
            if frame == "on top of":
                if obj.noun in vocab.CARRIED_NOUNS and (
                    obj.noun not in vocab.SUPPORT_NOUNS or rng.random() < 0.5
                ):
                    pool, first = [x for x in vocab.SUPPORT_NOUNS if x != obj.noun], True
                else:
                    pool, first = [x for x in vocab.CARRIED_NOUNS if x != obj.noun], False
            else:
                pool, first = other_nouns, bool(rng.random() < 0.5)
            other = self._random_object(pool[int(rng.integers(len(pool)))], rng)
            pair = (obj, other) if first else (other, obj)
            return SceneSpec(pair, relation=frame)
        except ValueError:
            return None

    def _random_object(self, noun: str, rng: np.random.Generator) -> Any:
        from debias3d.data.shapeworld import vocab
        from debias3d.data.shapeworld.spec import ObjectSpec

        colour = list(vocab.COLOURS)[int(rng.integers(len(vocab.COLOURS)))] if rng.random() < 0.6 else None
        return ObjectSpec(noun, colour=colour)

    def _reroll(self, obj: Any, kept: set[str], rng: np.random.Generator) -> Any:
        """A copy of ``obj`` with every non-kept attribute drawn anew (None when impossible)."""
        from debias3d.data.shapeworld import vocab
        from debias3d.data.shapeworld.spec import ObjectSpec

        kept_mods = tuple(m for m in obj.modifiers if m in kept)
        kept_action = obj.action if obj.action in kept else None
        noun = obj.noun
        if noun not in kept and rng.random() < self.noun_swap_prob:
            able = [
                x
                for x in vocab.NOUNS
                if all(x in vocab.MODIFIERS[m] for m in kept_mods)
                and (kept_action is None or x in vocab.ACTIONS[kept_action])
            ]
            noun = able[int(rng.integers(len(able)))] if able else noun
        colours = list(vocab.COLOURS)
        if obj.colour in kept:
            colour = obj.colour
        else:
            colour = colours[int(rng.integers(len(colours)))] if rng.random() < 0.6 else None
        if obj.size in kept:
            size = obj.size
        else:
            size = list(vocab.SIZES)[int(rng.integers(2))] if rng.random() < 0.35 else None
        mods = list(kept_mods)
        if rng.random() < self.extra_modifier_prob:
            pool = [m for m in vocab.applicable_modifiers(noun) if m not in mods]
            pool = [m for m in pool if not any(m in g and g & set(mods) for g in vocab.EXCLUSIVE_MODIFIERS)]
            if pool:
                mods.append(pool[int(rng.integers(len(pool)))])
        if obj.material in kept:
            material = obj.material
        else:
            material = (
                vocab.MATERIALS[int(rng.integers(len(vocab.MATERIALS)))] if rng.random() < 0.25 else None
            )
        try:
            return ObjectSpec(
                noun, colour=colour, size=size, modifiers=tuple(mods), action=kept_action, material=material
            )
        except ValueError:
            return None
