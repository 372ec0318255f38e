"""MLflow registration of every task's model, with a candidate/champion gate and no half-registrations.

``log_and_register(model_dir, ...)`` reads the directory's ``config.json`` "task" and logs the
task's pyfunc ("models from code": ``serving/task_pyfunc.py``, ``plm_core`` as a code path, the
directory as the ``model_dir`` artifact) with its signature and input example, the pinned
requirements, and an HF-transformers export as the ``hf`` artifact; then registers a version.

Gate. Every new version gets alias ``candidate``; ``champion`` moves to it only when it beats
the current champion on the gate metric *evaluated on the same eval set*: each version carries
``eval_<metric>`` and ``plm.eval_set_digest`` tags, so the gate compares against what the champion
scored when it was registered, not against a run that may since have been deleted. A champion
on another eval set is not comparable; ``on_new_eval_set`` decides (``keep`` the champion, the
default, or ``promote``), and the reason is logged either way (run tags ``registry.*`` and the
version tag ``plm.gate_decision``). A champion without the metric tag keeps its alias: a human
chose it.

Failures. Every MLflow call is retried with bounded exponential backoff (``RetryPolicy``); when
the retries run out the error names the tracking URI and the call. A version is created tagged
``plm.registration=incomplete`` and marked ``complete`` only after its aliases and tags are set;
if anything fails in between, the version is deleted and the previous aliases are restored, so a
registry never holds a version that is half-registered. Should even the rollback fail, the version
keeps the ``incomplete`` tag, which the gate and the lineage walk both refuse.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from plm_core.errors import ConfigError, InputError, PlmError
from plm_core.models.io import load_config

log = logging.getLogger(__name__)
T = TypeVar("T")

CANDIDATE = "candidate"
CHAMPION = "champion"
REGISTRATION_TAG = "plm.registration"
EVAL_SET_TAG = "plm.eval_set_digest"
PACKAGE_DIR = Path(__file__).resolve().parent
SERVING_DIR = PACKAGE_DIR / "serving"
SERVING_PACKAGES = ("torch", "sentencepiece", "safetensors", "pandas", "numpy", "pyarrow")
TASK_PACKAGES = {"ner": ("seqeval",)}  # entity chunking in the NER predictor
EXAMPLE_TEXTS = ["a charming and often affecting journey .", "unflinchingly bleak and desperate"]
# Pretraining objectives of a decoder: its pretrain directory is served as an LM.
LM_OBJECTIVES = ("clm",)
# MLflow error codes that no retry can fix (the request itself is wrong).
_PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "BAD_REQUEST",
    "INVALID_STATE",
    "NOT_FOUND",
}


class RegistryError(PlmError):
    """MLflow could not be reached, or a registration failed and was rolled back."""


def pinned_requirements(task: str = "classification") -> list[str]:
    """``pkg==version`` for what the served model imports (mlflow adds itself).

    Local version labels such as ``+cpu`` are dropped: they name a wheel index, and the serving
    machine picks its own build (CPU or CUDA) of the same release.
    """
    packages = SERVING_PACKAGES + TASK_PACKAGES.get(task, ())
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in packages]


# ---------------------------------------------------------------------------------------------
# Retries


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, waits ``initial_delay * multiplier**k``
    capped at ``max_delay``. MLflow's HTTP client retries connection errors itself too
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``); this outer loop also covers the sqlite store and errors
    the HTTP layer gives up on, and turns the last failure into one clear error."""

    attempts: int = 4
    initial_delay: float = 1.0
    max_delay: float = 15.0
    multiplier: float = 2.0

    def delays(self) -> list[float]:
        return [
            min(self.max_delay, self.initial_delay * self.multiplier**k) for k in range(self.attempts - 1)
        ]


def _retryable(err: BaseException) -> bool:
    if isinstance(err, MlflowException):
        return err.error_code not in _PERMANENT
    return isinstance(err, OSError | TimeoutError | ConnectionError)


def with_retry(fn: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy) -> T:
    """``fn()``, retried on transient errors; ``RegistryError`` naming ``uri`` when they persist."""
    started = time.monotonic()
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as err:
            if not _retryable(err):
                raise
            if attempt == len(delays):
                raise RegistryError(
                    f"MLflow at {uri} failed on {what} after {policy.attempts} attempts over "
                    f"{time.monotonic() - started:.1f}s: {type(err).__name__}: {str(err)[:500]}"
                ) from err
            log.warning("MLflow %s failed (%s); retry %d in %.1fs", what, err, attempt + 1, delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class TaskSpec:
    """What registering one task needs besides the shared pyfunc (``serving/task_pyfunc.py``): an
    input example, the default gate metric and its direction, and the inference parameters
    (with the values the signature's example output is computed with)."""

    example: Callable[[Path], pd.DataFrame]
    gate_metric: str
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    example_params: dict[str, Any] = field(default_factory=dict)

    def predict(self, task: str, model_dir: Path, example: pd.DataFrame) -> pd.DataFrame:
        from plm_core.serving.frames import load_predictor, predict_frame

        return predict_frame(task, load_predictor(task, model_dir), example, self.example_params or None)


def _classification_example(model_dir: Path) -> pd.DataFrame:
    """Single sentences, or sentence pairs for a model fine-tuned on them."""
    _, extra = load_config(model_dir)
    example = pd.DataFrame({"text": EXAMPLE_TEXTS})
    if (extra.get("finetune") or {}).get("text_pair_field"):
        example["text_pair"] = ["it was a good film .", "it was a waste of time ."]
    return example


def _lm_params() -> dict[str, Any]:
    from plm_core.serving.frames import LM_PARAMS

    return dict(LM_PARAMS)


PYFUNC_FILE = "task_pyfunc.py"
TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec(_classification_example, "accuracy"),
    "ner": TaskSpec(
        lambda _: pd.DataFrame({"text": ["Alice Smith flew from Paris to Berlin .", "no names here"]}), "f1"
    ),
    "qa": TaskSpec(
        lambda _: pd.DataFrame(
            {
                "question": ["Where did Alice fly to?"],
                "context": ["Alice Smith flew from Paris to Berlin on Monday."],
            }
        ),
        "f1",
    ),
    "lm": TaskSpec(
        lambda _: pd.DataFrame({"prompt": ["To be, or not to be", "The king said"]}),
        "val_loss",
        higher_is_better=False,
        params=_lm_params(),
        example_params={"max_new_tokens": 8},
    ),
}


def model_task(model_dir: Path) -> str:
    """The registry task of a model directory: config.json "task", a decoder's CLM as ``lm``."""
    cfg, extra = load_config(model_dir)
    task = extra.get("task")
    if task in LM_OBJECTIVES and cfg.family == "decoder":
        return "lm"
    if task not in TASKS:
        raise InputError(
            Path(model_dir) / "config.json", f"task {task!r} cannot be registered; known: {sorted(TASKS)}"
        )
    return str(task)


# ---------------------------------------------------------------------------------------------
# Gate


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    champion_version: str | None


def decide_promotion(
    client: MlflowClient,
    model_name: str,
    gate_metric: str,
    value: float,
    *,
    eval_set_digest: str | None = None,
    higher_is_better: bool = True,
    on_new_eval_set: str = "keep",
) -> GateDecision:
    """Compare ``value`` with the current champion's ``eval_<gate_metric>`` version tag, on the
    same eval set (``plm.eval_set_digest``) only; another eval set is decided by ``on_new_eval_set``."""
    if on_new_eval_set not in ("keep", "promote"):
        raise ConfigError(f"on_new_eval_set must be 'keep' or 'promote', got {on_new_eval_set!r}")
    try:
        champion = client.get_registered_model(model_name).aliases.get(CHAMPION)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        champion = None
    if champion is None:
        return GateDecision(True, "no champion yet", None)
    champ = str(champion)
    tags = client.get_model_version(model_name, champ).tags
    if tags.get(REGISTRATION_TAG) == "incomplete":
        return GateDecision(True, f"champion v{champ} is an incomplete registration", champ)
    tag = tags.get(f"eval_{gate_metric}")
    if tag is None:
        return GateDecision(False, f"champion v{champ} has no eval_{gate_metric} tag", champ)
    theirs = tags.get(EVAL_SET_TAG)
    if eval_set_digest is not None and theirs != eval_set_digest:
        promote = on_new_eval_set == "promote"
        return GateDecision(
            promote,
            f"champion v{champ} was evaluated on eval set {str(theirs)[:12]}, this version on "
            f"{eval_set_digest[:12]}: not comparable; policy {on_new_eval_set!r} "
            + ("promotes" if promote else "keeps the champion"),
            champ,
        )
    best = float(tag)
    better = value > best if higher_is_better else value < best
    op = (">" if better else "<=") if higher_is_better else ("<" if better else ">=")
    return GateDecision(better, f"{gate_metric} {value:.4f} {op} champion v{champ} {best:.4f}", champ)


# ---------------------------------------------------------------------------------------------
# Logging and registration


@contextlib.contextmanager
def _run(run_id: str | None, experiment_id: str) -> Iterator[mlflow.ActiveRun]:
    """The given run (reused if it is already active, resumed otherwise) or a new one."""
    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id == run_id:
        yield active
        return
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {"experiment_id": experiment_id}
    with mlflow.start_run(nested=active is not None, **kwargs) as run:
        yield run


@contextlib.contextmanager
def _served_dir(model_dir: Path, tokenizer_dir: Path | None) -> Iterator[Path]:
    """``model_dir`` itself, or (when its tokenizer lives elsewhere, as for a pretrain directory)
    a temporary copy of its weights and config with ``tokenizer/`` added: the logged artifact
    must be self-contained."""
    if (model_dir / "tokenizer").is_dir() or tokenizer_dir is None:
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="plm-served-") as tmp:
        staged = Path(tmp) / model_dir.name
        staged.mkdir()
        for name in ("model.safetensors", "config.json", "metrics.json", "loss_curve.png"):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, staged / name)
        shutil.copytree(tokenizer_dir, staged / "tokenizer")
        yield staged


def _export_hf(model_dir: Path, into: Path) -> tuple[Path | None, str]:
    """The HF export dir and a note, or ``(None, why not)``: the export is best effort, the
    pyfunc is the registered model."""
    from plm_core.export import export_hf

    try:
        summary = export_hf(model_dir, into)
    except Exception as err:  # an architecture HF cannot express must not block the registration
        log.warning("HF export of %s skipped: %s", model_dir, err)
        return None, f"not exported: {type(err).__name__}: {err}"
    return into, f"{summary['architectures']}: {summary['note']}"


def _probe(uri: str, timeout: float = 5.0) -> None:
    """Raise ``OSError`` when an HTTP tracking server does not answer at all (any HTTP status is
    an answer: a proxy without ``/health`` still reaches the server); nothing for local stores."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return


def _find_version(client: MlflowClient, model_name: str, run_id: str, model_id: str | None) -> Any | None:
    """A version of ``model_name`` already made from this logged model (a create call whose
    answer was lost in transit), so a retry does not register it twice."""
    for v in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        if model_id is not None and getattr(v, "model_id", None) == model_id:
            return v
    return None


def log_and_register(
    model_dir: str | Path,
    *,
    tracking_uri: str,
    experiment_id: str,
    model_name: str,
    eval_metrics: dict[str, float],
    task: str | None = None,
    gate_metric: str | None = None,
    eval_set_digest: str | None = None,
    on_new_eval_set: str = "keep",
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
    tokenizer_dir: str | Path | None = None,
    artifacts: Sequence[tuple[str, str | Path]] = (),
    retry: RetryPolicy = RetryPolicy(),
) -> dict[str, Any]:
    """Log ``model_dir`` as its task's pyfunc, register a version, set ``candidate``, gate ``champion``.

    ``tags`` go on the run and the version (lineage: data digests, pretrain run id ...);
    ``artifacts`` are ``(artifact directory, local file)`` pairs logged on the run (plots);
    ``tokenizer_dir`` supplies the tokenizer of a directory that has none (a pretrain stage).
    Returns the name, version, run id, aliases, the gate's decision and the model URI.
    """
    model_dir = Path(model_dir).resolve()
    task = task or model_task(model_dir)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    if on_new_eval_set not in ("keep", "promote"):
        raise ConfigError(f"on_new_eval_set must be 'keep' or 'promote', got {on_new_eval_set!r}")
    spec = TASKS[task]
    gate_metric = gate_metric or spec.gate_metric
    if gate_metric not in eval_metrics:
        raise ConfigError(f"gate metric {gate_metric!r} is not among the eval metrics {sorted(eval_metrics)}")
    value = float(eval_metrics[gate_metric])
    client = MlflowClient(tracking_uri)

    def retried(what: str, fn: Callable[[], T]) -> T:
        return with_retry(fn, what=what, uri=tracking_uri, policy=retry)

    # Fail before writing anything when the server is not there: one plain HTTP probe per attempt,
    # so a dead server is reported after our bounded backoff, not after MLflow's own HTTP retries
    # (MLFLOW_HTTP_REQUEST_MAX_RETRIES, minutes per call) multiplied by ours.
    retried("reaching the tracking server", lambda: _probe(tracking_uri))
    retried("reading the experiment", lambda: client.get_experiment(experiment_id))
    mlflow.set_tracking_uri(tracking_uri)
    version_tags = {
        **(tags or {}),
        **{f"eval_{k}": repr(float(v)) for k, v in eval_metrics.items()},
        "gate_metric": gate_metric,
        "plm.task": task,
        **({EVAL_SET_TAG: eval_set_digest} if eval_set_digest else {}),
    }
    with (
        _served_dir(model_dir, Path(tokenizer_dir) if tokenizer_dir else None) as served,
        tempfile.TemporaryDirectory(prefix="plm-hf-") as hf_tmp,
    ):
        example = spec.example(served)
        signature = infer_signature(example, spec.predict(task, served, example), params=spec.params or None)
        hf_dir, hf_note = _export_hf(served, Path(hf_tmp) / "hf")
        with _run(run_id, experiment_id) as run:
            run_id = run.info.run_id
            info = retried(
                "logging the model",
                lambda: mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(SERVING_DIR / PYFUNC_FILE),
                    model_config={"task": task},
                    artifacts={"model_dir": str(served)},
                    code_paths=[str(PACKAGE_DIR)],
                    signature=signature,
                    input_example=example,
                    pip_requirements=pinned_requirements(task),
                    metadata={"task": task},
                ),
            )
            if hf_dir is not None:
                retried("logging the HF export", lambda: client.log_artifacts(run_id, str(hf_dir), "hf"))
            for sub, path in artifacts:
                retried(
                    f"logging {path}", lambda p=path, s=sub: client.log_artifact(run_id, str(p), s or None)
                )
            retried(
                "logging eval metrics",
                lambda: mlflow.log_metrics({f"eval_{k}": float(v) for k, v in eval_metrics.items()}),
            )
    result = _register(
        client,
        retried,
        model_name=model_name,
        model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None),
        run_id=run_id,
        version_tags={**version_tags, "plm.hf_export": hf_note[:5000]},
        run_tags=dict(tags or {}),
        decide=lambda: decide_promotion(
            client,
            model_name,
            gate_metric,
            value,
            eval_set_digest=eval_set_digest,
            higher_is_better=spec.higher_is_better,
            on_new_eval_set=on_new_eval_set,
        ),
    )
    return {**result, "task": task, "gate_metric": gate_metric, "hf_export": hf_note}


def _register(
    client: MlflowClient,
    retried: Callable[[str, Callable[[], Any]], Any],
    *,
    model_name: str,
    model_uri: str,
    model_id: str | None,
    run_id: str,
    version_tags: dict[str, str],
    run_tags: dict[str, str],
    decide: Callable[[], GateDecision],
) -> dict[str, Any]:
    """Create the version (tagged incomplete), set tags and aliases, mark it complete; on any
    failure in between delete it and put the previous aliases back."""

    def ensure_model() -> None:
        try:
            client.create_registered_model(model_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def create_version() -> Any:
        existing = _find_version(client, model_name, run_id, model_id)
        if existing is not None:
            return existing
        return client.create_model_version(
            model_name,
            model_uri,
            run_id=run_id,
            tags={**version_tags, REGISTRATION_TAG: "incomplete"},
            model_id=model_id,
        )

    retried("creating the registered model", ensure_model)
    before = dict(retried("reading aliases", lambda: client.get_registered_model(model_name)).aliases)
    mv = retried("creating the model version", create_version)
    version_id = str(mv.version)
    try:
        decision = retried("reading the champion", decide)
        retried(
            "tagging the run",
            lambda: client.log_batch(
                run_id,
                tags=[
                    mlflow.entities.RunTag(k, str(v)[:5000])
                    for k, v in {
                        **run_tags,
                        "registry.model_name": model_name,
                        "registry.version": version_id,
                        "registry.gate_metric": version_tags["gate_metric"],
                        "registry.promoted": str(decision.promote).lower(),
                        "registry.decision": decision.reason,
                        "registry.previous_champion": decision.champion_version or "",
                    }.items()
                ],
            ),
        )
        retried(
            "tagging the version",
            lambda: client.set_model_version_tag(
                model_name, version_id, "plm.gate_decision", decision.reason
            ),
        )
        retried(
            "setting alias candidate",
            lambda: client.set_registered_model_alias(model_name, CANDIDATE, version_id),
        )
        if decision.promote:
            retried(
                "setting alias champion",
                lambda: client.set_registered_model_alias(model_name, CHAMPION, version_id),
            )
        retried(
            "completing the registration",
            lambda: client.set_model_version_tag(model_name, version_id, REGISTRATION_TAG, "complete"),
        )
    except Exception as err:
        rollback = _roll_back(client, model_name, version_id, before)
        raise RegistryError(
            f"registration of {model_name} v{version_id} failed and was {rollback}: {err}"
        ) from err
    return {
        "model_name": model_name,
        "version": version_id,
        "run_id": run_id,
        "aliases": [CANDIDATE, CHAMPION] if decision.promote else [CANDIDATE],
        "promoted": decision.promote,
        "decision": decision.reason,
        "previous_champion": decision.champion_version,
        "model_uri": f"models:/{model_name}/{version_id}",
    }


def _roll_back(client: MlflowClient, model_name: str, version_id: str, before: dict[str, Any]) -> str:
    """Delete the new version and restore the aliases it took; say what could be done."""
    try:
        client.delete_model_version(model_name, version_id)
    except Exception as err:  # the version stays, tagged incomplete: the gate and lineage refuse it
        log.error("could not delete %s v%s after a failed registration: %s", model_name, version_id, err)
        return f"left tagged {REGISTRATION_TAG}=incomplete (deleting it failed too: {err})"
    for alias, previous in before.items():
        if alias in (CANDIDATE, CHAMPION):
            with contextlib.suppress(Exception):
                client.set_registered_model_alias(model_name, alias, str(previous))
    return "rolled back (version deleted, previous aliases restored)"


def log_and_register_classifier(model_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """``log_and_register`` for a classifier directory (kept for callers of the first API)."""
    kwargs.setdefault("gate_metric", "accuracy")
    return log_and_register(model_dir, task="classification", **kwargs)


def registration_summary(result: dict[str, Any]) -> str:
    """One line for logs."""
    return json.dumps({k: result[k] for k in ("model_name", "version", "aliases", "decision") if k in result})
