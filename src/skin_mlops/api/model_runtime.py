"""The served model: load an export, validate it, warm it up, and hot-swap it.

A model comes from a :class:`ModelSource`: the export folder ``runs/skin5-current`` (a
symlink that training swaps atomically) or an MLflow registry reference
``models:/skin-classifier@champion`` (see :mod:`skin_mlops.api.registry`). The source is
asked for a cheap *key* (which version is current?) every ``MODEL_POLL_SECONDS`` and on
``POST /admin/reload``; when the key changes the candidate is:

1. read (``signature.json`` + ``class_index.json`` must agree, the preprocessing id must be
   the one this server runs, the output must be logits);
2. opened - the fp32 ``model/model.onnx`` on ONNX Runtime, or its int8 twin
   ``model/model.int8.onnx`` on the engine its quality gate ran on (``MODEL_PRECISION``,
   default ``auto``: int8 when the export has one; see :mod:`skin_mlops.runtimes`) - and
   checked: input/output names and shapes as the signature says;
3. warmed up: a batch of 1 and a batch of ``MAX_BATCH_SIZE`` run, outputs finite, and a
   row's result does not depend on its batch;

all off to the side, in a worker thread. Only then the reference
:attr:`ModelRuntime.current` is replaced (one assignment: atomic). Requests hold the
:class:`LoadedModel` they started with, so in-flight requests finish on the old session.
A candidate that fails any step is *refused*: logged, counted
(``api_model_reloads_total{result="refused"}``, ``api_model_reload_failing`` = 1), shown
in ``GET /model``, and the old model keeps serving. A refused key is not retried until the
source changes again (or an admin forces a reload); a source that cannot be asked
(:class:`ModelSourceUnavailableError`: MLflow down) is retried at every poll.

What ``/model``, ``/ready`` and ``/predict``'s 503 show (:attr:`ModelRuntime.last_error`) is
a short reason from :func:`classify_failure` - ``model source unreachable: <redacted
source>``, ``invalid model: <our own line>``, ``no exported model at ...`` - never a foreign
exception's text: that (ONNX Runtime's, MLflow's) is chained to our error and only logged,
redacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from skin_mlops import export_format
from skin_mlops.api.redact import redact_text
from skin_mlops.core.config import Settings
from skin_mlops.core.errors import ServiceUnavailableError, SkinMlopsError
from skin_mlops.preprocessing import PREPROCESSING_ID
from skin_mlops.runtimes import (
    Engine,
    Int8Arithmetic,
    Session,
    cpu_int8_arithmetic,
    engine_available,
    open_session,
)
from skin_mlops.runtimes import ort_session_options as session_options

if TYPE_CHECKING:
    from skin_mlops.api.metrics import ApiMetrics

__all__ = ["LoadedModel", "ModelRuntime", "load_model", "session_options"]

log = logging.getLogger("skin_mlops.api.model")

_BATCH_INDEPENDENCE_ATOL = 1e-4


class ModelRefusedError(SkinMlopsError):
    """A candidate model failed validation or warm-up; the old model keeps serving.

    ``str(error)`` is our own one line (shown, after ``invalid model:``, on ``/model``); a
    foreign exception behind it (ONNX Runtime's) is chained and only logged.
    """


class ModelNotFoundError(SkinMlopsError):
    """Nothing is published at the source (no such alias, version or folder)."""


class ModelSourceUnavailableError(ServiceUnavailableError):
    """The source cannot be asked right now (MLflow unreachable or refusing access).

    Retried by the poller; ``POST /admin/reload`` answers 503 with ``Retry-After``.
    """


ReloadKind = Literal["swapped", "unchanged", "refused", "unavailable", "error"]


@dataclass(frozen=True)
class LoadedModel:
    """A session ready to serve, with the signature it was exported with.

    Attributes:
        signature (ModelSignature): the export's ``signature.json``.
        session (Session): the warmed-up session (ONNX Runtime or OpenVINO).
        source_key (str): which version of the source this is (folder or registry version).
        loaded_at (float): UNIX time the model started serving.
        warmup_ms (float): time spent validating + warming up.
        precision (str): ``fp32`` (``model/model.onnx``) or ``int8`` (``model.int8.onnx``).
        engine (str): the runtime running it, ``onnxruntime`` or ``openvino``.
    """

    signature: export_format.ModelSignature
    session: Session
    source_key: str
    loaded_at: float
    warmup_ms: float
    precision: str = "fp32"
    engine: Engine = "onnxruntime"

    @property
    def version(self) -> str:
        """The model version (``signature.model_version``)."""
        return self.signature.model_version

    @property
    def labels(self) -> list[str]:
        """Class labels in output order."""
        return self.signature.labels

    @property
    def image_size(self) -> int:
        """Side ``S`` of the square model input."""
        return self.signature.image_size

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the session on ``float32[N, S, S, 3]``; returns ``float32[N, n_labels]``."""
        (out,) = self.session.run([self.signature.output.name], {self.signature.input.name: batch})
        return np.asarray(out)

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits float32[N, n_labels], ood_score float32[N] or None)`` in one call.

        The score is None for a model exported without the out-of-distribution guard.
        """
        ood = self.signature.ood
        names = [self.signature.output.name] + ([ood.output.name] if ood else [])
        out = self.session.run(names, {self.signature.input.name: batch})
        return np.asarray(out[0]), (np.asarray(out[1]) if ood else None)

    def in_distribution(self, ood_score: float | None) -> bool | None:
        """The guard's verdict on one score (None: this model has no guard)."""
        if ood_score is None or self.signature.ood is None:
            return None
        return ood_score <= self.signature.ood.threshold

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: ``softmax(logits / temperature)`` (float64, rows sum 1)."""
        return export_format.softmax(logits, self.signature.temperature)


def choose_model(
    signature: export_format.ModelSignature,
    settings: Settings,
    arithmetic: Int8Arithmetic | None = None,
) -> tuple[Path, str, Engine]:
    """``(file in the export, precision, engine)`` that ``MODEL_PRECISION`` asks for.

    An int8 twin whose full-range weights would saturate on this CPU (no VNNI:
    :func:`skin_mlops.runtimes.cpu_int8_arithmetic`, ``arithmetic`` when given) while its
    gate ran on an exact one is not what the gate measured (on dermnet5 such a model
    changed 20 of 129 predictions): ``auto`` serves fp32 instead, ``int8`` is refused.

    fp32 runs on ``FP32_ENGINE`` (ONNX Runtime unless set; OpenVINO when asked for and
    installed, else ONNX Runtime with a warning).

    Raises:
        ModelRefusedError: int8 asked for, but the export has none, its engine is
            missing or this CPU would not compute what its gate measured; a signature
            whose int8 file lies outside the export.
    """
    wanted = settings.model_precision
    if wanted == "fp32":
        return _fp32(settings)
    if signature.int8 is None:
        if wanted == "int8":
            raise ModelRefusedError(
                f"MODEL_PRECISION=int8, but model {signature.model_version} has no int8 model "
                "(it did not pass the quality gate, or was trained with --no-int8)"
            )
        return _fp32(settings)
    int8_file = Path(signature.int8.file)
    if int8_file.is_absolute() or ".." in int8_file.parts:
        raise ModelRefusedError(f"signature int8 file {int8_file} is outside the export")
    engine: Engine = "openvino" if signature.int8.engine == "openvino" else "onnxruntime"
    if not engine_available(engine):
        if wanted == "int8":
            raise ModelRefusedError(f"MODEL_PRECISION=int8 needs {engine}, not installed here")
        log.warning(
            "model %s has an int8 model but %s is missing: serving fp32",
            signature.model_version,
            engine,
        )
        return _fp32(settings)
    if not signature.int8.safe_on(arithmetic or cpu_int8_arithmetic()):
        why = (
            f"model {signature.model_version}'s int8 weights saturate on this CPU (x86 without "
            "VNNI) and its quality gate ran on a CPU that computes them exactly"
        )
        if wanted == "int8":
            raise ModelRefusedError(f"MODEL_PRECISION=int8, but {why}; serve fp32 here")
        log.warning("%s: serving fp32", why)
        return _fp32(settings)
    return int8_file, "int8", engine


def _fp32(settings: Settings) -> tuple[Path, str, Engine]:
    """The fp32 model on ``FP32_ENGINE``, or on ONNX Runtime (with a warning) when that
    engine is not installed."""
    engine: Engine = settings.fp32_engine
    if engine != "onnxruntime" and not engine_available(engine):
        log.warning("FP32_ENGINE=%s, but it is not installed: serving on onnxruntime", engine)
        engine = "onnxruntime"
    return export_format.ONNX_MODEL_FILE, "fp32", engine


def _check_spec(kind: str, expected: export_format.TensorSpec, actual: Any) -> None:
    """Refuse a model whose ONNX tensor disagrees with the signature's spec."""
    if actual.name != expected.name:
        raise ModelRefusedError(
            f"ONNX {kind} is named {actual.name!r}, signature.json says {expected.name!r}"
        )
    if actual.type != "tensor(float)":
        raise ModelRefusedError(f"ONNX {kind} has type {actual.type}, expected tensor(float)")
    shape = list(actual.shape)
    if len(shape) != len(expected.shape):
        raise ModelRefusedError(
            f"ONNX {kind} has shape {shape}, signature.json says {expected.shape}"
        )
    for got, want in zip(shape[1:], expected.shape[1:], strict=True):
        if isinstance(got, int) and want is not None and got != want:
            raise ModelRefusedError(
                f"ONNX {kind} has shape {shape}, signature.json says {expected.shape}"
            )


def load_model(folder: Path, source_key: str, settings: Settings) -> LoadedModel:
    """Load, validate and warm up the export in ``folder`` (blocking; run it in a thread).

    Raises:
        ModelRefusedError: anything wrong with the candidate, as one line.
    """
    started = time.perf_counter()
    try:
        signature = export_format.read_signature(folder)
    except SkinMlopsError as exc:
        raise ModelRefusedError(str(exc)) from None
    if signature.preprocessing_id != PREPROCESSING_ID:
        raise ModelRefusedError(
            f"model {signature.model_version} was trained with preprocessing "
            f"{signature.preprocessing_id!r}, this server runs {PREPROCESSING_ID!r}"
        )
    if signature.output_kind != "logits":
        raise ModelRefusedError(f"model output kind is {signature.output_kind!r}, expected logits")
    size = signature.image_size
    if signature.input.shape[1:] not in ([size, size, 3], [None, None, 3]):
        raise ModelRefusedError(
            f"signature input shape {signature.input.shape} is not [N, {size}, {size}, 3]"
        )
    model_file, precision, engine = choose_model(signature, settings)
    if not (folder / model_file).is_file():
        raise ModelRefusedError(f"{model_file} is missing from {folder.name}")
    try:
        session = open_session(
            folder / model_file,
            engine,
            settings.ort_intra_op_threads,
            memory_arena=settings.ort_memory_arena,
            spinning=settings.ort_spinning,
        )
    except Exception as exc:  # each engine raises its own exception types for bad files
        name = "ONNX Runtime" if engine == "onnxruntime" else "OpenVINO"
        raise ModelRefusedError(f"{name} cannot load {folder.name}/{model_file}") from exc
    n_outputs = 2 if signature.ood else 1
    if len(session.get_inputs()) != 1 or len(session.get_outputs()) != n_outputs:
        raise ModelRefusedError(
            f"the ONNX model must have exactly one input and {n_outputs} output(s)"
            + (" (logits, ood_score)" if signature.ood else "")
        )
    _check_spec("input", signature.input, session.get_inputs()[0])
    _check_spec("output", signature.output, session.get_outputs()[0])
    if signature.ood:
        _check_spec("ood output", signature.ood.output, session.get_outputs()[1])

    model = LoadedModel(signature, session, source_key, 0.0, 0.0, precision, engine)
    _warm_up(model, settings.max_batch_size)
    warmup_ms = (time.perf_counter() - started) * 1000
    return LoadedModel(signature, session, source_key, time.time(), warmup_ms, precision, engine)


def _warm_up(model: LoadedModel, max_batch_size: int) -> None:
    """Run the shapes the batcher will use and check the outputs are sane."""
    n_labels = len(model.labels)
    size = model.image_size
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (max(2, max_batch_size), size, size, 3)).astype(np.float32)
    try:
        single, single_ood = model.outputs(batch[:1])
        full, full_ood = model.outputs(batch)
    except Exception as exc:  # an ORT runtime failure on a real-shaped input
        raise ModelRefusedError(f"model {model.version} fails on a warm-up batch") from exc
    for scores, n in ((single_ood, 1), (full_ood, len(batch))):
        if scores is None:
            continue
        if scores.shape != (n,):
            raise ModelRefusedError(
                f"model {model.version} outputs ood_score of shape {scores.shape} for {n} "
                f"images, expected ({n},)"
            )
        if not np.all(np.isfinite(scores)):
            raise ModelRefusedError(f"model {model.version} outputs non-finite ood scores")
    for out, n in ((single, 1), (full, len(batch))):
        if out.shape != (n, n_labels):
            raise ModelRefusedError(
                f"model {model.version} outputs shape {out.shape} for {n} images, "
                f"expected ({n}, {n_labels}) (one logit per label)"
            )
        if not np.all(np.isfinite(out)):
            raise ModelRefusedError(f"model {model.version} outputs non-finite logits")
    if not np.allclose(single[0], full[0], atol=_BATCH_INDEPENDENCE_ATOL, rtol=1e-4):
        raise ModelRefusedError(
            f"model {model.version} gives a different result for an image depending on its batch"
        )


class ModelSource(Protocol):
    """Where models come from: a folder link or a registry alias."""

    description: str

    def current_key(self) -> str:
        """A cheap identity of the current version (changes when a new one is published)."""
        ...

    def materialize(self, key: str) -> Path:
        """A local export folder for ``key`` (downloaded first if needed)."""
        ...


class FolderSource:
    """``runs/skin5-current``: a symlink swapped atomically to ``runs/skin5/<version>/``.

    The key is the resolved folder plus the identity (inode, mtime) of its
    ``signature.json``, so republishing the same version name is noticed too.
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self.description = str(link)

    def current_key(self) -> str:
        folder = export_format.resolve_export_dir(self.link)
        try:
            stat = (folder / export_format.SIGNATURE_FILE).stat()
        except OSError:
            return f"{folder}|no-signature"
        return f"{folder}|{stat.st_ino}|{stat.st_mtime_ns}"

    def materialize(self, key: str) -> Path:
        return Path(key.split("|", 1)[0])


def make_source(settings: Settings) -> ModelSource:
    """The source named by ``MODEL_SOURCE``: ``models:/...`` (MLflow) or a folder path."""
    if settings.model_source.startswith("models:/"):
        from skin_mlops.api.registry import RegistrySource

        return RegistrySource(
            settings.model_source, settings.mlflow_tracking_uri, settings.model_cache_dir
        )
    return FolderSource(Path(settings.model_source))


INTERNAL_LOAD_ERROR = "internal error while loading the model (see the server log)"
# With polling off (MODEL_POLL_SECONDS=0), how often a service without a model retries.
START_RETRY_SECONDS = 5.0


def retry_after_s(settings: Settings) -> float:
    """When the source is asked again: the poll interval, or the start-up retry."""
    poll = settings.model_poll_seconds
    return poll if poll > 0 else START_RETRY_SECONDS


@dataclass
class ReloadOutcome:
    """What a reload attempt did.

    ``kind``: ``swapped`` (a new model serves), ``unchanged`` (already serving it),
    ``refused`` (invalid candidate, or nothing published), ``unavailable`` (the source
    cannot be asked now: retry later) or ``error`` (a bug; logged with its traceback).
    """

    reloaded: bool
    model_version: str | None
    previous_version: str | None
    detail: str
    kind: ReloadKind = "swapped"


def classify_failure(exc: BaseException) -> tuple[ReloadKind, str]:
    """``(kind, short public reason)`` for an exception raised while getting a model."""
    if isinstance(exc, ModelSourceUnavailableError):
        return "unavailable", str(exc)
    if isinstance(exc, ModelRefusedError):
        return "refused", f"invalid model: {exc}"
    if isinstance(exc, SkinMlopsError):  # our own one line: nothing published, bad export
        return "refused", str(exc)
    return "error", INTERNAL_LOAD_ERROR


@dataclass
class ModelRuntime:
    """Holds the served :class:`LoadedModel` and replaces it when the source changes.

    Attributes:
        current: the model serving new requests (``None`` until the first load succeeds).
        last_error: why the newest candidate was refused, as a short reason safe to show
            without authentication (``None`` when it serves). The full text is logged.
    """

    settings: Settings
    source: ModelSource
    metrics: ApiMetrics
    current: LoadedModel | None = None
    last_error: str | None = None
    _refused_key: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self, *, force: bool = False) -> ReloadOutcome:
        """Load the source's current version if it is new (or ``force``), then swap.

        Never raises for a bad candidate or an unreachable source: the outcome says what
        happened.
        """
        async with self._lock:
            previous = self.current.version if self.current else None
            try:
                key = await asyncio.to_thread(self.source.current_key)
            except Exception as exc:  # unreachable registry, missing folder...
                return self._refuse(None, exc, previous)
            if not force and self.current is not None and key == self.current.source_key:
                return ReloadOutcome(
                    False, previous, previous, "already serving the current model", "unchanged"
                )
            if not force and key == self._refused_key:
                return ReloadOutcome(
                    False, previous, previous, f"still refused: {self.last_error}", "refused"
                )
            try:
                folder = await asyncio.to_thread(self.source.materialize, key)
                candidate = await asyncio.to_thread(load_model, folder, key, self.settings)
            except Exception as exc:  # ModelRefusedError, download errors, anything unexpected
                # An unreachable source is retried at the next poll (no refused key).
                unavailable = isinstance(exc, ModelSourceUnavailableError)
                return self._refuse(None if unavailable else key, exc, previous)
            self.current = candidate  # the atomic swap
            self.last_error = None
            self._refused_key = None
            self.metrics.reloads.labels(result="success").inc()
            self.metrics.reload_failing.set(0)
            signature = candidate.signature
            shares = {
                label: signature.metrics[f"train_share_{label}"]
                for label in signature.labels
                if f"train_share_{label}" in signature.metrics
            }
            self.metrics.set_model(
                candidate.version,
                signature.backbone,
                shares,
                labels=list(signature.labels),
                precision=candidate.precision,
                engine=candidate.engine,
            )
            log.info(
                "serving model %s (backbone %s, %s on %s) from %s; validated + warmed up in "
                "%.0f ms",
                candidate.version,
                candidate.signature.backbone,
                candidate.precision,
                candidate.engine,
                self.source.description,
                candidate.warmup_ms,
            )
            return ReloadOutcome(True, candidate.version, previous, "model swapped in")

    def _refuse(self, key: str | None, exc: BaseException, previous: str | None) -> ReloadOutcome:
        kind, reason = classify_failure(exc)
        repeated = reason == self.last_error  # e.g. the link is still missing at every poll
        self.last_error = reason
        self._refused_key = key
        self.metrics.reload_failing.set(1)
        verb = "unavailable" if kind == "unavailable" else "refused"
        outcome = ReloadOutcome(False, previous, previous, f"{verb}: {reason}", kind)
        if repeated:
            return outcome
        self.metrics.reloads.labels(result="refused").inc()
        if kind == "error":  # a bug: the traceback, for whoever reads the log
            log.error("%s; still serving %s", reason, previous, exc_info=exc)
            return outcome
        cause = exc.__cause__  # e.g. ONNX Runtime's own message, for the log only
        because = f" ({redact_text(f'{type(cause).__name__}: {cause}')[:500]})" if cause else ""
        if previous is None:
            log.warning("no model to serve yet: %s%s", reason, because)
        else:
            log.error("new model refused, still serving %s: %s%s", previous, reason, because)
        return outcome

    async def poll_forever(self) -> None:
        """Check the source every ``MODEL_POLL_SECONDS`` (cancel the task to stop).

        With polling off (0), the source is still retried every ``START_RETRY_SECONDS``
        until a first model serves (a registry that was down at start-up), then the task
        ends.
        """
        interval = self.settings.model_poll_seconds
        while interval > 0 or self.current is None:
            await asyncio.sleep(interval if interval > 0 else START_RETRY_SECONDS)
            try:
                await self.reload()
            except Exception:  # never let the poller die
                log.exception("model poll failed")
