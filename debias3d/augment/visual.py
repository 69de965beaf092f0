"""Visual augmentation (paper §3.3, Algorithm 1): external generators, the ranker duel, new pairs.

For an original pair {x_n, t_n} and a new prompt t_nc with its generated mesh x_nc, a reward
ranker scores **both meshes under t_n** with T3Bench-style view aggregation (icosphere cameras,
best FoV per camera, neighbour smoothing, best camera; the rig is reduced in the config for CPU
runs). The higher score wins. Only a winning x_nc makes new pairs: {x_nc, t_nc} and, following the
paper's many-to-many assignment, {x_nc, t_n}; each can be switched off.

External generator backends (registry kind ``external_generator``):

* ``shapeworld``: the procedural builder (offline default; stands where the paper's CFD stood);
* ``generator``: any registered generator (e.g. ``mini-trellis`` at another seed);
* ``command``: a user command template per prompt, e.g.
  ``python export.py --text {prompt} --seed {seed} --out {out}``. The template is split with
  ``shlex`` *before* the placeholders are filled, so a prompt is always one argument and never
  reaches a shell. The command must write a mesh file (GLB by default) at ``{out}``.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from debias3d.data.assets import DEFAULT_RESOLUTION, Asset, load_mesh
from debias3d.registry import register

__all__ = [
    "ExternalGenerationError",
    "CommandExternalGenerator",
    "GeneratorExternalGenerator",
    "RankerJudge",
    "Duel",
    "duel",
    "make_pairs",
    "algorithm1",
    "build_external_generator",
    "build_judge",
]

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{(prompt|out|seed)\}")


class ExternalGenerationError(RuntimeError):
    """An external generator failed on one item; the message is one line."""


def _tail(text: str, limit: int = 160) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    s = lines[-1] if lines else ""
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _voxelize(mesh: Any, resolution: int) -> Any:
    from debias3d.data.shapeworld.voxelize import mesh_to_voxels

    return mesh_to_voxels(mesh, resolution)


# ------------------------------------------------------------------------------------------------
# External generator backends
# ------------------------------------------------------------------------------------------------
@register("external_generator", "command")
class CommandExternalGenerator:
    """Run a command per prompt that writes a mesh file; load it and voxelise it.

    Args:
        command: template with ``{prompt}``, ``{out}`` (required) and ``{seed}`` placeholders.
        timeout_s: wall-clock limit per item; the command's whole process group is killed after it.
        resolution: voxel resolution of the returned assets.
        suffix: mesh file suffix passed in ``{out}`` (``.glb`` default; ``.obj``/``.ply`` work too).
        cwd: working directory of the command.

    >>> gen = CommandExternalGenerator("my-exporter --text {prompt} --out {out}")
    >>> gen.argv("a 'red' vase; rm -rf /", "/tmp/m.glb", 3)
    ['my-exporter', '--text', "a 'red' vase; rm -rf /", '--out', '/tmp/m.glb']
    >>> gen.argv("a vase at {out} with {seed}", "/tmp/m.glb", 3)[2]  # prompt text is never expanded
    'a vase at {out} with {seed}'
    """

    name = "command"

    def __init__(
        self,
        command: str,
        timeout_s: float = 600.0,
        resolution: int = DEFAULT_RESOLUTION,
        suffix: str = ".glb",
        cwd: str | None = None,
    ) -> None:
        if "{out}" not in command:
            raise ValueError("command template must contain {out}")
        self.template = shlex.split(command)
        if not self.template:
            raise ValueError("command template is empty")
        self.command = command
        self.timeout_s = float(timeout_s)
        self.resolution = int(resolution)
        self.suffix = suffix
        self.cwd = cwd

    @classmethod
    def from_config(cls, cfg: Any) -> CommandExternalGenerator:
        return cls(cfg.command, cfg.command_timeout_s, cfg.resolution)

    def argv(self, prompt: str, out: str, seed: int) -> list[str]:
        """The argument vector: each template token with its placeholders replaced (no shell).

        One pass over the template's own text: braces inside the substituted prompt (an LLM can
        write ``{out}``) are left as they are.
        """
        subs = {"prompt": prompt, "out": out, "seed": str(int(seed))}
        return [_PLACEHOLDER.sub(lambda m: subs[m.group(1)], tok) for tok in self.template]

    def generate_one(self, prompt: str, seed: int) -> Asset:
        """Run the command for one prompt. Raises :class:`ExternalGenerationError` (one line)."""

        with tempfile.TemporaryDirectory(prefix="debias3d-cmd-") as tmp:
            out = os.path.join(tmp, "mesh" + self.suffix)
            argv = self.argv(prompt, out, seed)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=self.cwd,
                    start_new_session=True,  # its own process group, killed whole on timeout
                )
            except OSError as err:
                raise ExternalGenerationError(f"command failed to start: {err}") from err
            try:
                _stdout, stderr = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired as err:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.communicate()
                raise ExternalGenerationError(f"command timed out after {self.timeout_s:g} s") from err
            if proc.returncode != 0:
                raise ExternalGenerationError(f"command exited with code {proc.returncode}: {_tail(stderr)}")
            if not os.path.isfile(out) or os.path.getsize(out) == 0:
                raise ExternalGenerationError(
                    f"command wrote no mesh at {{out}} ({_tail(stderr) or 'no stderr'})"
                )
            try:
                mesh = load_mesh(out)
            except (ValueError, OSError, KeyError, IndexError) as err:
                raise ExternalGenerationError(f"unreadable mesh: {_tail(str(err))}") from err
            if len(getattr(mesh, "faces", ())) == 0:
                raise ExternalGenerationError("command wrote an empty mesh")
        try:
            voxels = _voxelize(mesh, self.resolution)
        except ValueError as err:
            raise ExternalGenerationError(f"mesh cannot be voxelised: {_tail(str(err))}") from err
        return Asset(prompt, mesh, voxels, seed=int(seed), metadata={"backend": self.name})

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Asset]:
        """One asset per (prompt, seed); raises on the first failure (use :meth:`generate_one`)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        return [self.generate_one(p, s) for p, s in zip(prompts, seeds, strict=True)]


@register("external_generator", "generator")
class GeneratorExternalGenerator:
    """Any registered generator (kind ``generator``) used as the external generator.

    Args:
        generator: registry name, e.g. ``mini-trellis``.
        path: weights folder (``None``: the backend's default).
        steps: sampler steps (``None``: the backend's default).
    """

    name = "generator"

    def __init__(self, generator: str = "mini-trellis", path: str | None = None, steps: int | None = None):
        self.generator_name = generator
        self.path = path or None
        self.steps = steps or None
        self._gen: Any = None

    @classmethod
    def from_config(cls, cfg: Any) -> GeneratorExternalGenerator:
        return cls(cfg.generator, cfg.generator_weights or None, cfg.generator_steps or None)

    @property
    def model(self) -> Any:
        if self._gen is None:
            from debias3d.models.generator import GeneratorSpec, build_generator

            self._gen = build_generator(GeneratorSpec(self.generator_name, self.path))
        return self._gen

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Asset]:
        kwargs: dict[str, Any] = {"num_samples": 1}
        if self.steps:
            kwargs["steps"] = self.steps
        return self.model.generate(list(prompts), [int(s) for s in seeds], **kwargs)


def build_external_generator(cfg: Any) -> Any:
    """The external generator named by ``cfg.backend`` (a ``VisualConfig``), built from the config.

    Backends with ``from_config`` build themselves; others get the config values their
    constructor accepts (``resolution``, ``mesh_resolution``).
    """
    from debias3d.registry import find

    cls = find("external_generator", cfg.backend)
    if hasattr(cls, "from_config"):
        return cls.from_config(cfg)
    params = inspect.signature(cls).parameters
    kwargs = {k: getattr(cfg, k) for k in ("resolution", "mesh_resolution") if k in params}
    return cls(**kwargs)


_KEY_NAMES = {"generator_weights": "generator_path", "ranker_weights": "ranker_path"}


def generator_settings(cfg: Any) -> dict[str, Any]:
    """The visual settings that change a generated mesh (part of each item's key)."""
    keep = {
        "shapeworld": ("mesh_resolution",),
        "generator": ("generator", "generator_weights", "generator_steps"),
        "command": ("command",),
    }.get(cfg.backend, ("mesh_resolution", "generator", "generator_weights", "generator_steps", "command"))
    # item keys keep the settings' earlier names, so job folders written before the rename resume
    named = {_KEY_NAMES.get(k, k): getattr(cfg, k) for k in keep}
    return {"backend": cfg.backend, "resolution": cfg.resolution, **named}


# ------------------------------------------------------------------------------------------------
# Ranker judge and Algorithm 1
# ------------------------------------------------------------------------------------------------
class RankerJudge:
    """Scores a mesh under a prompt: ranker view scores + T3Bench aggregation.

    Args:
        ranker: a ranker with ``view_scores(views, prompts)`` and ``image_size``
            (:class:`~debias3d.models.ranker.base.RankerBase`).
        ranking: a :class:`~debias3d.models.ranker.t3bench.T3BenchConfig` (reduced rig).
        renderer: optional renderer (default: one at the ranker's image size).
    """

    def __init__(self, ranker: Any, ranking: Any = None, renderer: Any = None) -> None:
        from debias3d.models.ranker.t3bench import T3BenchQuality

        self.ranker = ranker
        self.quality = T3BenchQuality(ranker, ranking, renderer=renderer)

    def score(self, mesh: Any, prompt: str) -> float:
        """T3Bench-style quality of ``mesh`` (a mesh or an asset) under ``prompt``."""
        return float(self.quality(getattr(mesh, "mesh", mesh), prompt).score)


def _takes(fn: Any, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name`` (by name or through ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_judge(cfg: Any, device: str | None = None) -> RankerJudge:
    """A :class:`RankerJudge` over the ranker named by ``cfg.ranker`` (a ``VisualConfig``).

    Args:
        cfg: ``ranker``, ``ranker_weights``, ``ranking``.
        device: torch device for the ranker (None: the ranker's default, CPU).
    """
    from debias3d.registry import find

    cls = find("ranker", cfg.ranker)
    make = cls.from_pretrained if hasattr(cls, "from_pretrained") else cls
    kwargs: dict[str, Any] = {"device": device} if device is not None and _takes(make, "device") else {}
    if hasattr(cls, "from_pretrained"):
        ranker = cls.from_pretrained(cfg.ranker_weights or None, **kwargs)
    else:
        # e.g. HPSv2Ranker(checkpoint=...): pass the weights path to whichever argument takes it
        params = inspect.signature(cls).parameters
        arg = next((a for a in ("checkpoint", "path") if a in params), None)
        ranker = cls(**({arg: cfg.ranker_weights} if arg and cfg.ranker_weights else {}), **kwargs)
    return RankerJudge(ranker, cfg.ranking)


def judge_settings(cfg: Any) -> dict[str, Any]:
    """The ranking settings that change a score (part of each item's key)."""
    from debias3d.config import to_dict

    return {
        "ranker": cfg.ranker,
        _KEY_NAMES["ranker_weights"]: cfg.ranker_weights,
        "ranking": to_dict(cfg.ranking),
    }


@dataclass(frozen=True)
class Duel:
    """Outcome of Algorithm 1 for one (x_n, x_nc) pair, both scored under t_n."""

    score_new: float
    score_orig: float
    winner: bool  # True when x_nc wins


def duel(score_new: float, score_orig: float, margin: float = 0.0) -> Duel:
    """x_nc wins when ``score_new > score_orig + margin``; a tie keeps the original (x_nc loses).

    >>> duel(1.0, 0.5).winner, duel(0.5, 0.5).winner, duel(0.6, 0.5, margin=0.2).winner
    (True, False, False)
    """
    sn, so = float(score_new), float(score_orig)
    ok = bool(np.isfinite(sn) and np.isfinite(so) and sn > so + margin)
    return Duel(sn, so, ok)


def make_pairs(new_prompt: str, source_prompt: str, result: Duel, cfg: Any) -> list[dict[str, Any]]:
    """Pairs made by one duel (Algorithm 1, many-to-many), as ``{"prompt", "pair_type", "winner"}``.

    A winning x_nc gives {x_nc, t_nc} (``pair_new_prompt``) and {x_nc, t_n} (``pair_source_prompt``);
    a losing one gives nothing unless ``keep_losers`` (then the same rows with ``winner=False``).
    """
    if not result.winner and not cfg.keep_losers:
        return []
    rows = []
    if cfg.pair_new_prompt:
        rows.append({"prompt": new_prompt, "pair_type": "new_prompt", "winner": result.winner})
    if cfg.pair_source_prompt:
        rows.append({"prompt": source_prompt, "pair_type": "source_prompt", "winner": result.winner})
    return rows


def algorithm1(
    judge: Any,
    x_n: Any,
    t_n: str,
    candidates: Sequence[tuple[str, Any]],
    cfg: Any,
) -> list[dict[str, Any]]:
    """Algorithm 1 over one source: score x_n once, duel every (t_nc, x_nc), collect the new pairs.

    Args:
        judge: ``score(mesh, prompt) -> float``.
        x_n: the original mesh; t_n its prompt.
        candidates: ``(t_nc, x_nc)`` pairs.
        cfg: a ``VisualConfig`` (margin, pair switches, keep_losers).

    Returns:
        Rows ``{"prompt", "pair_type", "winner", "mesh" (x_nc), "score_new", "score_orig", "new_prompt"}``.
    """
    s_orig = judge.score(x_n, t_n)
    rows: list[dict[str, Any]] = []
    for t_nc, x_nc in candidates:
        d = duel(judge.score(x_nc, t_n), s_orig, cfg.margin)
        for r in make_pairs(t_nc, t_n, d, cfg):
            rows.append(
                {**r, "mesh": x_nc, "score_new": d.score_new, "score_orig": d.score_orig, "new_prompt": t_nc}
            )
    return rows
