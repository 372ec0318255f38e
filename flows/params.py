"""The pipeline's parameters: one typed model, usable as Prefect flow parameters (the UI renders it
as a form with these descriptions) and built from named presets on the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plm_core.config import (
    MODEL_PRESETS,
    CleanConfig,
    FinetuneConfig,
    IngestConfig,
    ModelConfig,
    PackConfig,
    PretrainConfig,
    RegisterConfig,
    TokenizerConfig,
    model_preset,
    with_overrides,
)
from plm_core.errors import ConfigError


def default_data_dir() -> Path:
    """``PLM_DATA_DIR``, else ``../shared/data`` beside the checkout (or the working directory)."""
    env = os.environ.get("PLM_DATA_DIR")
    if env:
        return Path(env)
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


class PipelineParams(BaseModel):
    """Everything one pipeline run needs. Sections mirror the stages."""

    model_config = ConfigDict(arbitrary_types_allowed=False)

    preset: str = Field("tiny", description="Named size preset the sections were built from.")
    family: str = Field(
        "encoder", description="Model family: encoder (BERT), decoder (GPT), seq2seq (T5/BART)."
    )
    runs_dir: str = Field(
        "runs", description="Where stage outputs, Ray checkpoints and MLflow's sqlite live."
    )
    force: bool = Field(False, description="Rerun every stage even when a cached output exists.")
    experiment: str = Field("plm-pipeline", description="MLflow experiment name.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Corpus location and reading.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning, dedup, split.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="SentencePiece.")
    pack: PackConfig = Field(default_factory=PackConfig, description="Tokenize and pack.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Transformer sizes.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Ray Train pretraining.")
    tasks: list[str] = Field(
        default_factory=lambda: ["classification"],
        description="Downstream tasks to fine-tune, evaluate and register: classification, ner, qa.",
    )
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Classification fine-tuning (SST-2 by default)."
    )
    ner: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(task="ner"),
        description="NER fine-tuning (CoNLL-2003 by default; evaluated on eval_path, the test split).",
    )
    qa: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(task="qa"),
        description="Extractive QA fine-tuning (SQuAD v1.1, split by article into train and eval).",
    )
    registry: RegisterConfig = Field(default_factory=RegisterConfig, description="MLflow registration.")


SECTIONS = ("ingest", "clean", "tokenizer", "pack", "model", "pretrain", "finetune", "ner", "qa", "registry")
TASK_SECTIONS = {"classification": "finetune", "ner": "ner", "qa": "qa"}


DEFAULT_OBJECTIVE = {"encoder": "mlm", "decoder": "clm", "seq2seq": "span_corruption", "bart": "denoising"}


def _preset_sections(name: str, data_dir: Path, family: str, arch: str) -> dict[str, Any]:
    corpus = str(data_dir / "corpus" / "gutenberg")
    sst2 = data_dir / "glue_sst2"
    finetune = FinetuneConfig(train_path=str(sst2 / "train.jsonl"), dev_path=str(sst2 / "dev.jsonl"))
    conll, squad = data_dir / "conll2003", str(data_dir / "squad_v1" / "dev_minus_xquad.json")
    # CPU-sized budgets (about 6 min per NER and QA fine-tuning on 2 cores); larger presets lift them.
    small_budget = name == "tiny"
    ner = FinetuneConfig(
        task="ner",
        train_path=str(conll / "train.conll"),
        dev_path=str(conll / "valid.conll"),
        eval_path=str(conll / "test.conll"),
        max_len=128,
        epochs=1 if small_budget else 3,
        lr=1e-3 if small_budget else 5e-4,
    )
    # SQuAD: only the dev set is public here; its articles are split into train and eval (qa.py), and
    # the held-out articles serve as dev too (no third split at 48 articles).
    qa = FinetuneConfig(
        task="qa",
        train_path=squad,
        dev_path=squad,
        max_len=256,
        doc_stride=128,
        epochs=1 if small_budget else 2,
        lr=1e-3 if small_budget else 5e-4,
        max_train_examples=2000 if small_budget else 0,
    )
    model = model_preset(name, family, **({"arch": arch} if arch else {}))
    objective = DEFAULT_OBJECTIVE.get(arch, DEFAULT_OBJECTIVE[family])
    if name == "tiny":
        return dict(
            ingest=IngestConfig(paths=[corpus]),
            clean=CleanConfig(),
            tokenizer=TokenizerConfig(vocab_size=8000, sample_sentences=150_000),
            pack=PackConfig(),
            model=model,
            pretrain=PretrainConfig(
                objective=objective, max_steps=200, batch_size=32, seq_len=128, lr=1e-3, warmup_steps=20
            ),
            finetune=finetune,
            ner=ner,
            qa=qa,
            registry=RegisterConfig(),
        )
    if name in ("mini", "small", "base"):
        return dict(
            ingest=IngestConfig(paths=[corpus]),
            tokenizer=TokenizerConfig(vocab_size=16000 if name == "mini" else 32000),
            model=model,
            pretrain=PretrainConfig(
                objective=objective, max_steps=5000, lr=5e-4, warmup_steps=500, use_gpu=True, num_workers=1
            ),
            finetune=finetune,
            ner=ner,
            qa=qa,
        )
    raise ConfigError(f"unknown preset {name!r}; choose one of tiny, mini, small, base")


def build_params(
    preset: str = "tiny",
    overrides: list[str] | None = None,
    data_dir: Path | None = None,
    family: str = "encoder",
    arch: str = "",
    **top: Any,
) -> PipelineParams:
    """Preset for a family (and optionally an architecture: albert, bart), then
    ``section.field=value`` overrides (values parsed as JSON when they parse)."""
    if family not in MODEL_PRESETS:
        raise ConfigError(f"unknown model family {family!r}; choose one of {sorted(MODEL_PRESETS)}")
    sections = _preset_sections(preset, data_dir or default_data_dir(), family, arch)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        section, dot, fld = key.partition(".")
        if not sep or not dot or section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE with SECTION in {SECTIONS}")
        current = sections.get(section) or PipelineParams.model_fields[section].default_factory()
        sections[section] = with_overrides(current, **{fld: _parse_value(raw, getattr(current, fld, None))})
    return PipelineParams(preset=preset, family=family, **sections, **top)


def _parse_value(raw: str, current: Any) -> Any:
    import json

    if isinstance(current, str):
        return raw
    if isinstance(current, list):
        return json.loads(raw) if raw.startswith("[") else [p for p in raw.split(",") if p]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
