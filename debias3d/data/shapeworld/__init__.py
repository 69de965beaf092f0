"""ShapeWorld: the procedural text-3D world that gives every shape a ground-truth fidelity.

* :mod:`.vocab` - the words (nouns, colours, sizes, modifiers, actions, counts, relations, stop words)
* :mod:`.spec` - :class:`ObjectSpec` / :class:`SceneSpec`, the meaning of a prompt
* :mod:`.grammar` - prompts in the 8 MATE-3D-style categories (:func:`sample_prompts`)
* :mod:`.phrasing` - the prompt text of a spec (:func:`write_prompt`)
* :mod:`.parser` - prompt text -> spec (:func:`parse`)
* :mod:`.builder` - spec -> coloured mesh + 16^3 voxels (:func:`build`)
* :mod:`.voxelize` - :func:`voxels_to_mesh` / :func:`mesh_to_voxels`
* :mod:`.measurer` - shape -> attributes, per-word verdicts and fidelity (:func:`score_prompt`)
* :mod:`.corpus` - skewed text-shape pair datasets (:func:`make_corpus`, :func:`write_corpus`)

>>> from debias3d.data.shapeworld import build, parse, fidelity
>>> spec = parse("a tall red vase with a long neck")
>>> fidelity(spec, build(spec, rng=0))
1.0
"""

from debias3d.data.shapeworld.builder import ShapeWorldExternalGenerator, build, build_voxels, scene_problems
from debias3d.data.shapeworld.corpus import (
    DEFAULT_WORD_FREQUENCY,
    RARE_WORDS,
    CorpusConfig,
    make_corpus,
    write_corpus,
)
from debias3d.data.shapeworld.grammar import Prompt, evaluation_prompts, sample_prompts, sample_spec
from debias3d.data.shapeworld.measurer import Measurement, fidelity, measure, score_prompt, word_scores
from debias3d.data.shapeworld.parser import ParseError, parse, prompt_words
from debias3d.data.shapeworld.phrasing import canonical_prompt, write_prompt
from debias3d.data.shapeworld.spec import ObjectSpec, SceneSpec
from debias3d.data.shapeworld.vocab import ATTRIBUTE_WORDS, CATEGORIES, STOP_WORDS, is_stop_word
from debias3d.data.shapeworld.voxelize import mesh_to_voxels, voxels_to_mesh

__all__ = [
    "ATTRIBUTE_WORDS",
    "CATEGORIES",
    "DEFAULT_WORD_FREQUENCY",
    "RARE_WORDS",
    "STOP_WORDS",
    "CorpusConfig",
    "Measurement",
    "ObjectSpec",
    "ParseError",
    "Prompt",
    "SceneSpec",
    "ShapeWorldExternalGenerator",
    "build",
    "build_voxels",
    "canonical_prompt",
    "evaluation_prompts",
    "fidelity",
    "is_stop_word",
    "make_corpus",
    "measure",
    "mesh_to_voxels",
    "parse",
    "prompt_words",
    "sample_prompts",
    "sample_spec",
    "scene_problems",
    "score_prompt",
    "voxels_to_mesh",
    "word_scores",
    "write_corpus",
    "write_prompt",
]
