"""Whose fault a failure is, in the status code; request ids; overload; a client gone.

The app is the real one serving the tiny model; faults go in through the model's session
(:mod:`.faults`). Overload and disconnects run against a live uvicorn server with real
sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from skin_mlops.api.main import create_app
from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import ConfigError
from utils.images import encode, two_tone
from utils.servers import free_port

from .faults import inject, services_of, wait_until
from .test_metrics import sample_value, scrape

pytestmark = pytest.mark.timeout(120)
RED = encode(two_tone("red"))


def post_red(client: TestClient | httpx.Client, **kwargs: object) -> httpx.Response:
    return client.post("/predict", files={"file": ("x.png", RED, "image/png")}, **kwargs)


async def apost_red(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/predict", files={"file": ("x.png", RED, "image/png")})


# --- request ids ------------------------------------------------------------------------


def test_every_response_has_a_request_id_and_a_sane_incoming_one_is_kept(
    client: TestClient,
) -> None:
    generated = client.get("/health").headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert client.get("/health").headers["X-Request-ID"] != generated
    kept = post_red(client, headers={"X-Request-ID": "trace-42.a:b_c"})
    assert kept.status_code == 200 and kept.headers["X-Request-ID"] == "trace-42.a:b_c"
    for insane in ("two words", "x" * 129, "<script>", ""):
        replaced = client.get("/ready", headers={"X-Request-ID": insane})
        assert replaced.headers["X-Request-ID"] != insane
        assert len(replaced.headers["X-Request-ID"]) == 32
    # an error answered by a middleware (413 before the body is read) has one too
    huge = client.post(
        "/predict", content=b"x", headers={"Content-Length": str(10**9), "X-Request-ID": "big-1"}
    )
    assert huge.status_code == 413 and huge.headers["X-Request-ID"] == "big-1"
    assert client.post("/predict", files={"file": ("x.txt", b"text")}).headers["X-Request-ID"]


# --- status codes -----------------------------------------------------------------------


def test_an_internal_error_is_500_with_a_generic_body_and_the_id_in_the_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    session = inject(client.app)
    session.error = RuntimeError("injected ONNX Runtime failure /secret/path")
    with caplog.at_level(logging.ERROR, logger="skin_mlops"):
        response = post_red(client, headers={"X-Request-ID": "req-500-test"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "req-500-test"
    assert response.json() == {"detail": "internal server error (request id req-500-test)"}
    logged = [r for r in caplog.records if "req-500-test" in r.getMessage()]
    assert logged, caplog.text
    assert any(r.exc_info and "injected ONNX Runtime failure" in caplog.text for r in logged)
    session.error = None
    assert post_red(client).status_code == 200  # the worker is still there
    requests = scrape(client)["api_requests"]
    assert sample_value(requests, "api_requests_total", endpoint="/predict", status="500") == 1


def test_out_of_memory_is_503_with_retry_after(client: TestClient) -> None:
    session = inject(client.app)
    session.error = MemoryError()
    response = post_red(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "out of memory" in response.json()["detail"]
    # in a batch request the 503 is the whole request's
    batch = client.post("/predict/batch", files=[("files", ("a.png", RED))] * 2)
    assert batch.status_code == 503 and "out of memory" in batch.json()["detail"]


def test_bad_input_is_the_clients_fault(client: TestClient) -> None:
    assert client.post("/predict", files={"file": ("x.png", b"")}).status_code == 422
    assert (
        client.post("/predict", files={"file": ("x.png", RED[: len(RED) // 2])}).status_code == 422
    )
    assert client.post("/predict", files={"file": ("x.txt", b"hello")}).status_code == 415
    too_big = b"\x89PNG" + b"\0" * (2 * 1024 * 1024 + 1)
    assert client.post("/predict", files={"file": ("x.png", too_big)}).status_code == 413


def test_no_model_yet_is_503_with_retry_after(tmp_path: Path, settings_for) -> None:
    with TestClient(create_app(settings_for(tmp_path / "none"))) as api:
        response = post_red(api)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "no exported model" in response.json()["detail"]


def test_overload_is_503_with_retry_after_and_nothing_queued_past_the_limit(
    export_link: Path, settings_for, live_server_for
) -> None:
    live = live_server_for(settings_for(export_link, max_queued_images=2, max_batch_size=1))
    app = live.server.config.app
    session = inject(app)
    gate = session.block()
    batcher = services_of(app).batcher

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            first = asyncio.ensure_future(apost_red(client))
            await asyncio.to_thread(session.entered.wait, 10)
            queued = [asyncio.ensure_future(apost_red(client)) for _ in range(2)]
            await asyncio.to_thread(wait_until, lambda: batcher.queued == 2, 10, "2 queued")
            refused = await apost_red(client)
            gate.set()
            return list(await asyncio.gather(first, *queued)), refused

    try:
        served, refused = asyncio.run(scenario())
    finally:
        gate.set()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert "busy" in refused.json()["detail"]
    assert [r.status_code for r in served] == [200, 200, 200]
    assert session.images == 3  # the refused one was never decoded nor queued
    metrics = httpx.get(f"{live.url}/metrics").text
    assert 'api_images_dropped_total{reason="queue_full"} 1.0' in metrics


def test_a_client_that_disconnects_costs_nothing_downstream(
    export_link: Path, settings_for, live_server_for
) -> None:
    """A real socket sends a whole request and closes while the model is busy: its image
    is dropped before the model runs, and the request ends as 499 in the metrics."""
    live = live_server_for(settings_for(export_link, max_batch_size=1))
    app = live.server.config.app
    session = inject(app)
    gate = session.block()
    host, port = live.url.removeprefix("http://").split(":")
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + RED
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()

    def gone_499() -> float:
        text = httpx.get(f"{live.url}/metrics").text
        for line in text.splitlines():
            if line.startswith("api_requests_total{") and 'status="499"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            answers: list[httpx.Response] = []
            first = threading.Thread(target=lambda: answers.append(post_red(client)))
            first.start()
            assert session.entered.wait(10)  # the first image is in the model, blocked
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(head + body)
                wait_until(lambda: services_of(app).batcher.queued == 1, 10, "queued")
            wait_until(lambda: gone_499() == 1, 10, "the disconnect is noticed")
            gate.set()
            first.join(timeout=30)
        assert [a.status_code for a in answers] == [200]
        wait_until(lambda: services_of(app).batcher.queued == 0, 5, "queue drained")
        assert (session.calls, session.images) == (1, 1)  # the gone client's image never ran
        metrics = httpx.get(f"{live.url}/metrics").text
        assert 'api_images_dropped_total{reason="client_gone"} 1.0' in metrics
        assert 'status="500"' not in metrics
    finally:
        gate.set()


# --- ADMIN_TOKEN ------------------------------------------------------------------------


def test_a_short_admin_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="ADMIN_TOKEN must be at least 16") as caught:
        load_settings(admin_token="short-secret", _env_file=None)
    assert "short-secret" not in str(caught.value)
    assert load_settings(admin_token="x" * 16, _env_file=None).admin_token is not None
    assert load_settings(admin_token="", _env_file=None).admin_token is not None  # disabled


def test_serve_refuses_to_start_with_a_short_admin_token(tmp_path: Path) -> None:
    env = {**os.environ, "ADMIN_TOKEN": "tiny-token", "MODEL_SOURCE": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("skin-mlops")), "serve", "--port", str(free_port())],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ADMIN_TOKEN must be at least 16 characters" in result.stderr
    assert "tiny-token" not in result.stderr + result.stdout
