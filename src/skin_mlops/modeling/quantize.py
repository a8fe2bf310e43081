"""The int8 model: post-training quantization of the export, shipped only past a quality gate.

One stage, called by training after the export when asked (``skin-mlops train --int8``):

1. **prepare** - ``model/model.onnx`` with each opset domain imported once (tf2onnx and the
   head's merge both import ``ai.onnx``) and ONNX Runtime's ``quant_pre_process``
   (symbolic shapes; batch norms folded into the convolutions: without it the quantized
   model loses ~40 of 129 val predictions);
2. **quantize** the backbone only: the classifier head and the out-of-distribution guard
   (everything after the pooled features' ``Concat``) stay float32, so the guard's
   distances and the temperature-calibrated logits keep their scale. :data:`METHODS`:
   ``ort-minmax`` (the default) / ``ort-minmax-7bit`` / ``ort-minmax-u8u8`` /
   ``ort-percentile`` - ONNX Runtime's ``quantize_static`` (QDQ, per-channel weights,
   uint8 activations; :data:`ORT_RECIPES`); ``nncf`` - NNCF's post-training
   quantization with the full bias correction. Ranges come from ``calibration`` train
   photos through :func:`skin_mlops.preprocessing.preprocess_bytes`;
3. **gate** - the candidate on ``engine`` (ONNX Runtime by default: the one that runs
   these QDQ graphs fastest here) against fp32 on ONNX Runtime, on the held-out ``gate``
   photos (training passes the val photos): shipped only when its macro-F1 drops by at
   most :data:`F1_DROP_MAX` (0.005), its top-1 agrees with fp32 on at least
   :data:`AGREEMENT_MIN` (99 %) of the photos and the guard's in/out verdict on as many.
   A candidate that fails writes nothing: the export stays fp32-only and the reasons are
   returned (and logged to MLflow by training).

Measured on dermnet5 (Lite0, 288 px, 2 cores; ``benchmarks/int8_gate.py``,
``docs/serving_performance.md``): every method fails the gate on an AVX2 CPU without VNNI,
where ONNX Runtime's uint8 x int8 kernels saturate (full-range int8 weights: 20 of 129 val
predictions changed; 7-bit weights: 9; uint8 weights, exact but ~7x slower than fp32: 2,
and 4 guard verdicts). int8 there is ~1.4x faster for one image and ~2x for a batch of 32.
The spec records the weights and the CPU arithmetic the gate ran on
(:func:`skin_mlops.runtimes.cpu_int8_arithmetic`), and the API will not serve full-range
int8 weights on a saturating CPU when they were gated on an exact one.

The result is ``model/model.int8.onnx`` beside the fp32 model and an ``int8`` block in
``signature.json`` (:class:`skin_mlops.export_format.Int8Spec`) with the gate's figures; the
API serves it on the same engine when ``MODEL_PRECISION`` allows (``auto``: int8 when the
export has one). ``nncf``, ``onnx`` and the engines are imported inside functions.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from skin_mlops import export_format
from skin_mlops.core.errors import ConfigError, DataError
from skin_mlops.modeling.evaluate import macro_f1
from skin_mlops.runtimes import (
    Engine,
    Session,
    cpu_int8_arithmetic,
    engine_available,
    open_session,
)

if TYPE_CHECKING:
    from rich.console import Console

    from skin_mlops.core.config import Settings
    from skin_mlops.modeling.features import ImageRef

log = logging.getLogger(__name__)

F1_DROP_MAX = 0.005
AGREEMENT_MIN = 0.99
CALIBRATION_PHOTOS = 300
# ONNX Runtime's static QDQ recipes: (calibration, weight type, 7-bit weights). The weights
# as Int8Spec.weights names them: full-range int8 is fastest but ONNX Runtime's uint8 x int8
# kernels saturate on x86 CPUs without VNNI (runtimes.cpu_int8_arithmetic); 7-bit weights
# (reduce_range) and uint8 weights are exact on every CPU (uint8: ~7x slower than fp32 here).
ORT_RECIPES: dict[str, tuple[str, str, bool]] = {
    "ort-minmax": ("minmax", "int8", False),
    "ort-minmax-7bit": ("minmax", "int8", True),
    "ort-minmax-u8u8": ("minmax", "uint8", False),
    "ort-percentile": ("percentile", "int8", False),
}
METHODS = (*ORT_RECIPES, "nncf")
DEFAULT_METHOD = "ort-minmax"
DEFAULT_ENGINE: Engine = "onnxruntime"
_BATCH = 32


@dataclass
class GateReport:
    """The int8 candidate against fp32 on the same photos.

    Attributes:
        photos: how many gate photos were scored.
        fp32_macro_f1 / int8_macro_f1: against the photos' labels.
        top1_agreement: share of photos whose top-1 is the same; ``top1_disagreements`` the
            count.
        guard_agreement: share whose out-of-distribution verdict is the same (None: the
            model has no guard).
        max_abs_prob_diff: largest change of a calibrated probability.
        reasons: why the candidate is refused (empty: it passes).
    """

    photos: int
    fp32_macro_f1: float
    int8_macro_f1: float
    top1_agreement: float
    top1_disagreements: int
    guard_agreement: float | None
    max_abs_prob_diff: float
    reasons: list[str] = field(default_factory=list)
    # milliseconds per gate photo (batches of 32, the same process, one after the other)
    fp32_ms_per_photo: float | None = None
    int8_ms_per_photo: float | None = None

    @property
    def passed(self) -> bool:
        """Whether the candidate may ship."""
        return not self.reasons

    @property
    def f1_drop(self) -> float:
        """``fp32_macro_f1 - int8_macro_f1`` (negative: int8 scored better)."""
        return self.fp32_macro_f1 - self.int8_macro_f1

    def as_metrics(self) -> dict[str, float]:
        """MLflow metrics, prefixed ``int8_``."""
        metrics = {
            "int8_gate_photos": float(self.photos),
            "int8_gate_passed": float(self.passed),
            "int8_fp32_macro_f1": self.fp32_macro_f1,
            "int8_macro_f1": self.int8_macro_f1,
            "int8_macro_f1_drop": self.f1_drop,
            "int8_top1_agreement": self.top1_agreement,
            "int8_top1_disagreements": float(self.top1_disagreements),
            "int8_max_abs_prob_diff": self.max_abs_prob_diff,
        }
        if self.fp32_ms_per_photo is not None and self.int8_ms_per_photo is not None:
            metrics["int8_fp32_ms_per_photo"] = self.fp32_ms_per_photo
            metrics["int8_ms_per_photo"] = self.int8_ms_per_photo
        if self.guard_agreement is not None:
            metrics["int8_guard_agreement"] = self.guard_agreement
        return metrics


@dataclass
class QuantizeResult:
    """What :func:`quantize_export` did: the gate's report and, when it passed, the spec."""

    report: GateReport
    spec: export_format.Int8Spec | None
    seconds: float


# ------------------------------------------------------------------------------ graph


def prepare_model(fp32_path: Path, workdir: Path) -> Path:
    """``fp32_path`` with one import per opset domain, through ``quant_pre_process``."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        domain = opset.domain or "ai.onnx"
        if versions.setdefault(domain, opset.version) != opset.version:
            raise DataError(
                f"{fp32_path}: opset {domain} imported as {versions[domain]} and {opset.version}"
            )
    del model.opset_import[:]
    for domain, version in versions.items():
        model.opset_import.append(
            onnx.helper.make_opsetid("" if domain == "ai.onnx" else domain, version)
        )
    deduped, prepared = workdir / "deduped.onnx", workdir / "prepared.onnx"
    onnx.save(model, str(deduped))
    quant_pre_process(str(deduped), str(prepared), skip_symbolic_shape=False)
    return prepared


def float_nodes(model_path: Path, logits_output: str, ood_output: str | None) -> list[str]:
    """The nodes kept float32: the head and the guard.

    That is the last node both outputs depend on (the pooled features' ``Concat``; without
    a guard, the node producing the head's input is found the same way from the logits
    alone: the last ``GlobalAveragePool``/``ReduceMean``/``Concat`` before the logits) and
    every node downstream of it.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)

    def ancestors(tensor: str) -> list[Any]:
        seen: dict[str, Any] = {}
        stack = [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen[node.name] = node
            stack.extend(node.input)
        return list(seen.values())

    upstream = ancestors(logits_output)
    if ood_output is not None:
        guard = {node.name for node in ancestors(ood_output)}
        shared = [node for node in upstream if node.name in guard]
    else:
        shared = upstream
    pooling = [n for n in shared if n.op_type in ("Concat", "GlobalAveragePool", "ReduceMean")]
    if not pooling:
        raise DataError(f"{model_path}: no pooled-features node found to keep the head in float")
    # the pooled-features node nearest the outputs: the one with no pooling node downstream
    order = {node.name: i for i, node in enumerate(graph.node)}
    root = max(pooling, key=lambda n: order[n.name])
    seen: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(c for out in node.output for c in consumers.get(out, []))
    return sorted(seen)


def quantize_onnx(
    prepared: Path,
    calibration: np.ndarray,
    input_name: str,
    keep_float: list[str],
    output: Path,
    method: str = "ort-minmax",
) -> None:
    """Quantize ``prepared`` into ``output`` with :data:`METHODS` ``method``.

    :data:`ORT_RECIPES`: ONNX Runtime's ``quantize_static`` (QDQ, per-channel weights,
    uint8 activations, ranges calibrated in chunks of photos so that memory does not grow
    with their number). ``nncf``: NNCF's post-training quantization with the full bias
    correction.
    """
    import onnx

    if method not in METHODS:
        raise DataError(f"unknown int8 method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "nncf":
        import nncf

        def feed(batch: np.ndarray) -> dict[str, np.ndarray]:
            return {input_name: batch}

        quantized = nncf.quantize(
            onnx.load(str(prepared)),
            nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))], feed),
            subset_size=len(calibration),
            fast_bias_correction=False,
            ignored_scope=nncf.IgnoredScope(names=keep_float, validate=False),
        )
        onnx.save(quantized, str(output))
        return
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Photos(CalibrationDataReader):
        """One photo per call; ``set_range`` lets ORT calibrate in chunks."""

        def __init__(self) -> None:
            self.set_range(0, len(calibration))

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next, self._end = start_index, min(end_index, len(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= self._end:
                return None
            self._next += 1
            return {input_name: calibration[self._next - 1 : self._next]}

    calibrate, weights, seven_bit = ORT_RECIPES[method]
    chunk = max(d for d in range(1, 11) if len(calibration) % d == 0)
    quantize_static(
        str(prepared),
        str(output),
        Photos(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=seven_bit,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
        calibrate_method=(
            CalibrationMethod.MinMax if calibrate == "minmax" else CalibrationMethod.Percentile
        ),
        nodes_to_exclude=keep_float,
        extra_options={"CalibStridedMinMax": chunk} if calibrate == "minmax" else {},
    )


def check_method(method: str) -> str:
    """``method`` when it is one of :data:`METHODS`.

    Raises:
        ConfigError: it is not (said before training starts, not after).
    """
    if method not in METHODS:
        raise ConfigError(f"--int8-method {method!r} is not one of {', '.join(METHODS)}")
    return method


def weights_of(method: str) -> Literal["int8", "int8-7bit", "uint8"]:
    """:attr:`~skin_mlops.export_format.Int8Spec.weights` of ``method``'s model."""
    _calibrate, weights, seven_bit = ORT_RECIPES.get(method, ("", "int8", False))  # NNCF: int8
    if seven_bit:
        return "int8-7bit"
    return "uint8" if weights == "uint8" else "int8"


# ------------------------------------------------------------------------------ gate


def predict(
    session: Session, signature: export_format.ModelSignature, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(logits [N, K], ood_score [N] or None)`` of ``images`` in batches of 32."""
    names = [signature.output.name] + ([signature.ood.output.name] if signature.ood else [])
    logits, scores = [], []
    for start in range(0, len(images), _BATCH):
        out = session.run(names, {signature.input.name: images[start : start + _BATCH]})
        logits.append(np.asarray(out[0]))
        if signature.ood:
            scores.append(np.asarray(out[1]).reshape(-1))
    return np.concatenate(logits), (np.concatenate(scores) if scores else None)


def speed_reason(fp32_ms: float, int8_ms: float) -> str | None:
    """Why a candidate slower than fp32 is refused (None: it is not slower). uint8 weights
    on ONNX Runtime, for one, are exact but ~7x slower than fp32 here."""
    if int8_ms <= fp32_ms:
        return None
    return f"int8 is slower than fp32 here ({int8_ms:.1f} vs {fp32_ms:.1f} ms per photo)"


def _timed_predict(
    session: Session, signature: export_format.ModelSignature, images: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray | None], float]:
    """:func:`predict` and its milliseconds per photo (after one warm-up batch)."""
    predict(session, signature, images[:_BATCH])
    started = time.perf_counter()
    outputs = predict(session, signature, images)
    return outputs, (time.perf_counter() - started) * 1000 / len(images)


def gate(
    signature: export_format.ModelSignature,
    labels: np.ndarray,
    fp32: tuple[np.ndarray, np.ndarray | None],
    int8: tuple[np.ndarray, np.ndarray | None],
) -> GateReport:
    """Score the int8 outputs against fp32's on the same photos; reasons when refused."""
    (ref_logits, ref_ood), (logits, ood) = fp32, int8
    k = len(signature.labels)
    p_ref = export_format.softmax(ref_logits, signature.temperature)
    p = export_format.softmax(logits, signature.temperature)
    same = p.argmax(1) == p_ref.argmax(1)
    guard_agreement = None
    if signature.ood is not None and ood is not None and ref_ood is not None:
        threshold = signature.ood.threshold
        guard_agreement = float(((ood <= threshold) == (ref_ood <= threshold)).mean())
    report = GateReport(
        photos=len(labels),
        fp32_macro_f1=macro_f1(labels, p_ref.argmax(1), k),
        int8_macro_f1=macro_f1(labels, p.argmax(1), k),
        top1_agreement=float(same.mean()),
        top1_disagreements=int((~same).sum()),
        guard_agreement=guard_agreement,
        max_abs_prob_diff=float(np.abs(p - p_ref).max()),
    )
    if report.f1_drop > F1_DROP_MAX:
        report.reasons.append(
            f"macro-F1 drops by {report.f1_drop:.3f} ({report.fp32_macro_f1:.3f} -> "
            f"{report.int8_macro_f1:.3f}), more than {F1_DROP_MAX}"
        )
    if report.top1_agreement < AGREEMENT_MIN:
        report.reasons.append(
            f"top-1 agrees with fp32 on {report.top1_agreement:.1%} of {report.photos} photos "
            f"({report.top1_disagreements} differ), under {AGREEMENT_MIN:.0%}"
        )
    if guard_agreement is not None and guard_agreement < AGREEMENT_MIN:
        report.reasons.append(
            f"the out-of-distribution verdict agrees on {guard_agreement:.1%}, "
            f"under {AGREEMENT_MIN:.0%}"
        )
    return report


# ------------------------------------------------------------------------------ stage


def quantize_export(
    folder: Path,
    calibration: np.ndarray,
    gate_images: np.ndarray,
    gate_labels: np.ndarray,
    *,
    threads: int = 2,
    method: str = DEFAULT_METHOD,
    engine: Engine = DEFAULT_ENGINE,
    progress: Callable[[str], None] | None = None,
    require_faster: bool = True,
) -> QuantizeResult:
    """Quantize the export in ``folder``, gate it, and on success add it to the folder.

    On success ``model/model.int8.onnx`` is written and ``signature.json`` rewritten with
    its :class:`~skin_mlops.export_format.Int8Spec`; on refusal nothing in ``folder``
    changes. ``folder`` must not be serving yet (training passes its staging folder).
    With ``require_faster`` (the default) a candidate slower than fp32 on the gate photos
    is refused too: ``MODEL_PRECISION=auto`` would otherwise serve the slower model.

    Raises:
        DataError: no calibration or gate photos, or the engine is missing.
    """
    say = progress or (lambda _message: None)
    if len(calibration) == 0 or len(gate_images) == 0:
        raise DataError("int8 quantization needs calibration (train) and gate (val) photos")
    if not engine_available(engine):
        raise DataError(f"the int8 gate runs on {engine}, which is not installed")
    started = time.perf_counter()
    signature = export_format.read_signature(folder)
    fp32_path = folder / export_format.ONNX_MODEL_FILE
    with tempfile.TemporaryDirectory(prefix="skin-int8-") as tmp:
        work = Path(tmp)
        say("preparing the graph (opsets, batch norms folded)")
        prepared = prepare_model(fp32_path, work)
        keep = float_nodes(
            prepared, signature.output.name, signature.ood.output.name if signature.ood else None
        )
        say(f"quantizing on {len(calibration)} calibration photos ({len(keep)} nodes kept float)")
        candidate = work / "model.int8.onnx"
        quantize_onnx(prepared, calibration, signature.input.name, keep, candidate, method)
        say(f"gating on {len(gate_images)} photos: int8 on {engine} against fp32")
        fp32_session = open_session(fp32_path, "onnxruntime", threads)
        fp32_out, fp32_ms = _timed_predict(fp32_session, signature, gate_images)
        int8_session = open_session(candidate, engine, threads)
        int8_out, int8_ms = _timed_predict(int8_session, signature, gate_images)
        report = gate(signature, gate_labels, fp32_out, int8_out)
        report.fp32_ms_per_photo, report.int8_ms_per_photo = fp32_ms, int8_ms
        slower = speed_reason(fp32_ms, int8_ms) if require_faster else None
        if slower:
            report.reasons.append(slower)
        arithmetic = cpu_int8_arithmetic()
        if not report.passed and arithmetic == "saturating" and weights_of(method) == "int8":
            report.reasons.append(
                "this CPU has no VNNI, so ONNX Runtime's uint8 x int8 kernels saturate "
                "(7-bit weights, --int8-method ort-minmax-7bit, avoid it; a VNNI CPU is exact)"
            )
        if not report.passed:
            return QuantizeResult(report, None, time.perf_counter() - started)
        target = folder / export_format.INT8_MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(candidate), str(target))  # /tmp may be another file system
    spec = export_format.Int8Spec(
        method=method,
        engine=engine,
        calibration_photos=len(calibration),
        float_nodes=len(keep),
        gate_photos=report.photos,
        fp32_macro_f1=round(report.fp32_macro_f1, 6),
        int8_macro_f1=round(report.int8_macro_f1, 6),
        top1_agreement=round(report.top1_agreement, 6),
        guard_agreement=(
            None if report.guard_agreement is None else round(report.guard_agreement, 6)
        ),
        fp32_ms_per_photo=round(fp32_ms, 3),
        int8_ms_per_photo=round(int8_ms, 3),
        weights=weights_of(method),
        gated_on=arithmetic,
    )
    export_format.write_metadata(folder, signature.model_copy(update={"int8": spec}))
    return QuantizeResult(report, spec, time.perf_counter() - started)


def calibration_photos(train_refs: Sequence[ImageRef], image_size: int, seed: int) -> np.ndarray:
    """:data:`CALIBRATION_PHOTOS` train photos (a seeded sample), the centre view through
    ``preprocess_bytes``: what the server feeds."""
    from skin_mlops.preprocessing import preprocess_bytes

    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(train_refs), min(CALIBRATION_PHOTOS, len(train_refs)), False))
    return np.stack([preprocess_bytes(train_refs[i].load(), image_size) for i in picked])


def feature_residuals(
    backbone_onnx: Path, calibration: np.ndarray, method: str = DEFAULT_METHOD, threads: int = 2
) -> np.ndarray:
    """int8 minus fp32 pooled features ``[N, D]`` of ``calibration`` photos.

    The frozen backbone alone (``backbone_onnx``, the feature extractor training uses) is
    quantized with ``method`` on the same photos as the export will be, everything up to
    its pooled-features ``Concat`` - the same nodes the export quantizes (the residuals
    are identical to the export's int8 features minus fp32 at that node, checked on
    dermnet5) - so these are the errors the int8 model's head and guard see. Training fits
    the out-of-distribution guard with them (:func:`skin_mlops.modeling.ood.fit_mahalanobis`):
    on dermnet5 its verdicts under 7-bit int8 went from 96.1 % to 98.4 % agreement with
    fp32, with the same flagged rates (val 3.9 %, ham10000 41.4 %, non-skin 100 %). Added
    to the head's training samples they changed no top-1 flip (9 of 127 either way), so
    the head does not use them.
    """
    with tempfile.TemporaryDirectory(prefix="skin-int8-features-") as tmp:
        work = Path(tmp)
        prepared = prepare_model(backbone_onnx, work)
        fp32 = open_session(prepared, "onnxruntime", threads)
        input_name, output = fp32.get_inputs()[0].name, fp32.get_outputs()[0].name
        keep = float_nodes(prepared, output, None)
        quantize_onnx(prepared, calibration, input_name, keep, work / "int8.onnx", method)
        int8 = open_session(work / "int8.onnx", "onnxruntime", threads)
        residuals = [
            np.asarray(int8.run([output], {input_name: batch})[0])
            - np.asarray(fp32.run([output], {input_name: batch})[0])
            for batch in (calibration[i : i + _BATCH] for i in range(0, len(calibration), _BATCH))
        ]
    return np.concatenate(residuals).astype(np.float32)


def quantize_in_training(
    staging: Path,
    train_refs: Sequence[ImageRef],
    val_refs: Sequence[ImageRef],
    y_val: np.ndarray,
    image_size: int,
    *,
    seed: int,
    settings: Settings,
    console: Console,
    method: str = DEFAULT_METHOD,
    calibration: np.ndarray | None = None,
    require_faster: bool = True,
) -> QuantizeResult:
    """Training's int8 stage (``skin-mlops train --int8``) on the staged export.

    Calibrates on ``calibration`` (default :func:`calibration_photos`) and gates on the val
    photos; prints the verdict and logs :meth:`GateReport.as_metrics` to the active MLflow
    run.
    """
    import mlflow

    from skin_mlops.preprocessing import preprocess_bytes

    if calibration is None:
        calibration = calibration_photos(train_refs, image_size, seed)
    gate_images = np.stack([preprocess_bytes(ref.load(), image_size) for ref in val_refs])
    result = quantize_export(
        staging,
        calibration,
        gate_images,
        y_val,
        threads=settings.ort_intra_op_threads,
        method=method,
        require_faster=require_faster,
        progress=lambda line: console.print(f"int8: {line}", highlight=False),
    )
    report = result.report
    mlflow.log_metrics(report.as_metrics())
    mlflow.set_tags({"int8_method": method, "int8_cpu_arithmetic": cpu_int8_arithmetic()})
    figures = (
        f"macro-F1 {report.fp32_macro_f1:.3f} -> {report.int8_macro_f1:.3f}, top-1 agreement "
        f"{report.top1_agreement:.1%} on {report.photos} val photos"
    )
    if report.passed:
        console.print(f"int8 model shipped beside fp32 ({figures})", highlight=False)
    else:
        console.print(
            f"int8 model refused, the export stays fp32: {'; '.join(report.reasons)}",
            style="yellow",
            highlight=False,
        )
    return result
