"""Dataclass configs for every stage, and named presets.

Configs are plain dataclasses so that plm_core stays free of any orchestration library; the flows
wrap them in one pydantic model for Prefect's parameter form. Presets (``tiny`` ... ``base``) are
the litgpt habit: one registry of named sizes, overridable field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from plm_core.errors import ConfigError


@dataclass
class ModelConfig:
    """Transformer body sizes and architecture switches. ``vocab_size`` is filled from the trained
    tokenizer when 0. One config serves the three families; fields a family ignores are documented.

    family: "encoder" (BERT/ALBERT), "decoder" (GPT) or "seq2seq" (T5/BART, see ``arch``).
    """

    family: str = "encoder"
    arch: str = "bert"  # encoder: bert | albert; decoder: gpt2; seq2seq: t5 | bart
    vocab_size: int = 0
    hidden_size: int = 128
    num_layers: int = 2  # encoder layers (seq2seq: encoder side)
    num_decoder_layers: int = 0  # seq2seq decoder side; 0 = num_layers
    num_heads: int = 2
    intermediate_size: int = 512
    max_position: int = 512
    type_vocab_size: int = 2  # encoder only (segment embeddings)
    position: str = "learned"  # learned | sinusoidal | rotary | relative (T5 bucketed bias)
    norm: str = "post"  # post (BERT, BART) | pre (GPT-2, T5)
    norm_type: str = "layernorm"  # layernorm | rmsnorm (T5: scale only, no mean, no bias)
    activation: str = "gelu"  # gelu | gelu_tanh | relu | silu
    gated_ffn: bool = False  # GEGLU / SwiGLU style gate on the feed-forward
    bias: bool = True  # T5 uses no biases in linear layers
    tie_word_embeddings: bool = True
    embedding_size: int = 0  # ALBERT factorized embeddings; 0 = hidden_size
    share_layers: bool = False  # ALBERT cross-layer parameter sharing
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        allowed = {"encoder": ("bert", "albert"), "decoder": ("gpt2",), "seq2seq": ("t5", "bart")}
        if self.family not in allowed:
            raise ConfigError(f"unknown model family {self.family!r}; choose one of {sorted(allowed)}")
        if self.arch not in allowed[self.family]:
            raise ConfigError(
                f"arch {self.arch!r} does not belong to family {self.family!r}: {allowed[self.family]}"
            )


_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "small": dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
}
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "encoder": dict(family="encoder", arch="bert", max_position=512),
    "decoder": dict(
        family="decoder",
        arch="gpt2",
        max_position=1024,
        norm="pre",
        activation="gelu_tanh",
        layer_norm_eps=1e-5,
        type_vocab_size=0,
    ),
    "seq2seq": dict(
        family="seq2seq",
        arch="t5",
        max_position=512,
        position="relative",
        norm="pre",
        norm_type="rmsnorm",
        activation="relu",
        bias=False,
        layer_norm_eps=1e-6,
        type_vocab_size=0,
    ),
}
# ``base`` matches the published models so parameter counts can be checked against them:
# BERT-base (110M, vocab 30522), GPT-2 124M (vocab 50257, 1024 positions), T5-small (60M, vocab 32128).
_BASE: dict[str, dict[str, Any]] = {
    "encoder": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "decoder": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "seq2seq": dict(hidden_size=512, num_layers=6, num_decoder_layers=6, num_heads=8, intermediate_size=2048),
}

MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    family: {
        **{name: {**defaults, **size} for name, size in _SIZES.items()},
        "base": {**defaults, **_BASE[family]},
    }
    for family, defaults in _FAMILY_DEFAULTS.items()
}


# Architectures that differ from their family's defaults in more than the name.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "albert": dict(arch="albert", embedding_size=128, share_layers=True),
    "bart": dict(
        arch="bart",
        position="learned",
        norm="post",
        norm_type="layernorm",
        activation="gelu",
        bias=True,
        layer_norm_eps=1e-5,
        max_position=1024,
    ),
}


def model_preset(name: str, family: str = "encoder", **overrides: Any) -> ModelConfig:
    """Named sizes per family (``tiny``, ``mini``, ``small``, ``base``), overridable field by field;
    ``arch="albert"`` or ``arch="bart"`` also brings that architecture's switches."""
    if family not in MODEL_PRESETS:
        raise ConfigError(f"unknown model family {family!r}; choose one of {sorted(MODEL_PRESETS)}")
    if name not in MODEL_PRESETS[family]:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS[family])}")
    arch = ARCH_DEFAULTS.get(overrides.get("arch", ""), {})
    return ModelConfig(**{**MODEL_PRESETS[family][name], **arch, **overrides})


@dataclass
class IngestConfig:
    """Where the raw corpus is and how to read it."""

    paths: list[str] = field(default_factory=list)  # files, directories or globs
    text_field: str = "text"  # for .jsonl / .parquet
    id_field: str = "id"  # optional in the input; generated from file and line when absent
    max_docs: int = 0  # 0 = all; a cap for quick runs
    rows_per_shard: int = 10_000
    # "strict": invalid UTF-8 is an error naming file, line and byte offset; "replace": bad bytes
    # become U+FFFD and the record is kept and counted (counts["decode_replaced"]).
    encoding_errors: str = "strict"
    # "error": a malformed record (bad JSON, wrong types, a binary file) stops the stage naming file
    # and line; "skip": it becomes a counted reject with its reason in rejects.parquet.
    bad_records: str = "error"
    # A record larger than this is rejected as "too_large" without being decoded, so one 1 GB line
    # cannot take the memory of the whole stage.
    max_record_bytes: int = 64 * 1024 * 1024
    # A `datasets` source read alongside `paths`: a hub id ("wikitext"), a builder with data files
    # ("json" + hf_data_files) or a directory written by `Dataset.save_to_disk`.
    hf_dataset: str = ""
    hf_config: str = ""  # the dataset's configuration name, e.g. "wikitext-103-raw-v1"
    hf_split: str = "train"
    hf_data_files: list[str] = field(default_factory=list)  # for builders such as "json" / "parquet"
    hf_revision: str = ""  # a hub commit or tag; pin it, or the cache key cannot see hub changes
    hf_streaming: bool = True  # iterate records as they download instead of converting the whole set


@dataclass
class CleanConfig:
    """Normalisation, filters, dedup and the train/validation split."""

    min_chars: int = 200
    max_chars: int = 50_000_000
    strip_gutenberg: bool = True
    exact_dedup: bool = True
    validation_fraction: float = 0.02
    split_seed: int = 0
    target_shard_bytes: int = 64 * 1024 * 1024
    num_workers: int = 2  # processes for the per-row-group pass (normalise, filter, hash)
    # Line-level filter: drop lines in which more than this share of the non-space characters are
    # neither letters nor digits ("* * *", "-----", ASCII art); 1.0 keeps every line.
    max_line_symbol_fraction: float = 0.5
    # Document-level quality rules (Gopher, Rae et al. 2021, section A.1.1); each reject records the
    # first rule it fails. The word limits are in whitespace-separated words; 0 = no upper limit
    # (Gopher's 100k suits web pages, not books).
    quality_filter: bool = True
    min_words: int = 50
    max_words: int = 0
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # ("#" + "..." + "…") per word
    min_alpha_word_fraction: float = 0.8  # words holding at least one letter
    min_stop_words: int = 2  # of: the be to of and that have with
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    # Shares of lines / paragraphs that repeat an earlier one of the document. Gopher uses 0.3 for
    # the counts; plays, verse and letters repeat short lines (speaker names, refrains, signatures)
    # and reach 0.42 on the Gutenberg books while their character shares stay under 0.11, so the
    # counts get 0.5 here and the character shares keep Gopher's 0.2, which is what catches spam.
    max_duplicate_line_fraction: float = 0.5
    max_duplicate_line_char_fraction: float = 0.2
    max_duplicate_paragraph_fraction: float = 0.5
    max_duplicate_paragraph_char_fraction: float = 0.2
    # Share of word characters taken by the most frequent 2-, 3- and 4-gram.
    max_top_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    # Share of word characters inside repeated 5- ... 10-grams (their second and later occurrences).
    max_duplicate_ngram_char_fraction: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )
    # Near dedup: MinHash over word n-gram shingles (lowercased, punctuation dropped) with LSH
    # banding; pairs of documents at or above this Jaccard similarity are caught (90% at exactly
    # the threshold, estimation noise decides a band just below it) and clustered.
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8
    near_dedup_ngram: int = 5
    near_dedup_num_perm: int = 128  # signature length; the estimate's std is sqrt(J(1-J)/num_perm)
    near_dedup_seed: int = 0


@dataclass
class TokenizerConfig:
    """SentencePiece training."""

    vocab_size: int = 8000
    model_type: str = "unigram"  # or "bpe"
    sample_sentences: int = 300_000  # lines sampled from the train split
    character_coverage: float = 0.9995
    byte_fallback: bool = True
    num_sentinels: int = 100  # T5 <extra_id_N>
    seed: int = 0


@dataclass
class PackConfig:
    """Tokenize and pack into memory-mappable token shards."""

    num_workers: int = 2
    batch_docs: int = 64
    # "auto": Ray tasks when RAY_ADDRESS is set (a cluster's workers read the shards themselves),
    # else a local process pool; "process" or "ray" force one.
    backend: str = "auto"


@dataclass
class PretrainConfig:
    """The Ray Train pretraining run."""

    # mlm | wwm (whole-word) | span (SpanBERT) — encoder; clm — decoder;
    # span_corruption (T5) | denoising (BART infilling + sentence permutation) — seq2seq
    objective: str = "mlm"
    sentence_objective: str = ""  # "" | nsp | sop (encoder, adds a two-segment head)
    span_geometric_p: float = 0.2  # SpanBERT span lengths ~ Geometric(p), clipped at max_span_length
    max_span_length: int = 10
    noise_density: float = 0.15  # T5 span corruption
    mean_noise_span_length: float = 3.0
    mask_ratio: float = 0.3  # BART text infilling
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    seq_len: int = 128
    batch_size: int = 32  # per worker
    max_steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    num_workers: int = 2
    use_gpu: bool = False
    checkpoint_every: int = 50
    eval_every: int = 50
    eval_batches: int = 4
    log_every: int = 10
    max_failures: int = 2
    seed: int = 0
    threads_per_worker: int = 1
    gpus_per_worker: float = 1.0  # with use_gpu
    grad_accum_steps: int = 1  # micro-batches of batch_size per update; DDP syncs only on the last
    lr_schedule: str = "linear"  # linear | cosine (after warmup_steps of linear warmup)
    min_lr_ratio: float = 0.0  # the schedule decays to lr * min_lr_ratio
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    compile: bool = False  # torch.compile the model
    strategy: str = "ddp"  # ddp | fsdp (shard parameters, gradients and optimizer state; GPU)
    peak_flops: float = 0.0  # per-device bf16 peak FLOP/s for MFU; 0 = the GPU's from plm_core.train.mfu
    init_from: str = ""  # pretrain stage directory or MLflow run id whose weights start this run


@dataclass
class FinetuneConfig:
    """Sequence classification fine-tuning (SST-2 by default)."""

    task: str = "classification"
    train_path: str = ""
    dev_path: str = ""  # model selection (best checkpoint, early stopping)
    eval_path: str = ""  # the evaluate stage's file; "" = dev_path
    text_field: str = "sentence"
    label_field: str = "label"
    max_len: int = 64
    batch_size: int = 32
    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_train_examples: int = 0  # 0 = all
    seed: int = 0
    from_pretrained: bool = True
    threads: int = 2
    # qa (SQuAD; plm_core.finetune.qa): windows of max_len tokens, the context cut every doc_stride
    # tokens; with dev_path empty or equal to train_path the file is split by article title (a
    # seeded hash, eval_fraction of the articles held out).
    doc_stride: int = 128  # tokens between the starts of consecutive context windows
    max_query_len: int = 64  # question tokens kept
    max_answer_length: int = 30  # longest answer span, in tokens
    n_best: int = 20  # start/end candidates per window, and spans kept per question
    null_threshold: float = 0.0  # v2: answer "" when score_null - best_span > this
    squad_version: str = "auto"  # auto (from the file) | 1.1 | 2.0
    eval_fraction: float = 0.2  # articles held out for dev when splitting one file
    split_seed: int = 0
    # ner (CoNLL files; plm_core.finetune.ner): column indices (negative from the end), the tag
    # scheme of the files (auto | bio/iob2 | iob1 | bioes/iobes/bilou; converted to IOB2), an
    # optional fixed IOB2 label set (empty = discovered from train), "" = split on any whitespace.
    token_column: int = 0
    tag_column: int = -1
    tag_scheme: str = "auto"
    tag_labels: list[str] = field(default_factory=list)
    column_separator: str = ""
    # the fine-tuning loop (plm_core.finetune.trainer): dev evaluations without improvement
    # before stopping (0 = never stop early), and a step cap (0 = epochs decide).
    patience: int = 0
    max_steps: int = 0
    lr_schedule: str = "linear"  # after warmup: linear | cosine | constant
    evals_per_epoch: int = 4
    mixed_precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU | bf16 | no
    device: str = "auto"  # auto = cuda when available
    # classification: a second text field for sentence pairs ("" = single sentences).
    text_pair_field: str = ""
    # parameter-efficient fine-tuning (plm_core.finetune.peft): full | lora | adapter (IA3).
    method: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_embeddings: bool = True  # LoRA on the token embeddings too (see finetune/peft.py for why)
    # knowledge distillation (plm_core.finetune.distill): a fine-tuned classifier directory as
    # teacher; loss = alpha * CE + (1 - alpha) * T^2 * KL; the student keeps the teacher's sizes
    # except student_layers / student_hidden (0 = the teacher's).
    distill_teacher: str = ""
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    student_layers: int = 0
    student_hidden: int = 0
    # seq2seq classification: pooled (mean-pooled encoder + linear head) | text (T5-style
    # text-to-text: label names as decoder targets, rank classification; finetune/text2text.py).
    seq2seq_head: str = "pooled"  # pooled | text (T5-style text-to-text)


@dataclass
class RegisterConfig:
    """MLflow registration: a registered name per task, the champion gate, retries.

    ``model_name`` and ``gate_metric`` are the classifier's (the first task); NER and QA gate on
    their report's F1, the LM on pretraining validation loss (lower is better).
    ``on_new_eval_set``: what the gate does when the champion was evaluated on another eval set
    (digest differs): ``keep`` the champion, or ``promote`` the new version. Either way the
    decision is logged.
    """

    model_name: str = "plm-sst2-classifier"
    gate_metric: str = "accuracy"
    ner_model_name: str = "plm-conll-ner"
    qa_model_name: str = "plm-squad-qa"
    lm_model_name: str = "plm-lm"
    register_lm: bool = True  # a decoder pretraining run also registers its LM under lm_model_name
    on_new_eval_set: str = "keep"
    retry_attempts: int = 4
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 15.0

    def name_for(self, task: str) -> str:
        """The registered model name of ``task``."""
        names = {
            "classification": self.model_name,
            "ner": self.ner_model_name,
            "qa": self.qa_model_name,
            "lm": self.lm_model_name,
        }
        if task not in names:
            raise ConfigError(f"no registered model name for task {task!r}; known: {sorted(names)}")
        return names[task]


def with_overrides(cfg: Any, **overrides: Any) -> Any:
    """``dataclasses.replace`` that names an unknown field instead of a TypeError deep inside."""
    known = {f.name for f in fields(cfg)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"{type(cfg).__name__} has no field(s) {sorted(unknown)}")
    return replace(cfg, **overrides)
