"""Shared helpers of the serving benchmarks (``serve_benchmark``, ``serve_load_reload``,
``serve_parity``): the model to serve, the dermnet5 photos, server processes, load clients.

The model is the real export ``runs/skin5-current`` when it exists; otherwise a stand-in of
the same size and graph is exported once to ``benchmarks/out/standin/``: the
EfficientNet-Lite0 backbone (ImageNet weights, ``skin_mlops.modeling.backbones``) + a
seeded random ``Dense(5)`` head, written with ``skin_mlops.modeling.export.write_export``
(so ``model.keras``, ``model.onnx`` and the signature are exactly what training writes).
Speed does not depend on the head's weights; parity on real photos needs the real model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
DERMNET = REPO.parent / "shared" / "datasets" / "dermnet5"
REAL_EXPORT = REPO / "runs" / "skin5-current"
STANDIN_LINK = OUT / "standin" / "runs" / "skin5-current"
LABELS = ["acne", "actinic_keratosis", "atopic_dermatitis", "lichen_planus", "psoriasis"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def val_photos() -> list[Path]:
    """The dermnet5 val photos (sorted); exits with a clear line if the dataset is absent."""
    photos = sorted((DERMNET / "val").glob("*/*.jpg"))
    if not photos:
        sys.exit(f"benchmark needs the dermnet5 photos at {DERMNET}/val/<label>/*.jpg (absent)")
    return photos


def resolve_model(export: Path | None) -> tuple[Path, str]:
    """``(export link, description)``: the given export, the real one, or the stand-in."""
    if export is not None:
        return export, f"export {export}"
    if (REAL_EXPORT / "inference" / "signature.json").exists():
        return REAL_EXPORT, f"trained model {REAL_EXPORT.resolve().name} (runs/skin5-current)"
    if not (STANDIN_LINK / "inference" / "signature.json").exists():
        build_standin_export()
    return STANDIN_LINK, "stand-in: EfficientNet-Lite0 (ImageNet) + random Dense(5) head, 224x224"


def build_standin_export() -> Path:
    """Export the Lite0 + Dense(5) stand-in (see module docstring) and publish it."""
    import keras

    from skin_mlops import export_format
    from skin_mlops.modeling.backbones import build_backbone
    from skin_mlops.modeling.export import compose_model, write_export
    from skin_mlops.preprocessing import PREPROCESSING_ID, preprocess_bytes

    print("building the stand-in export (Lite0 + Dense(5)) ...", flush=True)
    keras.utils.set_random_seed(0)
    backbone = build_backbone("efficientnet_lite0", image_size=224)
    head = keras.Sequential(
        [keras.Input((backbone.feature_dim,)), keras.layers.Dense(len(LABELS), name="logits")]
    )
    model = compose_model(backbone.model, head, 224)
    photos = val_photos()[::40]
    parity_images = np.stack([preprocess_bytes(p.read_bytes(), 224) for p in photos])
    signature = export_format.ModelSignature(
        model_version="standin-lite0-v1",
        run_id=None,
        backbone="efficientnet_lite0",
        backbone_weights_sha256=backbone.weights_sha256,
        image_size=224,
        preprocessing_id=PREPROCESSING_ID,
        labels=LABELS,
        temperature=1.0,
        input=export_format.TensorSpec(name="image", shape=[None, 224, 224, 3]),
        output=export_format.TensorSpec(name="logits", shape=[None, len(LABELS)]),
    )
    staging = export_format.new_version_dir(STANDIN_LINK, signature.model_version)
    result = write_export(model, signature, staging, parity_images)
    return export_format.publish(result.folder, STANDIN_LINK, signature.model_version)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server subprocess (its own process group) and its base URL."""

    name: str
    process: subprocess.Popen
    url: str
    log_path: Path

    def tree_rss_mib(self) -> float:
        """Resident memory of the server process and its children, MiB."""
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 15 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(
    name: str,
    command: list[str],
    port: int,
    ready_path: str,
    env: dict[str, str],
    timeout_s: float = 240,
) -> Server:
    """Start ``command`` (in its own process group) and wait until ``ready_path`` answers 200."""
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / f"server-{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        cwd=REPO,
        start_new_session=True,
    )
    server = Server(name, process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    sys.exit(f"{name} not ready within {timeout_s:.0f} s; see {log_path}")


class RssSampler:
    """Samples a server's resident memory every 0.2 s in a thread; keeps the peak."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.server.tree_rss_mib())
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


RequestFn = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass
class LoadResult:
    """Outcome of a load run: per-request latencies (s) and failures."""

    concurrency: int
    elapsed_s: float
    latencies_s: list[float] = field(default_factory=list)
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    started_at: float = 0.0
    finish_times: list[float] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")
        )


async def run_load(
    base_url: str,
    send: RequestFn,
    concurrency: int,
    *,
    duration_s: float | None = None,
    requests_per_client: int | None = None,
    timeout_s: float = 60,
) -> LoadResult:
    """``concurrency`` clients, each sending requests back to back, until the duration or
    count is reached. A request fails on a transport error or a non-200 status."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = LoadResult(concurrency, 0.0)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        result.started_at = start
        deadline = start + duration_s if duration_s else float("inf")
        counter = 0

        async def client_loop(worker: int) -> None:
            nonlocal counter
            sent = 0
            while time.perf_counter() < deadline and (
                requests_per_client is None or sent < requests_per_client
            ):
                index = counter
                counter += 1
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await send(client, index)
                    ok = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                t1 = time.perf_counter()
                if ok:
                    result.latencies_s.append(t1 - t0)
                    result.finish_times.append(t1 - start)
                else:
                    result.failures += 1
                    if len(result.failure_examples) < 5:
                        result.failure_examples.append(detail)

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        result.elapsed_s = time.perf_counter() - start
    return result


def int8_photos(labels: list[str], size: int, calibration_photos: int) -> tuple:
    """What the int8 stage is given, from dermnet5: ``(calibration, val images, val label
    indices)``, float32 ``[N, size, size, 3]`` through ``preprocess_bytes``; calibration is
    a seeded sample of ``calibration_photos`` train photos (as ``quantize_in_training``)."""
    import numpy as np

    from skin_mlops.preprocessing import preprocess_bytes

    index = {label: i for i, label in enumerate(labels)}
    train = sorted((DERMNET / "train").glob("*/*.jpg"))
    count = min(calibration_photos, len(train))
    picked = sorted(np.random.default_rng(0).choice(len(train), count, replace=False))
    calibration = np.stack([preprocess_bytes(train[i].read_bytes(), size) for i in picked])
    photos = val_photos()
    images = np.stack([preprocess_bytes(p.read_bytes(), size) for p in photos])
    return calibration, images, np.array([index[p.parent.name] for p in photos])
