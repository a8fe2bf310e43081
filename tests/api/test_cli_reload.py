"""``skin-mlops serve --reload`` for real, as the compose ``api`` service runs it.

The package's source is copied to ``<tmp>/app/src`` and put first with ``PYTHONPATH``
(what compose does with the mounted ``./src`` over the image's installed copy). The test
then saves a new route into that copy and waits for the server to answer it: the edited
source is what runs, and a save restarts the worker without restarting the command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import skin_mlops
from utils.servers import free_port

PROBE = """

@router.get("/reload-probe")
async def reload_probe() -> dict[str, str]:
    return {"edited": "yes"}
"""


def wait_for(
    check: Callable[[], bool], seconds: float, process: subprocess.Popen, log: Path
) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert process.poll() is None, f"serve exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def answers(url: str, status: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == status
        except httpx.TransportError:
            return False

    return check


@pytest.mark.timeout(90)
def test_serve_reload_runs_the_edited_source_after_a_save(tmp_path: Path) -> None:
    src = tmp_path / "app" / "src"
    package = src / "skin_mlops"
    shutil.copytree(
        Path(skin_mlops.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    missing_model = tmp_path / "no-model-here"
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"MODEL_SOURCE", "PYTHONPATH"}},
        "PYTHONPATH": str(src),
        "MODEL_POLL_SECONDS": "0",
        "ORT_INTRA_OP_THREADS": "1",
    }
    log = tmp_path / "serve.log"
    binary = Path(sys.executable).with_name("skin-mlops")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--reload",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model-source",
                str(missing_model),
            ],
            cwd=tmp_path,  # no .env here
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the reloader and its worker: one group to stop
        )
    try:
        wait_for(answers(f"{url}/health", 200), 45, process, log)
        # Watches the copy that PYTHONPATH put first, not the installed package.
        assert f"Will watch for changes in these directories: ['{package}']" in log.read_text()
        # --model-source reached the worker process (it builds the app itself).
        ready = httpx.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503 and str(missing_model) in ready.json()["detail"]
        assert httpx.get(f"{url}/reload-probe", timeout=5).status_code == 404

        with (package / "api" / "routes" / "health.py").open("a", encoding="utf-8") as f:
            f.write(PROBE)
        wait_for(answers(f"{url}/reload-probe", 200), 30, process, log)
        assert httpx.get(f"{url}/reload-probe", timeout=5).json() == {"edited": "yes"}
        assert process.poll() is None, "a save restarts the worker, not the command"
        assert log.read_text().count("Started server process") == 2
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
