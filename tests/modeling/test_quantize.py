"""The int8 stage: the quality gate, the quantized twin of a real (tiny) export, serving it.

The gate is tested on outputs made to differ by a known amount; the quantizer runs for
real (ONNX Runtime's ``quantize_static``) on the tiny guarded model, and the API serves
the result on ONNX Runtime and on OpenVINO.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from skin_mlops import export_format
from skin_mlops.api.main import create_app
from skin_mlops.modeling import quantize
from skin_mlops.preprocessing import preprocess_bytes
from skin_mlops.runtimes import open_session
from utils.images import COLOURS, encode, two_tone
from utils.model_factory import (
    IMAGE_SIZE,
    LABELS,
    GuardedTinyModel,
    build_guarded_tiny_model,
    publish_tiny_export,
    signature_for,
)
from utils.servers import make_settings


@pytest.fixture(scope="module")
def guarded() -> GuardedTinyModel:
    return build_guarded_tiny_model()


def _photos(n_per_label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy two-tone photos of each label's colour, as the server preprocesses them."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, label in enumerate(COLOURS):
        for _ in range(n_per_label):
            accent = tuple(int(v) for v in rng.integers(0, 256, 3))
            data = encode(two_tone(label, accent=accent))  # type: ignore[arg-type]
            images.append(preprocess_bytes(data, IMAGE_SIZE))
            labels.append(index)
    return np.stack(images), np.array(labels)


def _signature(guarded: GuardedTinyModel) -> export_format.ModelSignature:
    return signature_for(guarded.model, "v-int8", **guarded.signature_overrides())


# --------------------------------------------------------------------------- the gate


def _logits_for(top1: np.ndarray, k: int = len(LABELS)) -> np.ndarray:
    logits = np.zeros((len(top1), k), np.float32)
    logits[np.arange(len(top1)), top1] = 5.0
    return logits


def test_the_gate_passes_a_candidate_that_changes_nothing(guarded: GuardedTinyModel) -> None:
    labels = np.arange(200) % 5
    outputs = (_logits_for(labels), np.full(200, 0.1, np.float32))

    report = quantize.gate(_signature(guarded), labels, outputs, outputs)

    assert report.passed and report.top1_agreement == 1.0 and report.f1_drop == 0.0


def test_the_gate_refuses_more_than_one_flip_in_a_hundred(guarded: GuardedTinyModel) -> None:
    labels = np.arange(129) % 5
    flipped = labels.copy()
    flipped[:2] = (labels[:2] + 1) % 5  # 2 of 129 = 98.4 % agreement, as measured on dermnet5
    scores = np.full(129, 0.1, np.float32)

    report = quantize.gate(
        _signature(guarded), labels, (_logits_for(labels), scores), (_logits_for(flipped), scores)
    )

    assert not report.passed
    assert report.top1_disagreements == 2
    assert any("top-1 agrees with fp32 on 98.4% of 129 photos" in r for r in report.reasons)


def test_the_gate_refuses_a_macro_f1_drop_even_when_top1_mostly_agrees(
    guarded: GuardedTinyModel,
) -> None:
    labels = np.arange(100) % 5
    worse = labels.copy()
    worse[0] = 1  # one flip (99 % agreement: allowed) that costs > 0.005 macro-F1
    scores = np.full(100, 0.1, np.float32)

    report = quantize.gate(
        _signature(guarded), labels, (_logits_for(labels), scores), (_logits_for(worse), scores)
    )

    assert report.top1_agreement == pytest.approx(0.99)
    assert report.f1_drop > quantize.F1_DROP_MAX
    assert [r for r in report.reasons if r.startswith("macro-F1 drops by")]


def test_the_gate_refuses_a_guard_that_changes_its_verdicts(guarded: GuardedTinyModel) -> None:
    labels = np.arange(100) % 5
    threshold = guarded.threshold
    scores = np.full(100, threshold * 0.5, np.float32)
    moved = scores.copy()
    moved[:3] = threshold * 2  # 3 photos now flagged out of distribution

    report = quantize.gate(
        _signature(guarded), labels, (_logits_for(labels), scores), (_logits_for(labels), moved)
    )

    assert report.guard_agreement == pytest.approx(0.97)
    assert any("out-of-distribution verdict" in r for r in report.reasons)


# --------------------------------------------------------------------------- the export


@pytest.fixture
def export_dir(tmp_path: Path, guarded: GuardedTinyModel) -> Path:
    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, guarded.model, "v-int8", **guarded.signature_overrides())
    return export_format.resolve_export_dir(link)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_refused_candidate_leaves_the_export_as_it_was(
    export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calibration, _ = _photos(4, seed=1)
    gate_images, gate_labels = _photos(6, seed=2)
    before = _files(export_dir)
    monkeypatch.setattr(quantize, "AGREEMENT_MIN", 1.01)  # no candidate can pass

    result = quantize.quantize_export(export_dir, calibration, gate_images, gate_labels)

    assert not result.report.passed and result.spec is None
    assert _files(export_dir) == before
    assert export_format.read_signature(export_dir).int8 is None


def test_the_tiny_model_quantizes_within_the_gate_and_ships(export_dir: Path) -> None:
    """The real quantizer on the real (tiny) graph: the head stays float, the convolution
    is int8, the gate passes on photos like the training ones, and the spec says so."""
    import onnx

    calibration, _ = _photos(8, seed=1)
    gate_images, gate_labels = _photos(20, seed=2)

    result = quantize.quantize_export(
        export_dir, calibration, gate_images, gate_labels, require_faster=False
    )

    assert result.report.passed, result.report.reasons
    int8_file = export_dir / export_format.INT8_MODEL_FILE
    ops = {node.op_type for node in onnx.load(str(int8_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    spec = export_format.read_signature(export_dir).int8
    assert spec is not None and spec.engine == "onnxruntime"
    assert spec.top1_agreement == pytest.approx(result.report.top1_agreement, abs=1e-6)
    assert spec.gate_photos == len(gate_labels) and spec.calibration_photos == len(calibration)


def test_openvino_runs_the_export_like_onnx_runtime(export_dir: Path) -> None:
    signature = export_format.read_signature(export_dir)
    images, _ = _photos(3, seed=3)
    path = export_dir / export_format.ONNX_MODEL_FILE
    names = [signature.output.name, signature.ood.output.name]  # type: ignore[union-attr]

    ort_out = open_session(path, "onnxruntime", 1).run(names, {signature.input.name: images})
    ov = open_session(path, "openvino", 1)
    ov_out = ov.run(names, {signature.input.name: images})

    assert [t.name for t in ov.get_outputs()] == names
    for a, b in zip(ort_out, ov_out, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no output named 'nope'"):
        ov.run(["nope"], {signature.input.name: images})


# --------------------------------------------------------------------------- serving


@pytest.fixture
def int8_link(export_dir: Path) -> Path:
    calibration, _ = _photos(8, seed=1)
    gate_images, gate_labels = _photos(20, seed=2)
    # the tiny model's int8 is not faster (QDQ overhead on tiny convolutions): speed aside
    result = quantize.quantize_export(
        export_dir, calibration, gate_images, gate_labels, require_faster=False
    )
    assert result.spec
    return export_dir.parent.parent / "skin5-current"


def _client(link: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(make_settings(link, **overrides)), raise_server_exceptions=False)


@pytest.mark.parametrize("precision", ["auto", "int8"])
def test_the_api_serves_the_int8_twin_when_the_export_has_one(
    int8_link: Path, precision: str
) -> None:
    with _client(int8_link, model_precision=precision) as client:
        info = client.get("/model").json()
        body = client.post(
            "/predict", files={"file": ("p.png", encode(two_tone("green")), "image/png")}
        ).json()
        metrics = client.get("/metrics").text

    assert (info["precision"], info["engine"]) == ("int8", "onnxruntime")
    assert info["int8_gate"]["gate_photos"] == 100
    assert body["label"] == "green"
    assert 'precision="int8"' in metrics


def test_model_precision_fp32_serves_the_float_model(int8_link: Path) -> None:
    with _client(int8_link, model_precision="fp32") as client:
        info = client.get("/model").json()

    assert (info["precision"], info["engine"]) == ("fp32", "onnxruntime")


def test_fp32_engine_openvino_serves_the_float_model_with_the_same_answers(
    int8_link: Path,
) -> None:
    """FP32_ENGINE=openvino: the fp32 file on OpenVINO (float32 inference), the same label
    and probabilities as ONNX Runtime's fp32 within 1e-4; /model and the metrics say so."""
    photo = encode(two_tone("green"))
    answers = {}
    for engine in ("onnxruntime", "openvino"):
        with _client(int8_link, model_precision="fp32", fp32_engine=engine) as client:
            info = client.get("/model").json()
            answers[engine] = client.post(
                "/predict", files={"file": ("p.png", photo, "image/png")}
            ).json()
            metrics = client.get("/metrics").text
        assert (info["precision"], info["engine"]) == ("fp32", engine)
        assert f'engine="{engine}"' in metrics
    ort, ov = answers["onnxruntime"], answers["openvino"]
    assert ov["label"] == ort["label"] == "green"
    for a, b in zip(ort["top_k"], ov["top_k"], strict=True):
        assert a["label"] == b["label"]
        assert abs(a["probability"] - b["probability"]) <= 1e-4


def test_fp32_engine_openvino_falls_back_to_onnx_runtime_when_it_is_missing(
    int8_link: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from skin_mlops.api import model_runtime

    monkeypatch.setattr(model_runtime, "engine_available", lambda engine: engine != "openvino")
    with _client(int8_link, model_precision="fp32", fp32_engine="openvino") as client:
        info = client.get("/model").json()
        body = client.post(
            "/predict", files={"file": ("p.png", encode(two_tone("green")), "image/png")}
        ).json()
    assert (info["precision"], info["engine"]) == ("fp32", "onnxruntime")
    assert body["label"] == "green"
    assert "FP32_ENGINE=openvino, but it is not installed" in caplog.text


def test_asking_for_int8_when_the_export_has_none_is_refused_in_plain_words(
    export_dir: Path,
) -> None:
    with _client(export_dir.parent.parent / "skin5-current", model_precision="int8") as client:
        ready = client.get("/ready")

    assert ready.status_code == 503
    assert "has no int8 model" in ready.text


def _spec(**fields: object) -> export_format.Int8Spec:
    """A hand-made int8 spec with a perfect gate; ``fields`` override the rest."""
    values: dict[str, object] = {
        "calibration_photos": 1,
        "float_nodes": 0,
        "gate_photos": 1,
        "fp32_macro_f1": 1.0,
        "int8_macro_f1": 1.0,
        "top1_agreement": 1.0,
        **fields,
    }
    return export_format.Int8Spec.model_validate(values)


def _publish_with_int8_spec(link: Path, guarded: GuardedTinyModel, file: str) -> None:
    # 7-bit weights are safe on every CPU: these tests are about the file
    spec = _spec(file=file, weights="int8-7bit")
    publish_tiny_export(link, guarded.model, "v-bad", int8=spec, **guarded.signature_overrides())


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ("../../../etc/passwd", "is outside the export"),
        ("model/missing.int8.onnx", "is missing from"),
    ],
)
def test_an_int8_spec_that_points_nowhere_safe_is_refused(
    tmp_path: Path, guarded: GuardedTinyModel, file: str, reason: str
) -> None:
    link = tmp_path / "runs" / "skin5-current"
    _publish_with_int8_spec(link, guarded, file)

    with _client(link) as client:
        ready = client.get("/ready")

    assert ready.status_code == 503
    assert reason in ready.text


def test_a_corrupt_int8_file_is_refused_in_one_line(
    tmp_path: Path, guarded: GuardedTinyModel
) -> None:
    link = tmp_path / "runs" / "skin5-current"
    _publish_with_int8_spec(link, guarded, str(export_format.INT8_MODEL_FILE))
    folder = export_format.resolve_export_dir(link)
    (folder / export_format.INT8_MODEL_FILE).write_bytes(b"not an onnx model")

    with _client(link) as client:
        ready = client.get("/ready")

    assert ready.status_code == 503
    assert "ONNX Runtime cannot load" in ready.text
    assert "Traceback" not in ready.text


# ------------------------------------------------------- int8 arithmetic of the CPU


_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "expected"),
    [
        (_AVX2, "x86_64", "saturating"),  # vpmaddubsw: int16 pair sums saturate
        (_AVX2.replace("avx2", "avx2 avx512bw avx512_vnni"), "x86_64", "exact"),
        (_AVX2.replace("avx2", "avx2 avx_vnni"), "x86_64", "exact"),
        (_AVX2.replace("avx2", "avx2 amx_int8"), "x86_64", "exact"),
        ("processor\t: 0\n", "x86_64", "saturating"),  # flags unreadable: the safe answer
        ("Features\t: fp asimd asimddp\n", "aarch64", "exact"),
    ],
)
def test_the_cpu_int8_arithmetic_is_read_from_its_flags(
    cpuinfo: str, machine: str, expected: str
) -> None:
    from skin_mlops.runtimes import cpu_int8_arithmetic

    assert cpu_int8_arithmetic(cpuinfo, machine) == expected


@pytest.mark.parametrize(
    ("weights", "gated_on", "here", "safe"),
    [
        ("int8", "exact", "saturating", False),  # gated on VNNI, served without: refused
        ("int8", None, "saturating", False),  # not recorded: refused
        ("int8", "saturating", "saturating", True),  # the gate measured this arithmetic
        ("int8", "exact", "exact", True),
        ("int8", "saturating", "exact", True),  # exact is closer to fp32 than what passed
        ("int8-7bit", "exact", "saturating", True),  # 7-bit weights never saturate
        ("uint8", "exact", "saturating", True),
    ],
)
def test_an_int8_model_is_safe_only_where_the_cpu_computes_what_its_gate_measured(
    weights: str, gated_on: str | None, here: str, safe: bool, guarded: GuardedTinyModel
) -> None:
    from skin_mlops.api.model_runtime import ModelRefusedError, choose_model

    spec = _spec(weights=weights, gated_on=gated_on)
    signature = _signature(guarded).model_copy(update={"int8": spec})

    assert spec.safe_on(here) is safe  # type: ignore[arg-type]
    auto = choose_model(signature, make_settings(Path("x")), here)  # type: ignore[arg-type]
    assert auto[1] == ("int8" if safe else "fp32")
    forced = make_settings(Path("x"), model_precision="int8")
    if safe:
        assert choose_model(signature, forced, here)[1] == "int8"  # type: ignore[arg-type]
    else:
        with pytest.raises(ModelRefusedError, match="saturate on this CPU"):
            choose_model(signature, forced, here)  # type: ignore[arg-type]


def test_the_shipped_spec_records_its_weights_and_the_cpu_it_was_gated_on(
    export_dir: Path,
) -> None:
    from skin_mlops.runtimes import cpu_int8_arithmetic

    calibration, _ = _photos(8, seed=1)
    gate_images, gate_labels = _photos(20, seed=2)

    result = quantize.quantize_export(
        export_dir,
        calibration,
        gate_images,
        gate_labels,
        method="ort-minmax-7bit",
        require_faster=False,
    )

    assert result.report.passed, result.report.reasons
    spec = export_format.read_signature(export_dir).int8
    assert spec is not None and spec.method == "ort-minmax-7bit"
    assert (spec.weights, spec.gated_on) == ("int8-7bit", cpu_int8_arithmetic())


def test_the_api_serves_fp32_when_this_cpu_would_saturate_a_model_gated_elsewhere(
    int8_link: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU is the one thing a test cannot choose: it is stubbed to one without VNNI."""
    from skin_mlops.api import model_runtime

    folder = int8_link.resolve()
    signature = export_format.read_signature(folder)
    assert signature.int8 is not None and signature.int8.weights == "int8"
    export_format.write_metadata(
        folder,
        signature.model_copy(
            update={"int8": signature.int8.model_copy(update={"gated_on": "exact"})}
        ),
    )
    monkeypatch.setattr(model_runtime, "cpu_int8_arithmetic", lambda: "saturating")

    with _client(int8_link) as client:
        info = client.get("/model").json()
    with _client(int8_link, model_precision="int8") as client:
        ready = client.get("/ready")

    assert (info["precision"], info["engine"]) == ("fp32", "onnxruntime")
    assert ready.status_code == 503 and "saturate on this CPU" in ready.text


def test_an_unknown_int8_method_is_refused_before_training() -> None:
    from skin_mlops.core.errors import ConfigError

    assert quantize.check_method("ort-minmax-7bit") == "ort-minmax-7bit"
    with pytest.raises(ConfigError, match="not one of"):
        quantize.check_method("fp16")


def test_the_training_stage_gates_on_val_and_logs_its_figures_to_mlflow(
    export_dir: Path, tmp_path: Path, mlflow_db_template: Path
) -> None:
    """``quantize_in_training`` (what ``train --int8`` calls) on photos given as bytes,
    against a real MLflow store: the verdict is printed, metrics and tags are logged."""
    import io
    import shutil

    import mlflow
    from rich.console import Console

    from skin_mlops.modeling.features import ImageRef
    from skin_mlops.runtimes import cpu_int8_arithmetic

    rng = np.random.default_rng(4)

    def refs(n_per_label: int) -> tuple[list[ImageRef], np.ndarray]:
        out, labels = [], []
        for index, label in enumerate(COLOURS):
            for i in range(n_per_label):
                accent = tuple(int(v) for v in rng.integers(0, 256, 3))
                data = encode(two_tone(label, accent=accent))  # type: ignore[arg-type]
                out.append(ImageRef(f"{label}-{i}", lambda data=data: data))
                labels.append(index)
        return out, np.array(labels)

    train_refs, _ = refs(3)
    val_refs, y_val = refs(20)
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_db_template, db)
    printed = io.StringIO()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        with mlflow.start_run() as run:
            result = quantize.quantize_in_training(
                export_dir,
                train_refs,
                val_refs,
                y_val,
                IMAGE_SIZE,
                seed=0,
                settings=make_settings(export_dir),
                console=Console(file=printed, width=200),
                method="ort-minmax-7bit",
                require_faster=False,
            )
        logged = mlflow.MlflowClient().get_run(run.info.run_id).data
    finally:
        mlflow.set_tracking_uri(previous)

    assert result.report.passed, result.report.reasons
    assert result.report.photos == len(val_refs)
    assert "int8 model shipped beside fp32" in printed.getvalue()
    assert logged.metrics["int8_gate_passed"] == 1.0
    assert logged.metrics["int8_gate_photos"] == len(val_refs)
    assert logged.tags["int8_method"] == "ort-minmax-7bit"
    assert logged.tags["int8_cpu_arithmetic"] == cpu_int8_arithmetic()


def test_feature_residuals_are_the_int8_backbones_errors_on_the_calibration_photos(
    tmp_path: Path, tiny_backbone
) -> None:
    """The frozen backbone alone quantized like the export's: ``[N, D]`` residuals, small
    next to the features, not zero, and the same twice (MinMax calibration is exact)."""
    from skin_mlops.modeling import onnx_backbone
    from skin_mlops.modeling.features import FeatureSpace

    path = onnx_backbone.ensure_backbone_onnx(
        tiny_backbone, FeatureSpace.of(tiny_backbone).key, tmp_path
    )
    assert path is not None
    size = tiny_backbone.image_size
    photos = np.random.default_rng(5).uniform(0, 255, (12, size, size, 3)).astype(np.float32)

    residuals = quantize.feature_residuals(path, photos, "ort-minmax-7bit", threads=1)

    features = onnx_backbone.onnx_feature_function(path)(photos)
    assert residuals.shape == features.shape and residuals.dtype == np.float32
    assert 0 < np.abs(residuals).max() < 0.5 * np.abs(features).max()
    np.testing.assert_array_equal(
        residuals, quantize.feature_residuals(path, photos, "ort-minmax-7bit", threads=1)
    )


def test_a_candidate_slower_than_fp32_is_refused_and_its_timing_is_kept(
    export_dir: Path,
) -> None:
    assert quantize.speed_reason(10.0, 7.5) is None
    assert quantize.speed_reason(10.0, 10.0) is None
    assert quantize.speed_reason(10.9, 80.1) == (
        "int8 is slower than fp32 here (80.1 vs 10.9 ms per photo)"
    )
    calibration, _ = _photos(8, seed=1)
    gate_images, gate_labels = _photos(20, seed=2)

    result = quantize.quantize_export(
        export_dir, calibration, gate_images, gate_labels, require_faster=False
    )

    report = result.report
    assert report.fp32_ms_per_photo is not None and report.fp32_ms_per_photo > 0
    assert report.int8_ms_per_photo is not None and report.int8_ms_per_photo > 0
    assert result.spec is not None
    assert result.spec.int8_ms_per_photo == pytest.approx(report.int8_ms_per_photo, abs=1e-3)
    metrics = report.as_metrics()
    assert metrics["int8_ms_per_photo"] == report.int8_ms_per_photo
