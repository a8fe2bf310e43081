"""int8 static quantization of the served ONNX model: quality against fp32, and speed, one run.

Issue 15's int8 lever: "int8 static quantization (QDQ, per-channel, calibrated on train
photos) shipped only when its macro-F1 on the CV/val photos drops by <= 0.005 and its top-1
agrees with fp32 on >= 99 % of val". This script measures that gate; it changes no product
code and ships nothing.

1. **Model**: ``model/model.onnx`` of ``--export`` (default: the default training run,
   ``benchmarks/out/default-run-work/runs/skin5-current``: Lite0 at 288 px with the
   out-of-distribution guard's ``ood_score`` output). Labels in ``signature.json``'s order.
2. **Calibration**: ``--calibration-photos`` dermnet5 *train* photos (seeded sample), each
   through ``skin_mlops.preprocessing.preprocess_bytes`` (the serving preprocessing), fed one
   at a time; collected in chunks (``CalibStridedMinMax``: the histogram calibrators would
   otherwise hold every intermediate tensor of every photo in memory). Ranges are computed
   once per (method, pre-processing) and cached in a temp dir, so the activation-type and
   exclusion variants share them.
3. **Quantization**: ``onnxruntime.quantization.quantize_static``, QDQ, per-channel int8
   weights (``QInt8``), activations ``QUInt8`` (``u8``) or ``QInt8`` (``s8``), after
   ``quant_pre_process`` (symbolic shape inference + ORT's basic optimisation, which folds the
   depthwise convolutions' batch-norm ``Mul``/``Add`` into the ``Conv``; ``noprep`` variants
   skip it, to show what it buys). ``guardfp32`` variants keep the guard in float: the nodes
   only ``ood_score`` depends on, plus the ``Concat`` building the pooled features it reads;
   ``headfp32`` variants keep that ``Concat`` and everything after it (the classifier head
   and the guard) in float: only the backbone is int8.
4. **Quality** on the 129 dermnet5 val photos: macro-F1 (``skin_mlops.modeling.evaluate``)
   of fp32 and int8 against the folder labels, top-1 agreement with fp32, max |dp| of the
   calibrated softmax (``signature.temperature``), and the guard's in/out verdict agreement
   (``ood_score <= signature.ood.threshold``); also top-1 and verdict agreement on the train
   photos *not* used for calibration (more photos, same question). Gate (the issue's):
   ``macro-F1(fp32) - macro-F1(int8) <= 0.005`` and val top-1 agreement ``>= 0.99``.
5. **Speed**, ONNX Runtime alone, the API's session options
   (``skin_mlops.api.model_runtime.session_options(2)``: 2 intra-op threads, no spinning,
   arena off): one image p50/p99 over ``--single-runs`` calls, batch-32 photos/s (median of
   ``--batch-runs`` calls), every model in the same process, interleaved in rounds so the
   shared machine's drift hits all alike; model size on disk.

Prints a table; writes ``benchmarks/out/int8_quantization.json`` (nothing else, unless
``--keep-models DIR``).

Run: ``flock /tmp/heavy.lock uv run python benchmarks/int8_quantization.py
[--export DIR] [--calibration-photos 200] [--variants minmax-u8,percentile-u8,...]``
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import DERMNET, OUT, val_photos  # noqa: E402

from skin_mlops import export_format  # noqa: E402
from skin_mlops.api.model_runtime import session_options  # noqa: E402
from skin_mlops.modeling.evaluate import macro_f1  # noqa: E402
from skin_mlops.preprocessing import preprocess_bytes  # noqa: E402

DEFAULT_EXPORT = OUT / "default-run-work" / "runs" / "skin5-current"
RESULT = OUT / "int8_quantization.json"
DEFAULT_VARIANTS = (
    "minmax-u8,minmax-s8,percentile-u8,percentile-s8,"
    "minmax-u8-guardfp32,percentile-u8-guardfp32,minmax-u8-headfp32,percentile-u8-headfp32,"
    "minmax-u8-noprep"
)
METHODS = ("minmax", "percentile", "entropy")
F1_DROP_MAX = 0.005
TOP1_AGREEMENT_MIN = 0.99
BATCH = 32
CALIB_CHUNK = 10
console = Console(width=180)


# ------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    """One int8 recipe, parsed from ``method-act[-guardfp32][-headfp32][-noprep]``."""

    method: str
    activations: str  # "u8" | "s8"
    guard_fp32: bool = False
    pre_process: bool = True
    head_fp32: bool = False

    @property
    def name(self) -> str:
        flags = (
            ("-guardfp32" if self.guard_fp32 else "")
            + ("-headfp32" if self.head_fp32 else "")
            + ("" if self.pre_process else "-noprep")
        )
        return f"int8 {self.method}-{self.activations}{flags}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        method, _, rest = text.strip().partition("-")
        parts = rest.split("-") if rest else []
        if method not in METHODS or not parts or parts[0] not in ("u8", "s8"):
            raise typer.BadParameter(
                f"{text!r}: expected METHOD-ACT[-guardfp32][-noprep], METHOD one of "
                f"{', '.join(METHODS)}, ACT u8 or s8",
                param_hint="--variants",
            )
        flags = set(parts[1:])
        unknown = flags - {"guardfp32", "headfp32", "noprep"}
        if unknown:
            raise typer.BadParameter(f"{text!r}: unknown flag {unknown}", param_hint="--variants")
        return cls(
            method, parts[0], "guardfp32" in flags, "noprep" not in flags, "headfp32" in flags
        )


class ArrayReader:
    """``CalibrationDataReader`` over ``float32[N, S, S, 3]``, one photo per call, with the
    ``set_range`` / ``__len__`` that ``CalibStridedMinMax`` uses to calibrate in chunks."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self.input_name = input_name
        self.images = images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return {self.input_name: self.images[self._next - 1 : self._next]}


def guard_nodes(model_path: Path, guard_output: str, logits_output: str) -> list[str]:
    """Node names that only ``guard_output`` depends on, plus the producer of the tensor both
    outputs share last (the features' ``Concat``): kept in float by ``guardfp32``."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(tensor: str) -> set[str]:
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            stack.extend(node.input)
        return seen

    guard, classifier = ancestors(guard_output), ancestors(logits_output)
    only_guard = guard - classifier
    by_name = {node.name: node for node in graph.node}
    shared_inputs = {i for name in only_guard for i in by_name[name].input} & {
        out for name in classifier for out in by_name[name].output
    }
    return sorted(only_guard | {producer[t].name for t in shared_inputs if t in producer})


def head_nodes(model_path: Path, guard_nodes_: list[str]) -> list[str]:
    """The features' ``Concat`` (the node ``guard_nodes`` adds beside the guard's own) and every
    node downstream of it: the classifier head and the guard, kept in float by ``headfp32``."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    by_name = {node.name: node for node in graph.node}
    roots = [name for name in guard_nodes_ if by_name[name].op_type == "Concat"]
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(c.name for out in by_name[name].output for c in consumers.get(out, []))
    return sorted(seen)


def quantize(
    variant: Variant,
    source: Path,
    workdir: Path,
    calibration: np.ndarray,
    input_name: str,
    nodes_to_exclude: list[str],
) -> tuple[Path, float]:
    """Quantize ``source`` (the fp32 or pre-processed model) as ``variant``; (path, seconds)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[variant.method]
    chunk = max(d for d in range(1, CALIB_CHUNK + 1) if len(calibration) % d == 0)
    cache = workdir / f"ranges-{variant.method}-{'prep' if variant.pre_process else 'raw'}.json"
    output = workdir / f"{variant.name.replace(' ', '_')}.onnx"
    started = time.perf_counter()
    quantize_static(
        str(source),
        str(output),
        None if cache.exists() else ArrayReader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if variant.activations == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=nodes_to_exclude,
        extra_options={"CalibStridedMinMax": chunk},
        calibration_cache_path=str(cache),
    )
    return output, time.perf_counter() - started


# ------------------------------------------------------------------------------ measuring


def load_photos(paths: list[Path], labels: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(float32[N, S, S, 3] through preprocess_bytes, int label index from the folder)``."""
    index = {label: i for i, label in enumerate(labels)}
    kept = [p for p in paths if p.parent.name in index]
    images = np.stack([preprocess_bytes(p.read_bytes(), size) for p in kept])
    return images, np.array([index[p.parent.name] for p in kept], np.int64)


def open_session(path: Path):  # noqa: ANN201
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), sess_options=session_options(2), providers=["CPUExecutionProvider"]
    )


def predict(session, signature, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:  # noqa: ANN001
    """``(logits, ood_score or None)`` over ``images`` in batches of 32."""
    names = [signature.output.name] + ([signature.ood.output.name] if signature.ood else [])
    logits, scores = [], []
    for start in range(0, len(images), BATCH):
        out = session.run(names, {signature.input.name: images[start : start + BATCH]})
        logits.append(out[0])
        if signature.ood:
            scores.append(out[1].reshape(-1))
    return np.concatenate(logits), (np.concatenate(scores) if scores else None)


def batch_dependence(session, signature, images: np.ndarray, n: int = 8) -> dict:  # noqa: ANN001
    """Max |logit| difference of ``n`` photos run alone vs inside a batch of 32, and whether
    it passes the API's warm-up check (``np.allclose(atol=1e-4, rtol=1e-4)``)."""
    names = [signature.output.name]
    batch = session.run(names, {signature.input.name: images[:BATCH]})[0]
    alone = np.concatenate(
        [session.run(names, {signature.input.name: images[i : i + 1]})[0] for i in range(n)]
    )
    return {
        "max_abs_dlogit_alone_vs_batch32": float(np.abs(alone - batch[:n]).max()),
        "passes_api_warmup_check": bool(np.allclose(alone, batch[:n], atol=1e-4, rtol=1e-4)),
    }


def quality(
    signature,  # noqa: ANN001
    labels: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray | None],
    candidate: tuple[np.ndarray, np.ndarray | None],
) -> dict[str, float | None]:
    """Macro-F1, top-1 agreement, max |dp|, guard verdict agreement of ``candidate``."""
    (ref_logits, ref_ood), (logits, ood) = reference, candidate
    k = len(signature.labels)
    p_ref = export_format.softmax(ref_logits, signature.temperature)
    p = export_format.softmax(logits, signature.temperature)
    row: dict[str, float | None] = {
        "macro_f1": macro_f1(labels, p.argmax(1), k),
        "accuracy": float((p.argmax(1) == labels).mean()),
        "top1_agreement": float((p.argmax(1) == p_ref.argmax(1)).mean()),
        "top1_disagreements": int((p.argmax(1) != p_ref.argmax(1)).sum()),
        "max_abs_dp": float(np.abs(p - p_ref).max()),
        "guard_agreement": None,
        "guard_disagreements": None,
        "max_abs_d_ood_score": None,
    }
    if signature.ood is not None and ood is not None and ref_ood is not None:
        threshold = signature.ood.threshold
        same = (ood <= threshold) == (ref_ood <= threshold)
        row["guard_agreement"] = float(same.mean())
        row["guard_disagreements"] = int((~same).sum())
        row["max_abs_d_ood_score"] = float(np.abs(ood - ref_ood).max())
        row["ood_flagged_rate"] = float((ood > threshold).mean())
    return row


def _time_ms(fn, n: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def speed(
    paths: dict[str, Path], input_name: str, images: np.ndarray, single_runs: int, batch_runs: int
) -> dict[str, dict[str, float]]:
    """One image p50/p99 and batch-32 photos/s per model, interleaved in rounds."""
    sessions = {name: open_session(path) for name, path in paths.items()}
    one, batch = np.ascontiguousarray(images[:1]), np.ascontiguousarray(images[:BATCH])
    calls = {}
    for name, session in sessions.items():
        calls[name] = (
            lambda s=session: s.run(None, {input_name: one}),
            lambda s=session: s.run(None, {input_name: batch}),
        )
        for _ in range(5):
            calls[name][0]()
        calls[name][1]()
    rounds = max(1, min(batch_runs, single_runs))
    single: dict[str, list[float]] = {name: [] for name in sessions}
    batched: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(rounds):
        per_round = single_runs // rounds + (1 if r < single_runs % rounds else 0)
        for name, (run_one, run_batch) in calls.items():
            single[name].extend(_time_ms(run_one, per_round))
            if r < batch_runs:
                batched[name].extend(_time_ms(run_batch, 1))
    return {
        name: {
            "single_p50_ms": float(np.percentile(single[name], 50)),
            "single_p99_ms": float(np.percentile(single[name], 99)),
            "single_runs": len(single[name]),
            "batch32_photos_s": BATCH / (float(np.median(batched[name])) / 1000),
            "batch32_runs": len(batched[name]),
        }
        for name in sessions
    }


def dedupe_opsets(source: Path, target: Path) -> list[str]:
    """Copy ``source`` with each opset domain imported once (tf2onnx + the head's merge list
    ``ai.onnx`` 17 twice, which ``quantize_static`` refuses); returns the imports dropped."""
    import onnx

    model = onnx.load(str(source))
    seen: dict[str, int] = {}
    dropped = []
    for opset in model.opset_import:
        domain = opset.domain or "ai.onnx"
        if domain in seen:
            if seen[domain] != opset.version:
                raise ValueError(
                    f"{source}: {domain} imported as {seen[domain]} and {opset.version}"
                )
            dropped.append(f"{domain} {opset.version}")
        seen[domain] = opset.version
    del model.opset_import[:]
    for domain, version in seen.items():
        model.opset_import.append(
            onnx.helper.make_opsetid("" if domain == "ai.onnx" else domain, version)
        )
    onnx.save(model, str(target))
    return dropped


def node_count(path: Path) -> dict[str, int]:
    import collections

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return {"nodes": len(graph.node), **dict(sorted(counts.items()))}


# ---------------------------------------------------------------------------------- main


def main(
    export: Annotated[Path, typer.Option(help="Export folder (model/, inference/).")] = (
        DEFAULT_EXPORT
    ),
    calibration_photos: Annotated[
        int, typer.Option(min=1, help="Train photos to calibrate on (seeded sample).")
    ] = 200,
    variants: Annotated[
        str,
        typer.Option(
            help="Comma-separated METHOD-ACT[-guardfp32][-headfp32][-noprep]: METHOD minmax, "
            "percentile or entropy; ACT u8 (QUInt8 activations) or s8 (QInt8); guardfp32: the "
            "guard's nodes in float; headfp32: the pooled features' Concat and everything after "
            "it (classifier head + guard) in float; noprep: without quant_pre_process."
        ),
    ] = DEFAULT_VARIANTS,
    single_runs: Annotated[int, typer.Option(min=1, help="One-image calls per model.")] = 200,
    batch_runs: Annotated[int, typer.Option(min=1, help="Batch-32 calls per model.")] = 8,
    train_agreement: Annotated[
        bool,
        typer.Option(help="Also measure agreement on the train photos not used to calibrate."),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the calibration sample.")] = 0,
    keep_models: Annotated[
        Path | None, typer.Option(help="Copy the int8 models into this folder.")
    ] = None,
    output: Annotated[Path, typer.Option(help="Where to write the JSON.")] = RESULT,
) -> None:
    """Quantize the export's ONNX to int8 (QDQ, per-channel), gate it on val, time it."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    wanted = [Variant.parse(v) for v in variants.split(",") if v.strip()]
    folder = export.resolve()
    signature = export_format.read_signature(folder)
    fp32_path = folder / "model" / "model.onnx"
    size = signature.image_size
    load_start = os.getloadavg()
    console.print(
        f"model: {folder} ({signature.backbone}, {size} px, guard: "
        f"{'yes' if signature.ood else 'no'}); onnxruntime {ort.__version__}; "
        f"{os.cpu_count()} CPUs, load average at start {load_start}",
        highlight=False,
    )

    val_images, val_labels = load_photos(val_photos(), signature.labels, size)
    train_paths = sorted((DERMNET / "train").glob("*/*.jpg"))
    if not train_paths:
        sys.exit(f"benchmark needs the dermnet5 train photos at {DERMNET}/train (absent)")
    order = np.random.default_rng(seed).permutation(len(train_paths))
    calib_paths = [train_paths[i] for i in sorted(order[:calibration_photos])]
    rest_paths = [train_paths[i] for i in sorted(order[calibration_photos:])]
    calib_images, _ = load_photos(calib_paths, signature.labels, size)
    rest = (
        load_photos(rest_paths, signature.labels, size) if train_agreement and rest_paths else None
    )
    console.print(
        f"{len(val_images)} val photos, {len(calib_images)} calibration photos (train), "
        f"{0 if rest is None else len(rest[0])} other train photos for agreement",
        highlight=False,
    )

    workdir = Path(tempfile.mkdtemp(prefix="int8-quant-"))
    rows: list[dict] = []
    try:
        clean_path = workdir / "model.fp32.onnx"
        dropped_opsets = dedupe_opsets(fp32_path, clean_path)
        prep_path = workdir / "model.prep.onnx"
        t0 = time.perf_counter()
        quant_pre_process(str(clean_path), str(prep_path))
        prep_s = time.perf_counter() - t0
        graphs = {
            "fp32": node_count(fp32_path),
            "fp32 after quant_pre_process": node_count(prep_path),
        }
        console.print(
            f"quant_pre_process: {graphs['fp32']['nodes']} -> "
            f"{graphs['fp32 after quant_pre_process']['nodes']} nodes in {prep_s:.1f} s",
            highlight=False,
        )
        excluded = {
            True: guard_nodes(prep_path, signature.ood.output.name, signature.output.name)
            if signature.ood
            else [],
            False: guard_nodes(clean_path, signature.ood.output.name, signature.output.name)
            if signature.ood
            else [],
        }

        paths: dict[str, Path] = {"fp32": fp32_path}
        built: dict[str, dict] = {}
        for variant in wanted:
            source = prep_path if variant.pre_process else clean_path
            guard = excluded[variant.pre_process]
            exclude = sorted(
                set(guard if variant.guard_fp32 else [])
                | set(head_nodes(source, guard) if variant.head_fp32 else [])
            )
            console.print(f"quantizing {variant.name} ...", highlight=False)
            path, seconds = quantize(
                variant, source, workdir, calib_images, signature.input.name, exclude
            )
            paths[variant.name] = path
            built[variant.name] = {
                "method": variant.method,
                "activations": "QUInt8" if variant.activations == "u8" else "QInt8",
                "weights": "QInt8 per-channel",
                "pre_process": variant.pre_process,
                "guard_fp32": variant.guard_fp32,
                "head_fp32": variant.head_fp32,
                "nodes_excluded": exclude,
                "quantize_s": seconds,
                "graph": node_count(path),
            }

        console.print("quality on val (and other train photos) ...", highlight=False)
        ref_session = open_session(fp32_path)
        ref_val = predict(ref_session, signature, val_images)
        ref_rest = predict(ref_session, signature, rest[0]) if rest else None
        del ref_session
        for name, path in paths.items():
            session = open_session(path)
            row = {"variant": name, **built.get(name, {"method": None})}
            row["val"] = quality(
                signature, val_labels, ref_val, predict(session, signature, val_images)
            )
            if rest and ref_rest:
                row["train_other"] = quality(
                    signature, rest[1], ref_rest, predict(session, signature, rest[0])
                )
            row["batch_dependence"] = batch_dependence(session, signature, val_images)
            row["size_mb"] = path.stat().st_size / 1e6
            if name != "fp32":
                drop = rows[0]["val"]["macro_f1"] - row["val"]["macro_f1"]
                row["macro_f1_drop"] = drop
                row["gate"] = (
                    "PASS"
                    if drop <= F1_DROP_MAX and row["val"]["top1_agreement"] >= TOP1_AGREEMENT_MIN
                    else "FAIL"
                )
            rows.append(row)
            del session

        console.print(
            f"speed: {single_runs} one-image and {batch_runs} batch-32 calls per model, "
            "interleaved ...",
            highlight=False,
        )
        timings = speed(paths, signature.input.name, val_images, single_runs, batch_runs)
        for row in rows:
            row["speed"] = timings[row["variant"]]
        if keep_models is not None:
            keep_models.mkdir(parents=True, exist_ok=True)
            for name, path in paths.items():
                if name != "fp32":
                    shutil.copy2(path, keep_models / path.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    fp32 = rows[0]
    table = Table(
        title=f"int8 static quantization (QDQ, per-channel) - {signature.model_version}, "
        f"{len(val_images)} val photos; gate: macro-F1 drop <= {F1_DROP_MAX}, "
        f"top-1 agreement >= {TOP1_AGREEMENT_MIN:.0%}"
    )
    columns = (
        "model",
        "val macro-F1",
        "drop",
        "top-1 agree",
        "max |dp|",
        "guard agree",
        "train top-1 / guard agree",
        "p50 ms",
        "p99 ms",
        "b32 photos/s",
        "size MB",
        "gate",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")

    def pct(value: float | None, misses: int | None) -> str:
        return "-" if value is None else f"{value:.1%} ({misses})"

    for row in rows:
        v, s, t = row["val"], row["speed"], row.get("train_other")
        table.add_row(
            row["variant"],
            f"{v['macro_f1']:.4f}",
            "-" if row is fp32 else f"{row['macro_f1_drop']:+.4f}",
            pct(v["top1_agreement"], v["top1_disagreements"]),
            f"{v['max_abs_dp']:.4f}",
            pct(v["guard_agreement"], v["guard_disagreements"]),
            "-"
            if t is None
            else f"{t['top1_agreement']:.1%} / "
            + ("-" if t["guard_agreement"] is None else f"{t['guard_agreement']:.1%}"),
            f"{s['single_p50_ms']:.2f}",
            f"{s['single_p99_ms']:.2f}",
            f"{s['batch32_photos_s']:.1f}",
            f"{row['size_mb']:.1f}",
            row.get("gate", "-"),
        )
    console.print(table)
    for row in rows[1:]:
        mine, ref = row["speed"], fp32["speed"]
        console.print(
            f"{row['variant']}: speed-up vs fp32, one image p50 "
            f"{ref['single_p50_ms'] / mine['single_p50_ms']:.2f}x, batch-32 photos/s "
            f"{mine['batch32_photos_s'] / ref['batch32_photos_s']:.2f}x; "
            f"{fp32['size_mb'] / row['size_mb']:.1f}x smaller; alone vs in a batch of 32: max "
            f"|dlogit| {row['batch_dependence']['max_abs_dlogit_alone_vs_batch32']:.2e} (API "
            "warm-up check "
            f"{'passes' if row['batch_dependence']['passes_api_warmup_check'] else 'FAILS'})",
            highlight=False,
        )
    load_end = os.getloadavg()
    console.print(f"load average at end {load_end}", highlight=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "export": str(folder),
        "model_version": signature.model_version,
        "onnxruntime": ort.__version__,
        "cpus": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "session_options": "skin_mlops.api.model_runtime.session_options(2)",
        "gate": {"macro_f1_drop_max": F1_DROP_MAX, "top1_agreement_min": TOP1_AGREEMENT_MIN},
        "val_photos": len(val_images),
        "calibration_photos": [str(p.relative_to(DERMNET)) for p in calib_paths],
        "train_other_photos": 0 if rest is None else len(rest[0]),
        "duplicate_opset_imports_dropped": dropped_opsets,
        "quant_pre_process_s": prep_s,
        "graphs": graphs,
        "ood_threshold": signature.ood.threshold if signature.ood else None,
        "rows": rows,
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {output}", highlight=False)


if __name__ == "__main__":
    typer.run(main)
