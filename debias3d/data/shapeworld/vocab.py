"""ShapeWorld vocabulary: the words the grammar writes, the parser reads and the measurer checks.

Every *attribute word* is a single whitespace token with exactly one measurable meaning, so a
word-level attribution (w_h / w_l) maps onto one geometric or colour property:

* colours (8): ``red green blue yellow white black orange purple``
* sizes (2): ``small large``
* modifiers (9): ``long short narrow thick wide tall flat round spiky``
  (``long``/``short``/``narrow``/``thick`` act on the noun's thin part: neck, legs, stem or trunk;
  ``wide`` on its base; the rest on the whole object)
* actions (4): ``floating upside-down leaning lying``
* counts (2): ``two three``; relations (3): ``on top of``, ``next to``, ``stacked``

Materials (``ceramic``, ``wooden``, ...) are *filler* content words: written and parsed, never built
or measured. :data:`STOP_WORDS` lists the function words that later attribution code skips.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Nouns
# --------------------------------------------------------------------------------------------
NOUNS: tuple[str, ...] = (
    "vase",
    "cup",
    "table",
    "lamp",
    "tower",
    "tree",
    "mushroom",
    "snowman",
    "chair",
    "bottle",
    "bowl",
    "rocket",
    "box",
)

PLURALS: dict[str, str] = {
    n: ("snowmen" if n == "snowman" else n + "es" if n.endswith(("x", "sh", "ch")) else n + "s")
    for n in NOUNS
}
SINGULARS: dict[str, str] = {p: n for n, p in PLURALS.items()}

# --------------------------------------------------------------------------------------------
# Colours. The vocabulary colours are far apart in RGB; nouns default to *non-vocabulary*
# colours (brown, teal, ...), so a generator that ignores a colour word is measurably wrong.
# --------------------------------------------------------------------------------------------
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.15, 0.75),
}
#: Named colours that are never prompt words; used as noun defaults and by the measurer.
EXTRA_COLOURS: dict[str, tuple[float, float, float]] = {
    "brown": (0.45, 0.28, 0.14),
    "teal": (0.15, 0.55, 0.55),
    "beige": (0.80, 0.72, 0.55),
    "grey": (0.50, 0.50, 0.52),
    "pink": (0.95, 0.55, 0.70),
    "olive": (0.42, 0.48, 0.16),
}
NAMED_COLOURS: dict[str, tuple[float, float, float]] = {**COLOURS, **EXTRA_COLOURS}

DEFAULT_COLOUR: dict[str, str] = {
    "vase": "teal",
    "cup": "beige",
    "table": "brown",
    "lamp": "beige",
    "tower": "grey",
    "tree": "olive",
    "mushroom": "pink",
    "snowman": "grey",
    "chair": "brown",
    "bottle": "teal",
    "bowl": "beige",
    "rocket": "grey",
    "box": "brown",
}
#: Colours that look ordinary on a noun; any other vocabulary colour makes a prompt "fantastical".
NATURAL_COLOURS: dict[str, frozenset[str]] = {
    "vase": frozenset({"white", "blue", "black", "red"}),
    "cup": frozenset({"white", "red", "blue", "black"}),
    "table": frozenset({"white", "black"}),
    "lamp": frozenset({"white", "black"}),
    "tower": frozenset({"white"}),
    "tree": frozenset({"green"}),
    "mushroom": frozenset({"red", "white"}),
    "snowman": frozenset({"white"}),
    "chair": frozenset({"white", "black", "red"}),
    "bottle": frozenset({"green", "blue", "white"}),
    "bowl": frozenset({"white", "blue", "red"}),
    "rocket": frozenset({"white", "red"}),
    "box": frozenset({"red", "blue", "white", "black"}),
}

# --------------------------------------------------------------------------------------------
# Size
# --------------------------------------------------------------------------------------------
SIZES: dict[str, float] = {"small": 0.6, "large": 1.4}  # uniform scale factor on the object

# --------------------------------------------------------------------------------------------
# Modifiers: word -> nouns it applies to. Thin-part words need the noun's part name.
# --------------------------------------------------------------------------------------------
THIN_PART: dict[str, str] = {
    "vase": "neck",
    "bottle": "neck",
    "lamp": "stem",
    "mushroom": "stem",
    "tree": "trunk",
    "table": "legs",
    "chair": "legs",
}
#: Where the thin part sits: "top" runs end at the object's top slice, "bottom" ones start at the floor.
THIN_PART_SIDE: dict[str, str] = {
    "vase": "top",
    "bottle": "top",
    "lamp": "bottom",
    "mushroom": "bottom",
    "tree": "bottom",
    "table": "bottom",
    "chair": "bottom",
}
BASE_NOUNS = ("vase", "bottle", "lamp", "tower", "rocket")

MODIFIERS: dict[str, tuple[str, ...]] = {
    "long": ("vase", "bottle", "lamp", "mushroom", "tree", "table", "chair"),
    "short": ("vase", "bottle", "lamp", "mushroom", "tree", "table", "chair"),
    "narrow": ("vase", "bottle"),
    "thick": ("lamp", "mushroom", "tree", "table", "chair"),
    "wide": BASE_NOUNS,
    "tall": ("vase", "bottle", "cup", "lamp", "tower", "tree", "mushroom", "snowman", "rocket", "box"),
    "flat": ("vase", "cup", "tower", "mushroom", "snowman", "box"),
    "round": ("table", "tower", "box"),
    "spiky": ("vase", "bowl", "tower", "tree", "mushroom", "snowman", "rocket", "box"),
}
#: Modifiers that are phrased as "with a <word> <part>" rather than as an adjective.
PART_MODIFIERS: frozenset[str] = frozenset({"long", "short", "narrow", "thick", "wide"})
#: At most one word of each group on one object.
EXCLUSIVE_MODIFIERS: tuple[frozenset[str], ...] = (
    frozenset({"long", "short"}),
    frozenset({"tall", "flat"}),
    frozenset({"narrow", "thick"}),
)
#: Modifiers that give a noun an unusual look (the "fantastical" category).
FANTASTICAL_MODIFIERS: frozenset[str] = frozenset({"spiky"})

# --------------------------------------------------------------------------------------------
# Actions (single-object scenes only)
# --------------------------------------------------------------------------------------------
ACTIONS: dict[str, tuple[str, ...]] = {
    "floating": NOUNS,
    # nouns whose vertical mass profile is clearly asymmetric, so a flip is measurable
    "upside-down": ("vase", "lamp", "mushroom", "snowman", "rocket", "table", "bottle"),
    # tall nouns: leaning shifts the top sideways by several voxels
    "leaning": ("vase", "bottle", "lamp", "tower", "rocket", "snowman"),
    # tall nouns: lying swaps height and width
    "lying": ("vase", "bottle", "lamp", "tower", "rocket"),
}
#: How the grammar may phrase each action (pre-noun adjective or post-noun phrase).
ACTION_PHRASES: dict[str, tuple[str, ...]] = {
    "floating": ("floating {np}", "{np} floating in the air"),
    "upside-down": ("upside-down {np}", "{np} turned upside-down"),
    "leaning": ("leaning {np}", "{np} leaning to the side"),
    "lying": ("{np} lying on its side", "{np} lying on the ground"),
}

# --------------------------------------------------------------------------------------------
# Counts and relations
# --------------------------------------------------------------------------------------------
COUNTS: dict[str, int] = {"two": 2, "three": 3}
COUNT_WORDS: dict[int, str] = {v: k for k, v in COUNTS.items()}
RELATIONS: tuple[str, ...] = ("on top of", "next to", "stacked")
#: Nouns with a flat top that can carry another object ("A on top of B": B is one of these).
SUPPORT_NOUNS: tuple[str, ...] = ("table", "box", "tower", "chair")
#: Nouns that can sit on a support.
CARRIED_NOUNS: tuple[str, ...] = (
    "vase",
    "cup",
    "lamp",
    "bottle",
    "bowl",
    "box",
    "mushroom",
    "snowman",
    "tree",
)
#: Nouns that stack on themselves.
STACKABLE_NOUNS: tuple[str, ...] = ("cup", "bowl", "box", "chair", "table")

# --------------------------------------------------------------------------------------------
# Filler and stop words
# --------------------------------------------------------------------------------------------
MATERIALS: tuple[str, ...] = ("ceramic", "wooden", "metal", "glass", "plastic", "stone", "toy")
PART_WORDS: tuple[str, ...] = ("neck", "legs", "stem", "trunk", "base")
STOP_WORDS: frozenset[str] = frozenset(
    {
        "a",
        "an",
        "the",
        "with",
        "of",
        "on",
        "top",
        "next",
        "to",
        "and",
        "in",
        "its",
        "side",
        "air",
        "ground",
        "turned",
        "stack",
        "is",
        "are",
        "that",
        "has",
        "each",
    }
)

CATEGORIES: tuple[str, ...] = (
    "basic",
    "refined",
    "complex",
    "fantastical",
    "grouped",
    "spatial",
    "action",
    "imaginative",
)

#: Every word the measurer can check, by kind.
ATTRIBUTE_WORDS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "modifier": tuple(MODIFIERS),
    "action": tuple(ACTIONS),
    "count": tuple(COUNTS),
    "relation": RELATIONS,
}
WORD_KIND: dict[str, str] = {w: k for k, ws in ATTRIBUTE_WORDS.items() for w in ws}


def applicable_modifiers(noun: str) -> tuple[str, ...]:
    """Modifiers the builder can show on ``noun``, in canonical vocabulary order."""
    return tuple(m for m, nouns in MODIFIERS.items() if noun in nouns)


def applicable_actions(noun: str) -> tuple[str, ...]:
    """Actions the builder can show on ``noun``, in canonical vocabulary order."""
    return tuple(a for a, nouns in ACTIONS.items() if noun in nouns)


def is_stop_word(word: str) -> bool:
    """True for function words that carry no attribute (``a``, ``with``, ``on``, ...)."""
    return word.lower().strip(".,;:!?") in STOP_WORDS
