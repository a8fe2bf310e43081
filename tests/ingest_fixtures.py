"""Helpers for storage/ingestion tests: generated images, a moto_server, a raw data tree.

Imported by ``tests/conftest.py`` (fixtures) and by the test modules (plain functions).
The name is unique on purpose: several ``conftest.py`` exist, so ``from conftest import``
would be ambiguous.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skin_mlops.core.config import Settings
from utils.tools import missing_tool

# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def image_bytes(seed: int = 0, size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> bytes:
    """A small image whose pixels depend on ``seed`` (different seeds, different bytes)."""
    rng = np.random.default_rng(seed)
    width, height = size
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = gradient + rng.normal(0, 40, (height, width, 3))
    array = np.clip(pixels, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_image(
    path: Path, seed: int = 0, size: tuple[int, int] = (64, 48), fmt: str = "JPEG"
) -> Path:
    """Write :func:`image_bytes` to ``path`` (parents created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, size, fmt))
    return path


# --------------------------------------------------------------------------------------
# moto_server (a real S3 endpoint over HTTP)
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_server_binary() -> str | None:
    """The ``moto_server`` next to this Python, or on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def start_moto_server(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``moto_server`` on a free port; return the process and its endpoint URL."""
    binary = moto_server_binary()
    if binary is None:
        missing_tool("moto_server binary not found: install moto[server] (dev group) for S3 tests")
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return process, endpoint
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not answer within 30 s")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a process we started (kill it if it does not stop in 5 s)."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------------------
# A raw dataset in a temporary working directory
# --------------------------------------------------------------------------------------

TEST_LABELS = ("acne", "lichen_planus", "atopic_dermatitis")


@dataclass
class RawDataset:
    """``<root>/data/raw/<split>/<label>/`` plus a dataset config and settings."""

    root: Path
    config_path: Path
    settings: Settings
    labels: tuple[str, ...] = TEST_LABELS
    dataset: str = "testset"
    bucket: str = "skin-processed"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def db_path(self) -> Path:
        return self.root / "data" / "metadata" / "skin_metadata.db"

    @property
    def objects(self) -> Path:
        return self.root / "data" / "objects"

    def add(self, split: str, label: str, name: str, seed: int, fmt: str = "JPEG") -> Path:
        """Write a generated image at ``data/raw/<split>/<label>/<name>``."""
        return write_image(self.raw / split / label / name, seed=seed, fmt=fmt)

    def image_files(self) -> list[Path]:
        """Every regular file under ``data/raw`` (sorted)."""
        return sorted(p for p in self.raw.rglob("*") if p.is_file())


def write_dataset_config(
    path: Path,
    labels: tuple[str, ...] = TEST_LABELS,
    dataset: str = "testset",
    bucket: str = "skin-processed",
) -> Path:
    """A dataset config with train/val under ``data/raw`` (relative to the working dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label_lines = "".join(f"  - {label}\n" for label in labels)
    path.write_text(
        f"dataset: {dataset}\n"
        "splits:\n  train: data/raw/train\n  val: data/raw/val\n"
        f"labels:\n{label_lines}"
        "metadata_db: data/metadata/skin_metadata.db\n"
        f"storage:\n  bucket: {bucket}\n  prefix: skin\n",
        encoding="utf-8",
    )
    return path
