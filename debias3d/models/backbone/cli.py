"""Implementation of ``debias3d generate`` (the typer command in :mod:`debias3d.cli` stays thin)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from debias3d.models.generator import GeneratorSpec, build_generator

logger = logging.getLogger(__name__)

__all__ = ["MIN_VOXELS", "generate_command"]

#: Fewer occupied voxels than this and ``generate`` warns that a sample is (almost) empty.
MIN_VOXELS = 4


def _is_file(text: str) -> bool:
    """``Path(text).is_file()``, False for strings no file system accepts as a path (too long, NUL)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _read_prompts(prompts: list[str]) -> list[str]:
    """The prompts given on the command line, or those of one prompt file.

    Raises:
        ValueError: a prompt that is empty or only whitespace (it would sample the unconditional
            model), naming its position.
    """
    if len(prompts) == 1 and _is_file(prompts[0]):
        from debias3d.data import prompts as prompt_io

        loaded = prompt_io.load_prompts(prompts[0])
        return [getattr(p, "prompt", getattr(p, "text", p)) for p in loaded]
    if not prompts:
        raise ValueError("no prompts given")
    for i, text in enumerate(prompts):
        if not text.strip():
            raise ValueError(
                f"prompt {i + 1} of {len(prompts)} is empty: give a text (an empty prompt would sample "
                "the unconditional model)"
            )
    return list(prompts)


def _warn_truncated(texts: list[str], gen) -> None:  # noqa: ANN001
    """Warn, per prompt, when the generator's text encoder will cut it to its token limit."""
    enc = getattr(gen, "text_encoder", None)
    tokenizer, limit = getattr(enc, "tokenizer", None), getattr(enc, "max_length", None)
    if tokenizer is None or not isinstance(limit, int):
        return
    from debias3d.data.prompts import hf_token_counter

    count = hf_token_counter(tokenizer)
    for i, text in enumerate(texts):
        n = count(text)
        if n > limit:
            logger.warning(
                "prompt %d (%r) has %d tokens; the text encoder reads only the first %d",
                i + 1,
                text if len(text) <= 60 else text[:57] + "...",
                n,
                limit,
            )


def _interval(text: str) -> tuple[float, float]:
    """``"0.5,1"`` → ``(0.5, 1.0)``; a malformed value is a one-line error naming it."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--refocus-interval {text!r}: expected LO,HI, e.g. 0.5,1") from None
    return lo, hi


def generate_command(
    prompts: list[str],
    out: Path,
    samples: int = 4,
    seed: int = 0,
    generator: str = "mini-trellis",
    weights: Path | None = None,
    adapter: Path | None = None,
    fmt: str = "glb",
    steps: int | None = None,
    cfg_strength: float | None = None,
    refocus: list[str] | None = None,
    refocus_audit: Path | None = None,
    refocus_factor: float = 2.0,
    refocus_interval: str = "0,1",
    refocus_stages: str = "stage1,stage2",
) -> list[Path]:
    """Generate ``samples`` meshes per prompt into ``out`` (``<i>_<d>.<fmt>`` + ``manifest.jsonl``).

    With ``refocus`` (``["WORD=FACTOR", ...]``, every word must occur in every prompt) or
    ``refocus_audit`` (each prompt's w_l from that audit), sampling runs under a
    :class:`~debias3d.models.refocus.Refocuser` and ``refocus.json`` records what was refocused.
    """
    import contextlib

    from .decoder import export_mesh

    texts = _read_prompts(prompts)
    refocuser = None
    if refocus or refocus_audit is not None:
        from debias3d.models.refocus import RefocusConfig, parse_refocus, targets_from_audit

        words = parse_refocus(refocus or [])
        rcfg = RefocusConfig(
            t_interval=_interval(refocus_interval),
            stages=tuple(s.strip() for s in refocus_stages.split(",") if s.strip()),
        )
        audit_targets = (
            {} if refocus_audit is None else targets_from_audit(refocus_audit, refocus_factor, texts)
        )
        for t in texts:
            if refocus_audit is not None and t not in audit_targets:
                logger.warning("refocus: prompt %r has no neglected word (w_l) in %s", t, refocus_audit)
    gen = build_generator(GeneratorSpec(generator, weights), adapter=adapter)
    _warn_truncated(texts, gen)
    if refocus or refocus_audit is not None:
        from debias3d.models.refocus import Refocuser

        targets = {t: {**audit_targets.get(t, {}), **words} for t in dict.fromkeys(texts)}
        refocuser = Refocuser(gen, {t: w for t, w in targets.items() if w}, rcfg, strict=bool(words))
    with refocuser if refocuser is not None else contextlib.nullcontext():
        assets = gen.generate(
            texts, seeds=[seed] * len(texts), num_samples=samples, steps=steps, cfg=cfg_strength
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if refocuser is not None:
        report = {
            "config": {"t_interval": rcfg.t_interval, "stages": rcfg.stages},
            "rows": refocuser.report.rows,
        }
        (out / "refocus.json").write_text(json.dumps(report, indent=2))
    paths = []
    with (out / "manifest.jsonl").open("w") as f:
        for k, a in enumerate(assets):
            i, d = divmod(k, samples)
            p = export_mesh(a.mesh, out / f"{i:04d}_{d}.{fmt}", fmt)
            paths.append(p)
            row = {"prompt": a.prompt, "seed": a.seed, "sample": d, "mesh": p.name}
            voxels = getattr(a, "voxels", None)
            if voxels is not None:
                row["voxels"] = n = int(voxels.occupancy.sum())
                if n < MIN_VOXELS:
                    logger.warning(
                        "%s: prompt %d (%r), sample %d has only %d occupied voxel(s); the generator "
                        "produced (almost) nothing for it",
                        p.name,
                        i,
                        a.prompt,
                        d,
                        n,
                    )
            f.write(json.dumps(row) + "\n")
    logger.info("wrote %d mesh%s to %s", len(paths), "" if len(paths) == 1 else "es", out)
    return paths
