"""The launcher's start order, health waits and failure reports, with small real servers."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from skin_mlops.core.config import load_settings
from skin_mlops.core.errors import ConfigError
from skin_mlops.core.net import check_port_free
from skin_mlops.launcher.services import Port, Service
from skin_mlops.launcher.up import Launcher, LaunchError, check_ports
from utils.servers import free_port

HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]


def http_service(name: str, port: int, depends_on: tuple[str, ...] = ()) -> Service:
    return Service(
        name=name,
        title=f"server {name}",
        argv=[*HTTP_SERVER, str(port)],
        health_url=f"http://127.0.0.1:{port}/",
        url=f"http://127.0.0.1:{port}/",
        ports=(Port("127.0.0.1", port, f"{name.upper()}_PORT"),),
        depends_on=depends_on,
    )


@pytest.fixture
def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False), out


def launcher_for(tmp_path: Path, services: list[Service], console: Console, **env: object):
    settings = load_settings(logs_dir=tmp_path / "logs", **env)
    return Launcher(settings, services, console)


def test_services_start_after_their_dependencies_are_healthy(
    tmp_path: Path, console: tuple[Console, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = free_port(), free_port()
    launcher = launcher_for(
        tmp_path,
        [http_service("second", second, depends_on=("first",)), http_service("first", first)],
        console[0],
    )
    try:
        launcher.start_all()
        assert set(launcher.healthy) == {"first", "second"}
        # "second" was started only once "first" answered its health URL.
        assert launcher.children["second"].started_at >= launcher.t0 + launcher.healthy["first"]
        assert (tmp_path / "logs" / "first.log").exists()
    finally:
        launcher.stop_all()
    assert not (tmp_path / "logs" / ".up-processes.json").exists()
    for child in launcher.children.values():
        assert child.exited() is not None


def test_a_child_that_dies_at_start_shows_its_last_lines_and_stops_the_rest(
    tmp_path: Path, console: tuple[Console, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    crash = Service(
        name="crash",
        title="crashing service",
        argv=[sys.executable, "-c", "import sys; print('line one'); sys.exit('boom: bad config')"],
        health_url=f"http://127.0.0.1:{free_port()}/",
        url="",
        depends_on=("ok",),
    )
    launcher = launcher_for(tmp_path, [http_service("ok", free_port()), crash], console[0])
    try:
        with pytest.raises(LaunchError, match="crashing service exited during start-up"):
            launcher.start_all()
    finally:
        launcher.stop_all()
    text = console[1].getvalue()
    assert "line one" in text and "boom: bad config" in text
    assert launcher.children["ok"].exited() is not None


def test_a_child_that_never_gets_healthy_times_out_with_the_setting_named(
    tmp_path: Path, console: tuple[Console, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    silent = Service(
        name="silent",
        title="silent service",
        argv=[sys.executable, "-c", "import time; print('waiting'); time.sleep(600)"],
        health_url=f"http://127.0.0.1:{free_port()}/",
        url="",
    )
    launcher = launcher_for(tmp_path, [silent], console[0], up_health_timeout_s=1.5)
    try:
        with pytest.raises(LaunchError, match="UP_HEALTH_TIMEOUT_S"):
            launcher.start_all()
    finally:
        launcher.stop_all()
    assert "waiting" in console[1].getvalue()


def test_a_death_after_start_is_reported_and_everything_stops(
    tmp_path: Path, console: tuple[Console, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    launcher = launcher_for(
        tmp_path, [http_service("web", port), http_service("other", free_port())], console[0]
    )
    try:
        launcher.start_all()
        family = [psutil.Process(c.pid) for c in launcher.children.values()]
        threading.Timer(0.5, launcher.children["web"].process.kill).start()
        with pytest.raises(LaunchError, match="server web stopped"):
            launcher.watch()
    finally:
        launcher.stop_all()
    assert "server web exited with code -9" in console[1].getvalue()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in family)


def test_a_signal_during_start_up_returns_cleanly(
    tmp_path: Path, console: tuple[Console, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    slow = Service(
        name="slow",
        title="slow service",
        argv=[sys.executable, "-c", "import time; time.sleep(600)"],
        health_url=f"http://127.0.0.1:{free_port()}/",
        url="",
    )
    launcher = launcher_for(tmp_path, [slow], console[0])
    threading.Timer(0.5, launcher.stopping.set).start()
    started = time.monotonic()
    try:
        launcher.start_all()
    finally:
        launcher.stop_all()
    assert time.monotonic() - started < 10
    assert launcher.children["slow"].exited() is not None


def test_a_busy_port_is_one_line_naming_the_setting() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as error:
            check_ports([http_service("api", port)])
    assert str(error.value) == (
        f"port {port} on 127.0.0.1 is already in use; set API_PORT (or --port) to another port"
    )
    check_port_free("127.0.0.1", port, "API_PORT")  # free again once closed


def test_two_services_on_one_port_are_refused_before_anything_starts() -> None:
    port = free_port()
    with pytest.raises(ConfigError, match=f"B_PORT and A_PORT are both {port}"):
        check_ports([http_service("a", port), http_service("b", port)])
