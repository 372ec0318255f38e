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
    tasks: list[str] | None = None,
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
        **({"tasks": tasks} if tasks else {}),
    )


def _task_list(raw: str) -> list[str]:
    from plm_core.finetune.tasks import check_task

    names = [t.strip() for t in raw.split(",") if t.strip()]
    for name in names:
        check_task(name)
    return names


def _execute(
    runs_dir: Path,
    body: Callable[[], Any],
    preflight: Callable[[], Any] | None = None,
    footer: Callable[[], str | None] | None = None,
) -> None:
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
    last = footer() if footer is not None else None
    if last:
        typer.echo(last)


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
    tasks: Annotated[
        str, typer.Option(help="Comma-separated downstream tasks: classification, ner, qa.")
    ] = "classification",
) -> None:
    """Run the whole pipeline: ingest, clean, tokenizer, pack, pretrain, finetune, eval, register."""

    def body() -> Any:
        from flows.pipeline import pipeline

        params = _params(preset, sets, runs_dir, force, corpus, data_dir, family, arch, _task_list(tasks))
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
    task: Annotated[
        str, typer.Option(help="classification (SST-2), ner (CoNLL-2003) or qa (SQuAD); --set its section.")
    ] = "classification",
) -> None:
    """Fine-tune one task from a pretrained checkpoint (path or MLflow run id) or from random init."""

    def body() -> Any:
        from flows.finetune import finetune_flow
        from flows.params import TASK_SECTIONS
        from plm_core.finetune.tasks import check_task

        check_task(task)
        p = _params(preset, sets, runs_dir, force, data_dir=data_dir, family=family, arch=arch)
        cfg = getattr(p, TASK_SECTIONS[task])
        pre = _pretrained_ref(pretrained_dir, runs_dir) if pretrained_dir else None
        return finetune_flow(_ref(tokenizer_dir), pre, p.model, cfg, p.runs_dir, p.experiment, force)

    _execute(runs_dir, body)


@app.command(name="eval")
def evaluate(
    model: Annotated[
        str, typer.Option(help="A fine-tuned model directory, or an MLflow URI (models:/NAME@ALIAS, runs:/ID/model).")
    ],
    data: Annotated[Path, typer.Option(help="Labelled file: jsonl/csv/tsv, CoNLL, or SQuAD JSON.")],
    task: Annotated[
        str, typer.Option(help="classification, ner or qa; default: the task the model was trained for.")
    ] = "",
    text_field: Annotated[str, typer.Option(help="classification: field holding the text.")] = "",
    label_field: Annotated[str, typer.Option(help="classification: field holding the label.")] = "",
    runs_dir: RunsDir = Path("runs"),
    force: Force = False,
) -> None:
    """Evaluate a fine-tuned model on a labelled file: a JSON report, the headline metric last.

    The file is read as the model's training files were (fields, CoNLL columns) unless told otherwise."""
    state: dict[str, Any] = {}

    def body() -> Any:
        from flows.evaluate import evaluate_flow
        from plm_core.config import FinetuneConfig, with_overrides
        from plm_core.errors import ConfigError, InputError
        from plm_core.finetune.tasks import model_task
        from plm_core.models.io import load_config
        from plm_core.serving.model_uri import resolve_model_dir
        from plm_core.stage import StageRef, content_digest, file_hashes, is_complete, ref_of
        from plm_core.tracking import tracking_uri

        if not data.is_file():
            raise InputError(data, "does not exist")
        runs = runs_dir.resolve()
        model_dir = resolve_model_dir(model, runs / "downloads", tracking_uri(str(runs)))
        trained_for = model_task(model_dir)
        if task and task != trained_for:
            raise ConfigError(f"--task {task} but {model} was fine-tuned for {trained_for}")
        saved = load_config(model_dir)[1].get("finetune", {})
        known = {k: v for k, v in saved.items() if k in FinetuneConfig.__dataclass_fields__}
        cfg = with_overrides(FinetuneConfig(), **known)
        cfg = with_overrides(
            cfg, **{k: v for k, v in (("text_field", text_field), ("label_field", label_field)) if v}
        )
        if is_complete(model_dir):
            ref = ref_of(model_dir)
        else:
            ref = StageRef(stage="model", path=str(model_dir), digest=content_digest(file_hashes(model_dir)))
        out = evaluate_flow(ref, cfg, str(runs), force, data_path=str(data.resolve()))
        report = json.loads((Path(out.path) / "report.json").read_text())
        state["headline"] = f"{report['headline']}: {report[report['headline']]:.4f}"
        return report

    _execute(runs_dir, body, footer=lambda: state.get("headline"))


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
