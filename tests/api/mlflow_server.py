"""A real ``mlflow server`` subprocess that a test can stop and start again.

Same port, same SQLite backend store and artifact folder across restarts, so a test sees
exactly what an outage of the tracking server looks like to the API.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from utils.servers import free_port, start_command, stop_command, wait_http
from utils.tools import missing_tool


class MlflowServer:
    """``mlflow server`` on a fixed loopback port (SQLite store, proxied artifacts)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        binary = Path(sys.executable).with_name("mlflow")
        if not binary.exists():
            missing_tool("mlflow binary not found next to the interpreter (uv sync)")
        self.binary = binary
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 120) -> None:
        argv = [
            str(self.binary),
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination",
            str(self.root / "server-artifacts"),
        ]
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.starts += 1
        log_path = self.root / f"mlflow-server-{self.starts}.log"
        self.process = start_command(argv, env, log_path, self.root)
        wait_http(f"{self.url}/health", self.process, log_path, timeout_s)

    def stop(self) -> None:
        if self.process is not None:
            stop_command(self.process, timeout_s=15)
            self.process = None
