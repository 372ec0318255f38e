"""``plm``: the pipeline and each stage from the command line; every command runs a Prefect flow.

Prefect is imported only inside the commands, after the run directory is known, because its
settings (where the ephemeral database and the result cache live) are read at import time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.params import SECTIONS, PipelineParams, build_params
from plm_core.errors import PlmError


def _settable_fields() -> str:
    """Every ``--set SECTION.FIELD=VALUE`` key with its type and default, for --help."""
    lines = ["\b", "Parameters settable with --set SECTION.FIELD=VALUE (defaults before presets apply):"]
    for section in SECTIONS:
        cfg_type = PipelineParams.model_fields[section].annotation
        for f in fields(cfg_type):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            lines.append(f"  {section}.{f.name}: {type_name} = {default!r}")
    return "\n".join(lines)


app = typer.Typer(
    help="plm-pipeline: raw text corpus -> tokenizer -> pretrained and fine-tuned models in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Preset = Annotated[str, typer.Option(help="Size preset: tiny, mini, small, base.")]
RunsDir = Annotated[Path, typer.Option(help="Directory for stage outputs, caches, Ray and MLflow files.")]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override one parameter, SECTION.FIELD=VALUE (see the list below). Repeatable."
    ),
]
Force = Annotated[bool, typer.Option(help="Rerun stages even when a cached output exists.")]
Corpus = Annotated[
    list[str] | None,
    typer.Option(
        help="Corpus files, directories or globs (.txt, .jsonl, .parquet). Default: the shared Gutenberg books."
    ),
]
Family = Annotated[str, typer.Option(help="Model family: encoder (BERT), decoder (GPT), seq2seq (T5).")]
Arch = Annotated[str, typer.Option(help="Architecture within the family: albert (encoder), bart (seq2seq).")]
DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding corpus/ and glue_sst2/ (default: $PLM_DATA_DIR or ../shared/data)."),
]


def _params(
    preset: str,
    sets: list[str] | None,
    runs_dir: Path,
    force: bool,
    corpus: list[str] | None = None,
    data_dir: Path | None = None,
    family: str = "encoder",
    arch: str = "",
) -> PipelineParams:
    overrides = list(sets or [])
    if corpus:
        overrides.insert(0, "ingest.paths=" + json.dumps(corpus))
    return build_params(
        preset,
        overrides,
        data_dir=data_dir,
        family=family,
        arch=arch,
        runs_dir=str(runs_dir.resolve()),
        force=force,
    )


def _execute(runs_dir: Path, body: Callable[[], Any], preflight: Callable[[], Any] | None = None) -> None:
    """Run a flow, turning a user-facing error into one line on stderr and exit code 2.

    ``preflight`` runs cheap checks (does the corpus exist?) before Prefect starts its API, so a
    typo fails in a second instead of after the server start-up.
    """
    from flows.home import configure_prefect_home

    configure_prefect_home(runs_dir)
    try:
        if preflight is not None:
            preflight()
        result = body()
    except PlmError as err:
        typer.echo(f"plm: error: {err}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, OSError) as err:
        typer.echo(f"plm: error: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2, default=str))


def _check_corpus(params: PipelineParams) -> None:
    """Local paths must exist; a ``datasets`` source alone is checked when ingest loads it."""
    from plm_core.data.ingest import resolve_inputs
    from plm_core.errors import InputError

    if params.ingest.paths:
        resolve_inputs(params.ingest.paths)
    elif not params.ingest.hf_dataset:
        raise InputError("(no paths)", "no input paths and no hf_dataset given")


def _ref(path: Path) -> Any:
    from plm_core.errors import InputError
    from plm_core.stage import is_complete, ref_of

    if not is_complete(path):
        raise InputError(path, "not a finished stage directory (no manifest.json)")
    return ref_of(path)


@app.command(epilog=_settable_fields())
def run(
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    corpus: Corpus = None,
    sets: Sets = None,
    force: Force = False,
    compare_random_init: Annotated[
        bool, typer.Option(help="Also fine-tune from random init and report both.")
    ] = False,
    data_dir: DataDir = None,
    family: Family = "encoder",
    arch: Arch = "",
) -> None:
    """Run the whole pipeline: ingest, clean, tokenizer, pack, pretrain, finetune, eval, register."""

    def body() -> Any:
        from flows.pipeline import pipeline

        params = _params(preset, sets, runs_dir, force, corpus, data_dir, family, arch)
        return pipeline(params, compare_random_init=compare_random_init)["headline"]

    _execute(runs_dir, body, lambda: _check_corpus(_params(preset, sets, runs_dir, force, corpus, data_dir)))


@app.command(epilog=_settable_fields())
def ingest(
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    corpus: Corpus = None,
    sets: Sets = None,
    force: Force = False,
    data_dir: DataDir = None,
) -> None:
    """Read raw files into Parquet shards {id, source, text}."""

    def body() -> Any:
        from flows.ingest import ingest_flow

        p = _params(preset, sets, runs_dir, force, corpus, data_dir)
        return ingest_flow(p.ingest, p.runs_dir, force)

    _execute(runs_dir, body, lambda: _check_corpus(_params(preset, sets, runs_dir, force, corpus, data_dir)))


InDir = Annotated[Path, typer.Option(exists=False, help="A finished stage directory (holds manifest.json).")]


@app.command(epilog=_settable_fields())
def clean(
    ingest_dir: InDir,
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    sets: Sets = None,
    force: Force = False,
) -> None:
    """Normalise, strip boilerplate, filter, deduplicate and split the ingested documents."""

    def body() -> Any:
        from flows.clean import clean_flow

        p = _params(preset, sets, runs_dir, force)
        return clean_flow(_ref(ingest_dir), p.clean, p.runs_dir, force)

    _execute(runs_dir, body)


@app.command(epilog=_settable_fields())
def tokenizer(
    clean_dir: InDir,
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    sets: Sets = None,
    force: Force = False,
) -> None:
    """Train the SentencePiece tokenizer on a sample of the cleaned train split."""

    def body() -> Any:
        from flows.tokenizer import tokenizer_flow

        p = _params(preset, sets, runs_dir, force)
        return tokenizer_flow(_ref(clean_dir), p.tokenizer, p.runs_dir, force)

    _execute(runs_dir, body)


@app.command(epilog=_settable_fields())
def pack(
    clean_dir: InDir,
    tokenizer_dir: InDir,
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    sets: Sets = None,
    force: Force = False,
) -> None:
    """Tokenize the cleaned documents into memory-mappable token shards."""

    def body() -> Any:
        from flows.pack import pack_flow

        p = _params(preset, sets, runs_dir, force)
        return pack_flow(_ref(clean_dir), _ref(tokenizer_dir), p.pack, p.runs_dir, force)

    _execute(runs_dir, body)


Pretrained = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        "--pretrained-dir",
        help="Pretrained model: a pretrain stage directory or the MLflow run id of a pretrain run.",
    ),
]


def _pretrained_ref(ref: str, runs_dir: Path) -> Any:
    """The StageRef of a pretrained model given by path or MLflow run id (downloaded under runs_dir)."""
    from plm_core.stage import StageRef, is_complete, sha256_file
    from plm_core.tracking import tracking_uri
    from plm_core.train.pretrained import resolve_pretrained

    path = resolve_pretrained(ref, tracking_uri(runs_dir), cache_dir=runs_dir.resolve() / "pretrained")
    if is_complete(path):
        return _ref(path)
    # A model directory without a stage manifest (logged by plm_core directly): its weights are its digest.
    return StageRef(stage="pretrain", path=str(path), digest=sha256_file(path / "model.safetensors"))


@app.command(epilog=_settable_fields())
def pretrain(
    pack_dir: InDir,
    tokenizer_dir: InDir,
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    sets: Sets = None,
    force: Force = False,
    family: Family = "encoder",
    arch: Arch = "",
    pretrained: Pretrained = None,
) -> None:
    """Pretrain with the family's objective through Ray Train (workers from pretrain.num_workers)."""

    def body() -> Any:
        from dataclasses import replace

        from flows.pretrain import pretrain_flow

        p = _params(preset, sets, runs_dir, force, family=family, arch=arch)
        if pretrained:  # continued pretraining; resolved (and downloaded) by the driver
            p.pretrain = replace(p.pretrain, init_from=pretrained)
        return pretrain_flow(
            _ref(pack_dir), _ref(tokenizer_dir), p.model, p.pretrain, p.runs_dir, p.experiment, force
        )

    _execute(runs_dir, body)


@app.command(epilog=_settable_fields())
def finetune(
    tokenizer_dir: InDir,
    pretrained_dir: Pretrained = None,
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    sets: Sets = None,
    force: Force = False,
    data_dir: DataDir = None,
    family: Family = "encoder",
    arch: Arch = "",
) -> None:
    """Fine-tune a sequence classifier (SST-2 by default) from a pretrained checkpoint or random init."""

    def body() -> Any:
        from flows.finetune import finetune_flow

        p = _params(preset, sets, runs_dir, force, data_dir=data_dir, family=family, arch=arch)
        pre = _pretrained_ref(pretrained_dir, runs_dir) if pretrained_dir else None
        return finetune_flow(_ref(tokenizer_dir), pre, p.model, p.finetune, p.runs_dir, p.experiment, force)

    _execute(runs_dir, body)


@app.command(name="eval")
def evaluate(
    model: Annotated[Path, typer.Option(help="A fine-tune stage directory.")],
    data: Annotated[Path, typer.Option(help="Labelled jsonl/csv/tsv file to evaluate on.")],
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "sentence",
    label_field: Annotated[str, typer.Option(help="Field holding the label.")] = "label",
    runs_dir: RunsDir = Path("runs"),
    force: Force = False,
) -> None:
    """Evaluate a fine-tuned classifier on a labelled file and write a JSON report."""

    def body() -> Any:
        from flows.evaluate import evaluate_flow
        from plm_core.errors import InputError

        if not data.is_file():
            raise InputError(data, "does not exist")
        ref = evaluate_flow(
            _ref(model), str(data.resolve()), text_field, label_field, str(runs_dir.resolve()), force
        )
        return json.loads((Path(ref.path) / "report.json").read_text())

    _execute(runs_dir, body)


@app.command(epilog=_settable_fields())
def register(
    model: InDir,
    eval_dir: InDir,
    preset: Preset = "tiny",
    runs_dir: RunsDir = Path("runs"),
    sets: Sets = None,
    force: Force = False,
) -> None:
    """Log the fine-tuned model to MLflow, register a version and gate the `champion` alias."""

    def body() -> Any:
        from flows.register import register_flow

        p = _params(preset, sets, runs_dir, force)
        return register_flow(_ref(model), _ref(eval_dir), p.registry, p.runs_dir, p.experiment, force)

    _execute(runs_dir, body)


from flows.data_report import data_app  # noqa: E402  (after `app`: mounts `plm data report`)

app.add_typer(data_app, name="data")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover - `python -m flows.cli`
    main()
