"""Hostile uploads against a real ``skin-mlops serve`` process: no 5xx, alive, bounded memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from utils.images import encode, two_tone
from utils.model_factory import publish_tiny_export
from utils.servers import free_port

from .malformed import Case, catalogue

MAX_UPLOAD = 512 * 1024


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_models
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``skin-mlops serve`` on a free port, in a subprocess, serving the tiny export."""
    tmp_path = tmp_path_factory.mktemp("served")
    export_link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(export_link, tiny_models.v1, "v1")
    port = free_port()
    env = {
        **os.environ,
        "MODEL_SOURCE": str(export_link),
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "MAX_BATCH_UPLOAD_BYTES": str(4 * MAX_UPLOAD),
        "MODEL_POLL_SECONDS": "0",
        "ADMIN_TOKEN": "",
        "ORT_INTRA_OP_THREADS": "1",
    }
    binary = Path(sys.executable).with_name("skin-mlops")
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server not ready in 60 s"
        time.sleep(0.1)
    yield url, process
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def send(client: httpx.Client, case: Case) -> httpx.Response:
    if case.content is not None:
        return client.post(
            case.path, content=case.content, headers={"content-type": case.content_type or ""}
        )
    name = "../../etc/passwd" if "traversal" in case.name else "upload.bin"
    return client.post(
        case.path, files={case.field: (name, case.data or b"", "application/octet-stream")}
    )


def test_catalogue_has_no_5xx_and_the_process_stays_up_and_small(served) -> None:
    url, process = served
    cases = catalogue(MAX_UPLOAD)
    assert len(cases) >= 20
    server = psutil.Process(process.pid)
    rss_after_round: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _round in range(3):
            for case in cases:
                response = send(client, case)
                assert response.status_code in case.expected, (
                    case.name,
                    response.status_code,
                    response.text,
                )
                body = response.json()
                if response.status_code >= 400:
                    assert isinstance(body["detail"], str) and body["detail"], case.name
                    assert "Traceback" not in body["detail"]
            rss_after_round.append(server.memory_info().rss / 2**20)
        assert client.get("/health").status_code == 200
        good = client.post("/predict", files={"file": ("ok.png", encode(two_tone("red")))})
        assert good.status_code == 200 and good.json()["label"] == "red"
        metrics = client.get("/metrics").text
    assert process.poll() is None
    assert 'status="500"' not in metrics
    # memory is bounded: no growth from round to round, and well under the service budget
    assert rss_after_round[2] - rss_after_round[0] < 64, rss_after_round
    assert max(rss_after_round) < 600, rss_after_round


def test_declared_content_length_over_the_limit_is_refused_unread(served) -> None:
    """A client announcing 1 GB gets 413 at once, before sending (or us reading) the body."""
    url, _ = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b"x" * 1000
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"over the limit" in body


def test_streamed_body_without_length_is_cut_off_at_the_limit(served) -> None:
    url, _ = served

    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(40):  # 2.5 MB in 64 KiB chunks, no Content-Length (chunked encoding)
            yield b"\xff" * 65536
        yield b"\r\n--b--\r\n"

    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/predict",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 413
        assert "over the limit" in response.json()["detail"]
        assert client.get("/health").status_code == 200
