"""The ``debias3d`` command line: one typer app, thin entry points, heavy imports inside them.

``debias3d --help`` must answer in well under a second and must not import torch, so every
command imports what it needs in its own body. The same app runs under several processes as
``accelerate launch -m debias3d <command> ...``.

The same option means the same thing on every command: ``--config`` (a YAML file of the command's
config), ``--out`` (its output folder), ``--samples`` (D, samples per prompt), ``--seed`` (its help
says what it seeds), trailing ``key.sub=value`` config overrides (an explicit option wins over
them), and ``--quiet`` / ``--verbose``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup


class _DefaultRunGroup(TyperGroup):
    """A group whose bare invocation runs its hidden ``run`` command.

    So ``debias3d augment --audit A key=value`` runs the job, while ``debias3d augment status A``
    reaches the ``status`` subcommand (a positional ``overrides`` list on the group itself would
    swallow the subcommand name).
    """

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _with_verbosity(f: Callable) -> Callable:
    """``f`` with ``--quiet`` / ``--verbose`` options (every command has them)."""
    sig = inspect.signature(f, eval_str=True)

    @functools.wraps(f)
    def wrapper(*args, quiet: bool = False, verbose: bool = False, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if quiet or verbose:
            _setup_logging(verbose=verbose, quiet=quiet)
        return f(*args, **kwargs)

    extra = [
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
        inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VerboseOpt),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
    wrapper.__signature__ = sig.replace(parameters=params + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in params + extra}
    del wrapper.__wrapped__  # typer reads __signature__ / __annotations__, not the wrapped function
    return wrapper


class _Typer(typer.Typer):
    """``typer.Typer`` whose commands all take ``--quiet`` / ``--verbose``."""

    def command(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        register = super().command(*args, **kwargs)
        return lambda f: register(_with_verbosity(f))


app = _Typer(
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
world_app = _Typer(
    help="ShapeWorld, the procedural text-3D world with ground truth: sample, corpus, training.",
    no_args_is_help=True,
)
report_app = _Typer(help="Re-export reports and heatmaps from finished runs.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(report_app, name="report")

log = logging.getLogger("debias3d")

OverridesOpt = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides as key.sub=value (YAML values), applied after --config."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")]
SamplesOpt = Annotated[
    int | None, typer.Option("--samples", "-D", help="D, samples per prompt (config key samples).")
]
SampleSeedOpt = Annotated[
    int | None,
    typer.Option(help="Base seed of the samples: sample d of a prompt uses seed + d (config key seed)."),
]


def _overrides(overrides: list[str] | None, **options: object) -> list[str]:
    """The trailing ``key=value`` overrides, then one per option given (an explicit option wins)."""
    return [*(overrides or []), *(f"{k}={v}" for k, v in options.items() if v is not None)]


def _main_process() -> bool:
    """False on the other ranks of an ``accelerate launch`` run (they print no result line)."""
    return os.environ.get("RANK", "0") == "0"


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """One log format on stderr (stdout carries only a command's results), one line per record."""
    # Hugging Face libraries draw a bar for every weight load and dataset save; our own progress
    # (debias3d.progress) is enough. Read when huggingface_hub is first imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Libraries that chatter at INFO.
    for name in ("httpx", "urllib3", "datasets", "accelerate", "vtk"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _setup_logging(verbose, quiet)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn errors a user can fix into one line on stderr and exit code 1.

    Bad configs (ConfigError), bad prompt files (PromptFileError), bad data (DataError) are all
    ValueErrors; missing optional backends (e.g. TRELLIS) are ImportErrors; a path the system
    refuses (missing, too long, not permitted, a folder where a file is needed) is an OSError, whose
    path is shortened to keep the message on one line.
    """
    try:
        yield
    except (ValueError, ImportError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        if e.filename is not None and e.strerror:
            name = str(e.filename)
            name = name if len(name) <= 120 else f"{name[:100]}... ({len(name)} characters)"
            raise _fail(f"{name}: {e.strerror}") from None
        raise _fail(str(e)) from None


def _load(cls: type, config: Path | None, overrides: list[str] | None):  # noqa: ANN202
    from debias3d.config import load_config

    with _user_errors():
        return load_config(cls, config, overrides or [])


# --------------------------------------------------------------------------------------- world
@world_app.command("sample")
def world_sample(
    out: OutOpt = Path("shapeworld_sample"),
    n: Annotated[int, typer.Option("--n", help="Number of prompts to sample.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the sampled prompts and their shapes.")] = 0,
    category: Annotated[
        str | None, typer.Option(help="Only this category (basic, refined, ..., imaginative).")
    ] = None,
    image_size: Annotated[int, typer.Option(help="Thumbnail size in the contact sheet.")] = 160,
) -> None:
    """Sample ShapeWorld prompts, build their shapes, write GLB meshes and a contact-sheet PNG."""
    from debias3d.render.sheet import write_sample

    if n < 1:
        raise _fail("--n must be at least 1")
    with _user_errors():
        paths = write_sample(out, n=n, seed=seed, category=category, image_size=image_size)
    typer.echo(f"wrote {len(paths['meshes'])} meshes, {paths['sheet']} and {paths['prompts']}")


@world_app.command("corpus")
def world_corpus(
    out: OutOpt = Path("shapeworld_corpus"),
    config: ConfigOpt = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the corpus prompts, jitter and calibration (config key seed).")
    ] = None,
    overrides: OverridesOpt = None,
) -> None:
    """Write a (skewed) ShapeWorld text-shape corpus as a HF dataset (save_to_disk)."""
    from debias3d.data.shapeworld.corpus import CorpusConfig, write_corpus

    cfg = _load(CorpusConfig, config, _overrides(overrides, seed=seed))
    with _user_errors():
        path = write_corpus(cfg, out)
    typer.echo(f"wrote corpus of {cfg.n} pairs to {path}")


@world_app.command("train-backbone")
def world_train_backbone(
    out: OutOpt = Path("runs/backbone"),
    config: ConfigOpt = None,
    corpus: Annotated[
        Path | None, typer.Option(help="Existing corpus folder; written from the config if omitted.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of init, batches, noise and t (config key seed).")
    ] = None,
    overrides: OverridesOpt = None,
) -> None:
    """Train both mini-TRELLIS flow stages on the ShapeWorld corpus (resumes from out/checkpoints)."""
    from debias3d.models.backbone.train import BackboneTrainConfig, train_backbone

    cfg = _load(BackboneTrainConfig, config, _overrides(overrides, seed=seed))
    with _user_errors():
        train_backbone(cfg, corpus, out)


@world_app.command("fidelity")
def world_fidelity(
    out: OutOpt = Path("fidelity"),
    config: ConfigOpt = None,
    samples: SamplesOpt = None,
    adapter: Annotated[
        Path | None, typer.Option(help="A LoRA adapter folder to apply (config key adapter).")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Generator weights folder (default: the shipped model; config key generator_weights)."
        ),
    ] = None,
    per_category: Annotated[
        int | None, typer.Option(help="Evaluation prompts per category (config key per_category).")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Base seed of the samples (sample d of a prompt uses seed + d) and seed of the "
            "evaluation prompt set (config key seed)."
        ),
    ] = None,
    overrides: OverridesOpt = None,
) -> None:
    """Measure the generator against ShapeWorld ground truth: per-word and per-category fidelity."""
    from debias3d.eval.fidelity import FidelityConfig, fidelity_command

    opts = {"samples": samples, "adapter": adapter, "generator_weights": weights}
    cfg = _load(FidelityConfig, config, _overrides(overrides, per_category=per_category, seed=seed, **opts))
    with _user_errors():
        fidelity_command(cfg, out)


@world_app.command("train-evaluator")
def world_train_evaluator(
    out: OutOpt = Path("runs/evaluator"),
    config: ConfigOpt = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of folds, init and batches (config key train.seed).")
    ] = None,
    overrides: OverridesOpt = None,
) -> None:
    """Train the HyperScore-style evaluator on ShapeWorld ratings (5 folds split by prompt, SRCC/PLCC)."""
    from debias3d.models.evaluator.train import train_evaluator_command

    with _user_errors():
        train_evaluator_command(config, _overrides(overrides, **{"train.seed": seed}), out)


# ------------------------------------------------------------------------------------ generate
@app.command("generate")
def generate(
    prompts: Annotated[
        list[str], typer.Argument(help="Prompts, or one path to a prompt file (txt/csv/json/jsonl).")
    ],
    out: OutOpt = Path("generated"),
    samples: Annotated[int, typer.Option("--samples", "-D", help="D, samples per prompt.")] = 4,
    seed: Annotated[
        int, typer.Option(help="Base seed of the samples: sample d of a prompt uses seed + d.")
    ] = 0,
    generator: Annotated[str, typer.Option(help="Generator backend name.")] = "mini-trellis",
    weights: Annotated[
        Path | None, typer.Option(help="Weights folder (default: the one --adapter records, else shipped).")
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="A LoRA adapter folder to apply.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Mesh format: glb, obj or ply.")] = "glb",
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default from the model config).")] = None,
    cfg_strength: Annotated[float | None, typer.Option("--cfg", help="CFG strength.")] = None,
    refocus: Annotated[
        list[str] | None,
        typer.Option(help="WORD=FACTOR: scale the cross-attention to WORD's tokens (repeatable)."),
    ] = None,
    refocus_audit: Annotated[
        Path | None, typer.Option(help="Audit folder: refocus each prompt's neglected word (w_l).")
    ] = None,
    refocus_factor: Annotated[float, typer.Option(help="Factor for --refocus-audit.")] = 2.0,
    refocus_interval: Annotated[
        str, typer.Option(help="Sampling times LO,HI (t = 1 is noise) that are refocused.")
    ] = "0,1",
    refocus_stages: Annotated[str, typer.Option(help="Comma-separated stages to refocus.")] = "stage1,stage2",
) -> None:
    """Generate meshes for prompts with a registered generator (default: the embedded mini TRELLIS)."""
    from debias3d.models.backbone.cli import generate_command

    if fmt not in ("glb", "obj", "ply"):
        raise _fail(f"--format must be glb, obj or ply, got {fmt!r}")
    if samples < 1:
        raise _fail("--samples must be at least 1")
    with _user_errors():
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
            refocus=refocus or [],
            refocus_audit=refocus_audit,
            refocus_factor=refocus_factor,
            refocus_interval=refocus_interval,
            refocus_stages=refocus_stages,
        )


# --------------------------------------------------------------------------------- the loop
@app.command("audit")
def audit(
    prompts: Annotated[
        Path,
        typer.Option(
            "--prompts", "-p", help="Prompt file (txt/csv/tsv/json/jsonl) or T3Bench/MATE-3D folder."
        ),
    ],
    config: ConfigOpt = None,
    out: OutOpt = Path("audit"),
    samples: SamplesOpt = None,
    seed: SampleSeedOpt = None,
    resume: Annotated[bool, typer.Option(help="Skip prompts already done in --out.")] = False,
    view_contradictions: Annotated[
        bool, typer.Option(help="Also run the D-SDS view-prompt contradiction (PMI) audit.")
    ] = False,
    overrides: OverridesOpt = None,
) -> None:
    """Localize and quantize word-level bias: generate D samples per prompt, score, attribute to words.

    Writes summary.json, prompts.parquet (q_l, w_h, w_l), words.parquet, samples.parquet, meshes/,
    heatmaps/ and report.html. For several processes: `accelerate launch -m debias3d audit ...`.
    """
    from debias3d.bias_audit.cli import audit_command

    with _user_errors():
        summary = audit_command(
            prompts,
            config=config,
            overrides=_overrides(overrides, samples=samples, seed=seed),
            out=out,
            resume=resume,
            view_contradictions=view_contradictions,
        )
    outcome = summary.get("outcome") if isinstance(summary, dict) else None
    if not _main_process():
        return
    if outcome:
        typer.echo(f"audit: {outcome['line']} -> {out / 'report.html'}")
        if not outcome["audited"]:
            raise _fail("no prompt could be audited (see issues in summary.json)", code=3)
    else:
        n = summary.get("n_prompts", "?") if isinstance(summary, dict) else "?"
        typer.echo(f"audit: {n} prompts -> {out / 'report.html'}")


augment_app = _Typer(
    help=(
        "Build new text-3D pairs: an LLM writes contexts that keep w_h/w_l, a filter rejects bad "
        "prompts, an external generator makes meshes, a ranker keeps winners (Algorithm 1). "
        "Resumable: re-running skips finished items. `debias3d augment --audit A ...` is "
        "`debias3d augment run --audit A ...`."
    ),
    cls=_DefaultRunGroup,
    no_args_is_help=False,
)
app.add_typer(augment_app, name="augment")


@augment_app.command("run")
def augment(
    audit: Annotated[Path | None, typer.Option(help="Audit folder (prompts.parquet with w_h/w_l).")] = None,
    config: ConfigOpt = None,
    out: OutOpt = Path("aug"),
    seed: Annotated[
        int | None, typer.Option(help="Global seed; every item derives its own from it (config key seed).")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="Re-run items recorded as failed.")] = False,
    overrides: OverridesOpt = None,
) -> None:
    """Run (or resume) an augmentation job: `debias3d augment --audit audit/ --config ... --out aug/`.

    Also: `debias3d augment status aug/` prints a job's progress.
    """
    if audit is None:
        raise _fail("--audit is required (the folder written by `debias3d audit`)")
    from debias3d.augment.pipeline import augment_command

    with _user_errors():
        summary = augment_command(
            audit, config, _overrides(overrides, seed=seed), out, retry_failed=retry_failed
        )
    if not _main_process():
        return
    typer.echo(f"augment: {summary['outcome']['line']}")
    typer.echo(
        f"augment: pairs in {out / 'pairs'}, reasons in {out / 'rejected.jsonl'}, report {out / 'report.html'}"
    )
    if not summary["pairs"]["rows"]:
        # the outputs are written, but nothing to fine-tune on: a script must not go on silently
        raise _fail("no pairs came out (see rejected.jsonl for every reason)", code=3)


@augment_app.command("status")
def augment_status(out: Annotated[Path, typer.Argument(help="Augmentation output folder.")]) -> None:
    """Print the progress of an augmentation job."""
    from debias3d.augment.pipeline import status_command

    with _user_errors():
        typer.echo(status_command(out))


finetune_app = _Typer(
    help=(
        "LoRA fine-tuning of the generator's flow transformers on augmented pairs (peft + accelerate). "
        "In-process for one process; with --accelerate-config it re-launches through `accelerate launch`. "
        "`debias3d finetune --config C ...` is `debias3d finetune run --config C ...`."
    ),
    cls=_DefaultRunGroup,
    no_args_is_help=False,
)
app.add_typer(finetune_app, name="finetune")


@finetune_app.command("run")
def finetune(
    config: ConfigOpt = None,
    out: OutOpt = Path("runs/finetune"),
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of LoRA init, data order, noise, t and dropout (config key train.seed)."),
    ] = None,
    accelerate_config: Annotated[
        Path | None, typer.Option(help="An accelerate config (configs/accelerate/*.yaml) to launch with.")
    ] = None,
    resume_from: Annotated[str | None, typer.Option(help="'latest' or a checkpoint-N folder.")] = None,
    overrides: OverridesOpt = None,
) -> None:
    """Fine-tune: `debias3d finetune --config configs/shapeworld/finetune.yaml --out ft/ data.pairs=aug/pairs`.

    Also: `debias3d finetune merge --adapter ft/ --out merged/` writes merged safetensors.
    """
    from debias3d.finetune import finetune_command

    with _user_errors():
        path = finetune_command(
            config,
            _overrides(overrides, **{"train.seed": seed}),
            out,
            accelerate_config=accelerate_config,
            resume_from=resume_from,
        )
    if _main_process():
        typer.echo(f"adapter written to {path}")


@finetune_app.command("merge")
def finetune_merge(
    adapter: Annotated[Path, typer.Option(help="Adapter folder written by `debias3d finetune`.")],
    out: OutOpt = Path("merged"),
    base: Annotated[str | None, typer.Option(help="Base weights (default: recorded in the adapter).")] = None,
    device: Annotated[str, typer.Option(help="torch device of the merge.")] = "cpu",
) -> None:
    """Fold a LoRA adapter into its base generator and write merged safetensors."""
    from debias3d.finetune import merge_command

    with _user_errors():
        path = merge_command(adapter, out, base=base, device=device)
    typer.echo(f"merged weights written to {path}")


eval_app = _Typer(
    help=(
        "Before/after evaluation: MATE-3D-style and T3Bench-style tables, fidelity, diversity. "
        "`debias3d eval --config C ...` is `debias3d eval run --config C ...`."
    ),
    cls=_DefaultRunGroup,
    no_args_is_help=False,
)
app.add_typer(eval_app, name="eval")


@eval_app.command("run")
def evaluate(
    config: ConfigOpt = None,
    adapter: Annotated[
        Path | None, typer.Option(help="A LoRA adapter folder (the fine-tuned model).")
    ] = None,
    out: OutOpt = Path("eval"),
    samples: SamplesOpt = None,
    seed: SampleSeedOpt = None,
    resume: Annotated[bool, typer.Option(help="Reuse model runs already finished in --out.")] = False,
    overrides: OverridesOpt = None,
) -> None:
    """Evaluate base vs fine-tuned: `debias3d eval --config configs/shapeworld/eval.yaml --adapter ft/ --out eval/`.

    Writes summary.json, tables/*.csv and report.html. Also: `debias3d eval compare A/ B/`.
    """
    from debias3d.eval.pipeline import eval_command

    with _user_errors():
        eval_command(config, _overrides(overrides, samples=samples, seed=seed), adapter, out, resume=resume)
    typer.echo(f"eval: {out / 'summary.json'}, {out / 'report.html'}")


@eval_app.command("compare")
def eval_compare(
    a: Annotated[Path, typer.Argument(help="First eval (or demo) folder.")],
    b: Annotated[Path, typer.Argument(help="Second eval (or demo) folder.")],
    out: Annotated[Path | None, typer.Option(help="Also write compare.png and CSVs here.")] = None,
) -> None:
    """Print (and plot) the difference B - A between two eval runs."""
    from debias3d.eval.compare import compare_command

    with _user_errors():
        compare_command(a, b, out=out)


@app.command("demo")
def demo(
    out: OutOpt = Path("demo"),
    quick: Annotated[
        bool, typer.Option(help="A smaller run for a first look (1 to 3 minutes on a 2-core CPU).")
    ] = False,
    ablations: Annotated[
        bool,
        typer.Option(help="Also run the strategies only_wh, only_wl, random_words with the same budget."),
    ] = False,
    mitigations: Annotated[
        bool,
        typer.Option(help="Compare base, SFT, DPO, refocusing and SFT + refocusing from one audit instead."),
    ] = False,
    config: ConfigOpt = None,
    overrides: OverridesOpt = None,
) -> None:
    """Run audit -> augment -> finetune -> eval on the embedded ShapeWorld default; writes OUT/report.html."""
    from debias3d.demo import demo_command

    with _user_errors():
        demo_command(
            out,
            quick=quick,
            ablations=ablations,
            config=config,
            overrides=overrides or [],
            mitigations=mitigations,
        )
    typer.echo(f"demo: open {out / ('mitigations.html' if mitigations else 'report.html')}")


@report_app.command("heatmap")
def report_heatmap(
    audit: Annotated[Path, typer.Option("--audit", help="An audit output folder.")],
    fmt: Annotated[str, typer.Option("--format", help="png, svg, html or json.")] = "png",
    out: Annotated[Path | None, typer.Option(help="Where to write (default: AUDIT/heatmaps).")] = None,
) -> None:
    """Re-export word heatmaps from a finished audit without re-running it."""
    from debias3d.bias_audit.cli import heatmap_command

    if fmt not in ("png", "svg", "html", "json"):
        raise _fail(f"--format must be png, svg, html or json, got {fmt!r}")
    with _user_errors():
        paths = heatmap_command(audit, fmt=fmt, out=out)
    typer.echo(f"wrote {len(paths)} {fmt} file(s)")


@app.command("convert-hyperscore")
def convert_hyperscore(
    checkpoint: Annotated[Path, typer.Option(help="HyperScore's checkpoint/model.pth.")],
    clip: Annotated[
        Path, typer.Option(help="transformers openai/clip-vit-base-patch16 folder (config + tokenizer).")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write; use it as evaluator_weights.")],
) -> None:
    """Convert the released HyperScore checkpoint for `evaluator: hyperscore-clip` (weights-only load)."""
    with _user_errors():
        from debias3d.models.evaluator.clip import convert_hyperscore_checkpoint

        folder = convert_hyperscore_checkpoint(checkpoint, out, clip)
    typer.echo(f"wrote {folder}; set evaluator: hyperscore-clip and evaluator_weights: {folder}")


def run(argv: list[str] | None = None) -> int:
    """Run the app on ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    try:
        app(args=argv, prog_name="debias3d")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main() -> None:
    """Console-script entry point (also ``python -m debias3d`` and ``accelerate launch -m debias3d``)."""
    sys.exit(run())


if __name__ == "__main__":
    sys.exit(main())
