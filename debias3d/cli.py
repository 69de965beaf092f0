"""The ``debias3d`` command line: one typer app, thin entry points, heavy imports inside them.

``debias3d --help`` must answer in well under a second and must not import torch, so every
command imports what it needs in its own body.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="debias3d",
    help=(
        "Audit text-to-3D generators for word-level semantic bias and repair it with data.\n\n"
        "The loop: audit (localize + quantize word bias) -> augment (LLM contexts, external "
        "generator, reward ranker) -> finetune (LoRA via accelerate) -> eval (before/after). "
        "Every stage reads the previous stage's output folder. `debias3d demo` runs the whole "
        "loop on the embedded ShapeWorld default."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
world_app = typer.Typer(
    help="ShapeWorld, the procedural text-3D world with ground truth: sample, corpus, training.",
    no_args_is_help=True,
)
report_app = typer.Typer(help="Re-export reports and heatmaps from finished runs.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(report_app, name="report")

log = logging.getLogger("debias3d")

OverridesOpt = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides as key.sub=value (YAML values), applied after --config."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False, markup=False)],
        force=True,
    )
    # Libraries that chatter at INFO.
    for name in ("httpx", "urllib3", "datasets", "accelerate", "vtk"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _not_yet(command: str, issue: str) -> None:
    typer.echo(
        f"debias3d {command}: not implemented yet ({issue}). "
        "See README.md, section 'Status', for what runs today.",
        err=True,
    )
    raise typer.Exit(2)


def _load(cls: type, config: Path | None, overrides: list[str] | None):  # noqa: ANN202
    from debias3d.config import ConfigError, load_config

    try:
        return load_config(cls, config, overrides or [])
    except ConfigError as e:
        raise _fail(str(e)) from None


# --------------------------------------------------------------------------------------- world
@world_app.command("sample")
def world_sample(
    out: OutOpt = Path("shapeworld_sample"),
    n: Annotated[int, typer.Option("--n", help="Number of prompts to sample.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    category: Annotated[
        str | None, typer.Option(help="Only this category (basic, refined, ..., imaginative).")
    ] = None,
    image_size: Annotated[int, typer.Option(help="Thumbnail size in the contact sheet.")] = 160,
) -> None:
    """Sample ShapeWorld prompts, build their shapes, write GLB meshes and a contact-sheet PNG."""
    from debias3d.data.shapeworld.sample import write_sample

    if n < 1:
        raise _fail("--n must be at least 1")
    try:
        paths = write_sample(out, n=n, seed=seed, category=category, image_size=image_size)
    except ValueError as e:
        raise _fail(str(e)) from None
    typer.echo(f"wrote {len(paths['meshes'])} meshes, {paths['sheet']} and {paths['prompts']}")


@world_app.command("corpus")
def world_corpus(
    out: OutOpt = Path("shapeworld_corpus"),
    config: ConfigOpt = None,
    overrides: OverridesOpt = None,
) -> None:
    """Write a (skewed) ShapeWorld text-shape corpus as a HF dataset (save_to_disk)."""
    from debias3d.data.shapeworld.corpus import CorpusConfig, write_corpus

    cfg = _load(CorpusConfig, config, overrides)
    path = write_corpus(cfg, out)
    typer.echo(f"wrote corpus of {cfg.n} pairs to {path}")


@world_app.command("train-backbone")
def world_train_backbone(
    out: OutOpt = Path("runs/backbone"),
    config: ConfigOpt = None,
    corpus: Annotated[
        Path | None, typer.Option(help="Existing corpus folder; written from the config if omitted.")
    ] = None,
    overrides: OverridesOpt = None,
) -> None:
    """Train both mini-TRELLIS flow stages on the ShapeWorld corpus (resumes from out/checkpoints)."""
    from debias3d.models.backbone.train import BackboneTrainConfig, train_backbone

    cfg = _load(BackboneTrainConfig, config, overrides)
    train_backbone(cfg, corpus, out)


@world_app.command("fidelity")
def world_fidelity(
    out: OutOpt = Path("fidelity"),
    samples: Annotated[int, typer.Option("--samples", "-D", help="Samples per prompt.")] = 4,
    adapter: Annotated[Path | None, typer.Option(help="A LoRA adapter folder to apply.")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Generator weights folder (default: the shipped model).")
    ] = None,
    per_category: Annotated[int, typer.Option(help="Evaluation prompts per category.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the evaluation prompt set.")] = 0,
) -> None:
    """Measure the generator against ShapeWorld ground truth: per-word and per-category fidelity."""
    from debias3d.eval.fidelity import main as fidelity_main

    fidelity_main(
        out=out, samples=samples, adapter=adapter, weights=weights, per_category=per_category, seed=seed
    )


@world_app.command("train-evaluator")
def world_train_evaluator() -> None:
    """Train the HyperScore-style evaluator on ShapeWorld ratings (issue 4)."""
    _not_yet("world train-evaluator", "issue 4: quality evaluator")


# ------------------------------------------------------------------------------------ generate
@app.command("generate")
def generate(
    prompts: Annotated[
        list[str], typer.Argument(help="Prompts, or one path to a prompt file (txt/csv/json/jsonl).")
    ],
    out: OutOpt = Path("generated"),
    samples: Annotated[int, typer.Option("--samples", "-D", help="Samples per prompt.")] = 4,
    seed: Annotated[int, typer.Option(help="Base seed; sample d of a prompt uses seed + d.")] = 0,
    generator: Annotated[str, typer.Option(help="Generator backend name.")] = "mini-trellis",
    weights: Annotated[Path | None, typer.Option(help="Weights folder (default: shipped).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="A LoRA adapter folder to apply.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Mesh format: glb, obj or ply.")] = "glb",
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default from the model config).")] = None,
    cfg_strength: Annotated[float | None, typer.Option("--cfg", help="CFG strength.")] = None,
) -> None:
    """Generate meshes for prompts with a registered generator (default: the embedded mini TRELLIS)."""
    from debias3d.models.backbone.cli import generate_command

    if fmt not in ("glb", "obj", "ply"):
        raise _fail(f"--format must be glb, obj or ply, got {fmt!r}")
    if samples < 1:
        raise _fail("--samples must be at least 1")
    try:
        generate_command(
            prompts,
            out=out,
            samples=samples,
            seed=seed,
            generator=generator,
            weights=weights,
            adapter=adapter,
            fmt=fmt,
            steps=steps,
            cfg_strength=cfg_strength,
        )
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise _fail(str(e)) from None


# --------------------------------------------------------------------------------- the loop
@app.command("audit", context_settings={"allow_extra_args": True})
def audit() -> None:
    """Localize and quantize word-level bias on a prompt set (issue 5)."""
    _not_yet("audit", "issue 5: bias audit")


@app.command("augment", context_settings={"allow_extra_args": True})
def augment() -> None:
    """Build new text-3D pairs with an LLM, an external generator and a ranker (issue 6)."""
    _not_yet("augment", "issue 6: augmentation jobs")


@app.command("finetune", context_settings={"allow_extra_args": True})
def finetune() -> None:
    """LoRA fine-tuning through accelerate (issue 7)."""
    _not_yet("finetune", "issue 7: LoRA fine-tuning")


@app.command("eval", context_settings={"allow_extra_args": True})
def evaluate() -> None:
    """Before/after evaluation: MATE-3D-style and T3Bench-style tables, fidelity, diversity (issue 8)."""
    _not_yet("eval", "issue 8: evaluation")


@app.command("demo", context_settings={"allow_extra_args": True})
def demo() -> None:
    """Run audit -> augment -> finetune -> eval on the embedded ShapeWorld default (issue 8)."""
    _not_yet("demo", "issue 8: the whole loop")


@report_app.command("heatmap", context_settings={"allow_extra_args": True})
def report_heatmap() -> None:
    """Re-export word heatmaps from an audit folder (issue 5)."""
    _not_yet("report heatmap", "issue 5: bias audit")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
