"""ShapeWorld grammar: samples scene specs in the 8 MATE-3D-style categories and writes prompts.

Categories (single object unless stated):

* ``basic``: a noun with at most one attribute ("a red vase").
* ``refined``: two attributes, at least one modifier ("a tall vase with a long neck").
* ``complex``: three or four attributes, at least two modifiers.
* ``fantastical``: an unusual look: ``spiky`` or a colour the noun does not have in life.
* ``grouped``: two or three copies ("three small red cups").
* ``spatial``: ``A on top of B``, ``A next to B`` or ``two stacked bowls``.
* ``action``: an action word (floating, upside-down, leaning, lying).
* ``imaginative``: an action plus an unusual look or several attributes.

Every prompt parses back to its spec (``parse(p.text) == p.spec``), and sampling is deterministic for
a seed. ``word_weights`` multiplies the probability of choosing a word wherever it competes with
others (nouns, colours, modifiers, actions, relations), which is how the corpus skews coverage.

>>> ps = sample_prompts(3, category="refined", rng=0)
>>> [p.category for p in ps]
['refined', 'refined', 'refined']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from debias3d.data.prompts import Prompt  # a written prompt: text, category and the spec it means
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.builder import (
    DETAIL_WORDS,
    MIN_DETAIL_SCALE,
    ROTATED_ALLOWED,
    layout_scale,
    scene_problems,
)
from debias3d.data.shapeworld.phrasing import write_prompt
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec

MAX_TRIES = 200


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
class _Sampler:
    def __init__(self, rng: np.random.Generator, weights: Mapping[str, float] | None):
        self.rng = rng
        self.w = dict(weights or {})

    def pick(self, options: Sequence[str]) -> str:
        p = np.array([max(0.0, float(self.w.get(o, 1.0))) for o in options])
        if p.sum() <= 0:
            p = np.ones(len(options))
        return options[int(self.rng.choice(len(options), p=p / p.sum()))]

    def maybe(self, prob: float) -> bool:
        return bool(self.rng.random() < prob)

    def noun(self, among: Sequence[str] = vocab.NOUNS) -> str:
        return self.pick(list(among))

    def modifiers(
        self, noun: str, k: int, scale: float, allow: Sequence[str] | None = None
    ) -> tuple[str, ...]:
        """Up to k compatible modifiers of ``noun``, weighted."""
        pool = [m for m in vocab.applicable_modifiers(noun) if allow is None or m in allow]
        if scale < MIN_DETAIL_SCALE:
            pool = [m for m in pool if m not in DETAIL_WORDS]
        chosen: list[str] = []
        while pool and len(chosen) < k:
            # when every remaining option is down-weighted, often choose none, so that a noun
            # whose only modifier is rare does not force that word into the prompt
            mean_w = float(np.mean([self.w.get(o, 1.0) for o in pool]))
            if mean_w < 1.0 and self.rng.random() > mean_w:
                break
            m = self.pick(pool)
            chosen.append(m)
            excl = set().union(*(g for g in vocab.EXCLUSIVE_MODIFIERS if m in g)) | {m}
            pool = [x for x in pool if x not in excl]
        return tuple(chosen)

    def colour(self, noun: str | None = None, unnatural: bool = False) -> str:
        options = list(vocab.COLOURS)
        if unnatural and noun in vocab.NATURAL_COLOURS:
            options = [c for c in options if c not in vocab.NATURAL_COLOURS[noun]]
        return self.pick(options)

    def material(self, prob: float) -> str | None:
        return self.pick(list(vocab.MATERIALS)) if self.maybe(prob) else None

    def attrs(self, noun: str, n: int, scale: float, min_mods: int = 0, allow_mods=None) -> dict:
        """n attribute words among colour / size / modifiers, at least ``min_mods`` modifiers."""
        kinds = ["mod"] * min_mods
        extra = [self.pick(["colour", "size", "mod"]) for _ in range(n - min_mods)]
        kinds += extra
        if kinds.count("colour") > 1 or kinds.count("size") > 1:
            kinds = [k for i, k in enumerate(kinds) if k == "mod" or k not in kinds[:i]]
        size = self.pick(list(vocab.SIZES)) if "size" in kinds else None
        eff = scale * vocab.SIZES.get(size or "", 1.0)
        mods = self.modifiers(noun, kinds.count("mod"), eff, allow_mods)
        colour = self.colour(noun) if "colour" in kinds else None
        return {"colour": colour, "size": size, "modifiers": mods}


def _single(s: _Sampler, category: str) -> SceneSpec:
    if category == "basic":
        n = 0 if s.maybe(0.25) else 1
        noun = s.noun()
        return SceneSpec((ObjectSpec(noun, **s.attrs(noun, n, 1.0)),))
    if category == "refined":
        noun = s.noun()
        return SceneSpec((ObjectSpec(noun, material=s.material(0.3), **s.attrs(noun, 2, 1.0, min_mods=1)),))
    if category == "complex":
        noun = s.noun()
        n = 3 if s.maybe(0.6) else 4
        return SceneSpec((ObjectSpec(noun, material=s.material(0.3), **s.attrs(noun, n, 1.0, min_mods=2)),))
    if category == "fantastical":
        noun = s.noun()
        options = (["spiky"] if noun in vocab.MODIFIERS["spiky"] else []) + ["colour"]
        trait = s.pick(options)
        a = s.attrs(noun, int(s.rng.integers(0, 3)), 1.0)
        if trait == "spiky":
            mods = tuple(m for m in a["modifiers"] if m not in ("spiky",)) + ("spiky",)
            a["modifiers"] = mods
        else:
            a["colour"] = s.colour(noun, unnatural=True)
        return SceneSpec((ObjectSpec(noun, material=s.material(0.2), **a),))
    if category in ("action", "imaginative"):
        action = s.pick(list(vocab.ACTIONS))
        noun = s.noun(vocab.ACTIONS[action])
        # rotations hide part words and spikes; floating keeps every modifier readable
        allow = list(vocab.MODIFIERS) if action == "floating" else sorted(ROTATED_ALLOWED[action])
        if category == "action":
            a = s.attrs(noun, int(s.rng.integers(0, 2)), 1.0, allow_mods=allow)
        else:
            a = s.attrs(noun, int(s.rng.integers(1, 3)), 1.0, allow_mods=allow)
            traits = ["colour"] if noun in vocab.NATURAL_COLOURS else []
            if "spiky" in allow and noun in vocab.MODIFIERS["spiky"]:
                traits.append("spiky")
            traits.append("many")
            t = s.pick(traits)
            if t == "colour":
                a["colour"] = s.colour(noun, unnatural=True)
            elif t == "spiky":
                a["modifiers"] = tuple(m for m in a["modifiers"] if m != "spiky") + ("spiky",)
            else:
                a = s.attrs(noun, 2, 1.0, min_mods=1, allow_mods=allow)
        return SceneSpec((ObjectSpec(noun, action=action, **a),))
    raise ValueError(f"unknown category {category!r}")


def _multi(s: _Sampler, category: str) -> SceneSpec:
    if category == "grouped":
        count = int(s.pick(["two", "three"]) == "three") + 2
        noun = s.noun()
        scale = layout_scale(SceneSpec((ObjectSpec(noun),), count=count))
        a = s.attrs(noun, 1 if s.maybe(0.6) else 2, scale)
        return SceneSpec((ObjectSpec(noun, **a),), count=count)
    rel = s.pick(list(vocab.RELATIONS))
    if rel == "stacked":
        count = int(s.pick(["two", "three"]) == "three") + 2
        noun = s.noun(vocab.STACKABLE_NOUNS)
        scale = layout_scale(SceneSpec((ObjectSpec(noun),), count=count, relation="stacked"))
        a = s.attrs(
            noun, int(s.rng.integers(0, 2)), scale, allow_mods=("tall", "flat", "spiky", "long", "short")
        )
        return SceneSpec((ObjectSpec(noun, **a),), relation="stacked", count=count)
    if rel == "on top of":
        na, nb = s.noun(vocab.CARRIED_NOUNS), s.noun(vocab.SUPPORT_NOUNS)
    else:
        na = s.noun()
        nb = s.noun([n for n in vocab.NOUNS if n != na])
    scale = layout_scale(SceneSpec((ObjectSpec(na), ObjectSpec(nb)), relation=rel))
    objs = []
    for noun in (na, nb):
        n = int(s.rng.choice(3, p=[0.2, 0.6, 0.2]))
        objs.append(ObjectSpec(noun, **s.attrs(noun, n, scale)))
    if objs[0].words() == [] and objs[1].words() == [] and s.maybe(0.7):
        objs[0] = ObjectSpec(na, colour=s.colour(na))
    return SceneSpec(tuple(objs), relation=rel)


def sample_spec(
    category: str,
    rng: np.random.Generator | int | None = None,
    word_weights: Mapping[str, float] | None = None,
    check_fit: bool = True,
) -> SceneSpec:
    """Sample one buildable, measurable scene of ``category``.

    Args:
        category: one of :data:`vocab.CATEGORIES`.
        rng: generator or seed.
        word_weights: word -> weight multiplier (default 1 for every word).
        check_fit: also reject scenes whose jitter-free build is clipped by the grid.
    """
    if category not in vocab.CATEGORIES:
        raise ValueError(f"category: unknown {category!r}; expected one of {', '.join(vocab.CATEGORIES)}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    s = _Sampler(rng, word_weights)
    for _ in range(MAX_TRIES):
        spec = _multi(s, category) if category in ("grouped", "spatial") else _single(s, category)
        if _fits_category(spec, category) and not _problems(spec, check_fit):
            return spec
    raise RuntimeError(f"sample_spec: no valid {category} scene in {MAX_TRIES} tries (weights too skewed?)")


def _fits_category(spec: SceneSpec, category: str) -> bool:
    """Word-count rules of the single-object categories (the samplers may fall short of them)."""
    words = spec.objects[0].words()
    n_mods = len(spec.objects[0].modifiers)
    if category == "basic":
        return len(words) <= 1
    if category == "refined":
        return len(words) == 2 and n_mods >= 1
    if category == "complex":
        return len(words) >= 3 and n_mods >= 2
    if category == "imaginative":
        return len(words) >= 2
    return True


def _geometry_key(spec: SceneSpec) -> SceneSpec:
    objs = tuple(ObjectSpec(o.noun, None, o.size, o.modifiers, o.action) for o in spec.objects)
    return SceneSpec(objs, relation=spec.relation, count=spec.count)


@lru_cache(maxsize=65536)
def _cached_problems(key: SceneSpec, check_fit: bool) -> tuple[str, ...]:
    return tuple(scene_problems(key, check_fit=check_fit))


def _problems(spec: SceneSpec, check_fit: bool) -> tuple[str, ...]:
    return _cached_problems(_geometry_key(spec), check_fit)


def sample_prompts(
    n: int,
    category: str | None = None,
    rng: np.random.Generator | int | None = 0,
    word_weights: Mapping[str, float] | None = None,
    category_weights: Mapping[str, float] | None = None,
) -> list[Prompt]:
    """Sample ``n`` prompts.

    Args:
        n: number of prompts.
        category: one category, or ``None`` to draw categories by ``category_weights`` (uniform).
        rng: generator or seed (default 0, so the same call gives the same prompts).
        word_weights: word -> weight multiplier, see module docstring.
        category_weights: category -> weight when ``category`` is None.

    Returns:
        list of :class:`Prompt` (text, category, spec).
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    cats = list(vocab.CATEGORIES)
    cw = np.array([float((category_weights or {}).get(c, 1.0)) for c in cats])
    if category is None and (cw < 0).any() | (cw.sum() <= 0):
        raise ValueError("category_weights: need non-negative weights with a positive sum")
    out = []
    for _ in range(n):
        cat = category or cats[int(rng.choice(len(cats), p=cw / cw.sum()))]
        spec = sample_spec(cat, rng, word_weights)
        out.append(Prompt(write_prompt(spec, rng), cat, spec=spec))
    return out


def evaluation_prompts(n_per_category: int = 12, seed: int = 0, min_word_count: int = 3) -> list[Prompt]:
    """Fixed evaluation prompt set: every category, every modifier/colour word several times.

    Samples ``n_per_category`` prompts per category with uniform word weights, then adds targeted
    prompts until every colour, size, modifier and action word appears at least ``min_word_count``
    times. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    prompts: list[Prompt] = []
    for cat in vocab.CATEGORIES:
        prompts += sample_prompts(n_per_category, category=cat, rng=rng)

    def counts() -> dict[str, int]:
        c: dict[str, int] = {}
        for p in prompts:
            for w in set(p.spec.words()):
                c[w] = c.get(w, 0) + 1
        return c

    targets = [*vocab.COLOURS, *vocab.SIZES, *vocab.MODIFIERS, *vocab.ACTIONS]
    for w in targets:
        cat = "action" if w in vocab.ACTIONS else "refined"
        for _ in range(50):
            if counts().get(w, 0) >= min_word_count:
                break
            spec = sample_spec(cat, rng, {w: 50.0})  # strongly favour the missing word
            if w in spec.words():
                prompts.append(Prompt(write_prompt(spec, rng), cat, spec=spec))
    return prompts
