"""The two engines an exported ONNX model runs on, behind one small interface.

* ``onnxruntime`` - :func:`ort_session_options` tuned for a small CPU box; runs the fp32
  ``model/model.onnx`` everywhere (the reference every other path is checked against);
* ``openvino`` - Intel's runtime, which reads the same ONNX files. On this 2-core CPU it
  is no faster than ONNX Runtime for the fp32 model (15.5 vs 13.8 ms per image) and it runs
  NNCF's int8 QDQ graph wrongly (81 of 129 val predictions changed where ONNX Runtime
  changes 14: ``docs/serving_performance.md``), so nothing chooses it by default; an int8
  model is served on the engine its quality gate ran on (``signature.int8.engine``).

Both are opened by :func:`open_session` and answer the same three calls the API and the
int8 quality gate use: ``run(output_names, {input_name: batch})``, ``get_inputs()`` and
``get_outputs()`` (ONNX Runtime's own names, so an ``onnxruntime.InferenceSession`` *is*
such a session). OpenVINO is asked for float32 inference (``INFERENCE_PRECISION_HINT``):
on CPUs with AMX or AVX-512 BF16 it would otherwise run the float parts in bfloat16 and
the served predictions would no longer be the ones the gate measured.

Stdlib and numpy at import time (the engines are imported inside functions): importable
by the API image and by the CLI at start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from skin_mlops.core.errors import SkinMlopsError

Engine = Literal["onnxruntime", "openvino"]
ENGINES: tuple[Engine, ...] = ("onnxruntime", "openvino")


class RuntimeUnavailableError(SkinMlopsError):
    """The requested engine is not installed (or cannot load this model)."""


class TensorInfo(Protocol):
    """What a session says about one input or output (ONNX Runtime's ``NodeArg``)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def shape(self) -> list[int | str | None]: ...


class Session(Protocol):
    """The calls every engine answers (an ``onnxruntime.InferenceSession`` is one)."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[Any]: ...

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...


def engine_available(engine: Engine) -> bool:
    """Whether ``engine``'s Python package can be imported here."""
    import importlib.util

    return importlib.util.find_spec(engine) is not None


Int8Arithmetic = Literal["exact", "saturating"]


def cpu_int8_arithmetic(cpuinfo: str | None = None, machine: str | None = None) -> Int8Arithmetic:
    """How ONNX Runtime's int8 kernels multiply uint8 activations by int8 weights here.

    ``saturating``: an x86 CPU without a VNNI dot product (no ``avx512_vnni``,
    ``avx_vnni`` or ``amx_int8`` flag). MLAS then uses ``vpmaddubsw`` (AVX2 / AVX-512BW),
    which adds pairs of uint8 x int8 products into int16 and saturates; ONNX Runtime's
    quantization guide says so and recommends 7-bit weights (``reduce_range``) there.
    Measured on dermnet5 (Lite0 288 px, 129 val photos, an AVX2-only EPYC): full-range
    int8 weights changed 20 top-1 predictions, the same graph with uint8 weights (exact
    arithmetic, but ~7x slower than fp32) 2, 7-bit weights 9; OpenVINO's CPU plugin gave
    25 / 3 / 8, so the answer is used for both engines.

    ``exact``: VNNI/AMX (32-bit accumulation) or any other architecture (ARM's dot
    products accumulate in 32 bits too). An x86 CPU whose flags cannot be read counts as
    ``saturating`` (the safe answer: the API then serves fp32 rather than risk it).

    Args:
        cpuinfo: ``/proc/cpuinfo``'s text (read when None; tests pass their own).
        machine: ``platform.machine()`` (read when None).
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "exact"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "saturating"
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return "exact" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "saturating"


OrtSpinning = Literal["off", "during-run", "on"]


def ort_session_options(
    intra_op_threads: int, memory_arena: bool = False, spinning: OrtSpinning = "off"
) -> Any:
    """ONNX Runtime options for a small CPU box shared with the image decoding threads.

    Sequential execution with ``intra_op_threads`` threads per operator, one inter-op
    thread, full graph optimisation.

    ``spinning`` (setting ``ORT_SPINNING``) says whether the intra-op threads busy-wait for
    work instead of sleeping: ``off`` never (every operator then wakes a sleeping thread),
    ``on`` ONNX Runtime's default (they keep spinning after a call returns, stealing the
    cores the decode/preprocess pool needs between calls), ``during-run`` only while a call
    is running (``session.force_spinning_stop``: the threads stop spinning as soon as the
    last concurrent call returns).

    ``memory_arena`` (setting ``ORT_MEMORY_ARENA``, default off): with ONNX Runtime's CPU
    arena the activations of the largest batch stay resident for good (Lite0 at 288 px:
    +~60 MiB after batches up to 8); without it they go back to malloc, whose blocks the
    process reuses (see :mod:`skin_mlops.api.memory`). Same latency either way here
    (~9-10 ms per batch-1 call, 2 threads).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = memory_arena
    options.enable_mem_pattern = True
    spin = "0" if spinning == "off" else "1"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if spinning == "during-run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return options


@dataclass(frozen=True)
class _OvTensor:
    """An OpenVINO port described the way ONNX Runtime describes a ``NodeArg``."""

    name: str
    type: str
    shape: list[int | str | None]


_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)"}


class OpenVinoSession:
    """An OpenVINO compiled model with ONNX Runtime's ``run`` / ``get_inputs`` / ``get_outputs``.

    One infer request per calling thread (an infer request is not thread-safe; the
    compiled model is), so the API's worker threads can call :meth:`run` concurrently.
    Dynamic batch: the ONNX batch dimension stays dynamic, every batch size runs.
    """

    def __init__(self, path: Path, threads: int, precision: Literal["f32", "bf16"] = "f32") -> None:
        """``precision`` ``bf16`` (only for measuring it: nothing serves it) lets a CPU with
        AVX-512 BF16 or AMX run the float parts in bfloat16."""
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": precision,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._local = threading.local()
        self._inputs = [self._describe(port) for port in self._compiled.inputs]
        self._outputs = [self._describe(port) for port in self._compiled.outputs]
        # a tensor has several names (the ONNX graph's and the producing node's): any finds it
        self._output_index = {
            name: i for i, port in enumerate(self._compiled.outputs) for name in port.get_names()
        }

    @staticmethod
    def _describe(port: Any) -> _OvTensor:
        """The port as ONNX Runtime shows it, under its plainest name (``logits``, not
        ``head/class_logits_0``: the ONNX graph's own name has no node path)."""
        shape: list[int | str | None] = [
            int(d.get_length()) if d.is_static else None for d in port.get_partial_shape()
        ]
        element = port.get_element_type().get_type_name()
        name = min(port.get_names(), key=lambda n: ("/" in n or ":" in n, len(n), n))
        return _OvTensor(name, _OV_TYPES.get(element, element), shape)

    def get_inputs(self) -> list[_OvTensor]:
        return list(self._inputs)

    def get_outputs(self) -> list[_OvTensor]:
        return list(self._outputs)

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        results = request.infer(
            {name: np.ascontiguousarray(value) for name, value in input_feed.items()}
        )
        ordered = list(results.values())  # in the compiled model's output order, copied
        try:
            return [np.asarray(ordered[self._output_index[name]]) for name in output_names]
        except KeyError as exc:
            raise ValueError(f"the model has no output named {exc.args[0]!r}") from None


def open_session(
    path: Path,
    engine: Engine,
    threads: int,
    *,
    memory_arena: bool = False,
    spinning: OrtSpinning = "off",
) -> Session:
    """An ``engine`` session over the ONNX file at ``path``.

    Raises:
        RuntimeUnavailableError: ``engine`` is not installed here.
    """
    if not engine_available(engine):
        raise RuntimeUnavailableError(
            f"model runtime {engine!r} is not installed (uv sync --group serve installs it)"
        )
    if engine == "openvino":
        return OpenVinoSession(path, threads)
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path),
        sess_options=ort_session_options(threads, memory_arena, spinning),
        providers=["CPUExecutionProvider"],
    )
