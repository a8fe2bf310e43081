"""``skin-mlops up``: the whole platform on one machine, started, checked and stopped.

Read top to bottom:

1. **Plan.** Is a model published? If not and ``data/raw`` holds photos, ingest and train
   first; if it is empty, say exactly what to put there (the services start anyway: the
   API answers 503 until a model is published, and picks it up by itself).
2. **Check.** Another ``up`` running is refused; groups an earlier, killed ``up`` left
   are swept; every port is checked before anything starts (one line naming the port
   and the setting that moves it); a missing ``prometheus`` binary is said and skipped.
3. **Start in dependency order.** A service starts once everything it depends on is
   healthy (MLflow → [ingest + train] → API → web app; Prometheus at once; Airflow after
   MLflow), each polled on its health URL until ``UP_HEALTH_TIMEOUT_S``.
4. **Watch.** The URLs are printed; a child that dies has its last log lines printed and
   everything is stopped. Ctrl-C or SIGTERM stops every child, in reverse order.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

import httpx
from rich.console import Console
from rich.table import Table

from skin_mlops.core.config import Settings
from skin_mlops.core.dev_secrets import check_secrets
from skin_mlops.core.errors import ConfigError, SkinMlopsError
from skin_mlops.core.net import check_port_free
from skin_mlops.launcher import services as svc
from skin_mlops.launcher.processes import Child, RunFile, start_child, stop_child
from skin_mlops.launcher.prometheus_config import write_localhost_config

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
POLL_S = 0.25


class LaunchError(SkinMlopsError):
    """A service failed to start or died (already explained on the terminal)."""


# --- 1. plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    """What ``up`` does about the model before serving it."""

    action: Literal["serve", "train", "wait-for-data"]
    detail: str


def count_photos(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def plan_model(settings: Settings) -> ModelPlan:
    """Serve the published model, else train on ``data/raw``, else wait for photos."""
    from skin_mlops.dataset_config import load_dataset_config
    from skin_mlops.export_format import read_signature, resolve_export_dir

    source = settings.model_source
    if source.startswith("models:/"):
        return ModelPlan("serve", f"the registry's {source}")
    try:
        signature = read_signature(resolve_export_dir(Path(source)))
        return ModelPlan("serve", f"model {signature.model_version} from {source}")
    except SkinMlopsError:
        pass
    config = load_dataset_config(settings.dataset_config)
    roots = {split: config.split_root(split) for split in ("train", "val")}
    photos = {split: count_photos(root) for split, root in roots.items()}
    if photos["train"] and photos["val"]:
        return ModelPlan(
            "train",
            f"no model at {source}: ingesting and training on {photos['train']} train / "
            f"{photos['val']} val photos first",
        )
    labels = ", ".join(config.labels)
    return ModelPlan(
        "wait-for-data",
        f"no model at {source} and no photos to train on. Put labelled photos (JPEG or "
        f"PNG) in {roots['train']}/<label>/ and {roots['val']}/<label>/, one folder per "
        f"label of {settings.dataset_config} ({labels}), then run `skin-mlops up` again. "
        "Starting the services now: the API answers 503 on /predict until a model is "
        "published (`skin-mlops pipeline`), then serves it without a restart.",
    )


def plan_services(
    settings: Settings, plan: ModelPlan, *, with_airflow: bool, prometheus: str | None
) -> list[svc.Service]:
    """Every service of this run, in the order they are started."""
    services: list[svc.Service] = []
    tracking = svc.tracking_server_url(settings)
    if tracking:
        services.append(svc.mlflow_service(settings))
    needs = ("mlflow",) if tracking else ()
    # The API needs MLflow only to resolve a registry source; an export folder is read as is.
    api_after = needs if settings.model_source.startswith("models:/") else ()
    if plan.action == "train":
        services.append(svc.pipeline_service(settings, depends_on=needs))
        api_after = ("pipeline",)
    services.append(
        svc.api_service(settings, expect_model=plan.action != "wait-for-data", depends_on=api_after)
    )
    services.append(svc.webapp_service(settings))
    if with_airflow:
        services.append(svc.airflow_service(settings, settings.airflow_dags_dir, depends_on=needs))
    if prometheus:
        running = {s.name for s in services} | {"prometheus"}
        config = write_localhost_config(settings, running)
        services.append(svc.prometheus_service(settings, prometheus, config))
    return services


# --- 2. check --------------------------------------------------------------------------


def check_ports(services: list[svc.Service]) -> None:
    """One line for the first port taken (with the setting that moves it)."""
    seen: dict[int, str] = {}
    for service in services:
        for port in service.ports:
            if port.port in seen:
                raise ConfigError(
                    f"{port.setting} and {seen[port.port]} are both {port.port}: set one of "
                    "them to another port"
                )
            seen[port.port] = port.setting
            check_port_free(port.host, port.port, port.setting)


# --- 3 + 4. start in order, watch, stop ------------------------------------------------


class Launcher:
    """Starts services as their dependencies turn healthy; stops them in reverse."""

    def __init__(self, settings: Settings, services: list[svc.Service], console: Console) -> None:
        self.settings = settings
        self.services = {s.name: s for s in services}
        self.console = console
        self.children: dict[str, Child] = {}
        self.healthy: dict[str, float] = {}
        self.stopping = threading.Event()
        self.run_file = RunFile(settings.logs_dir / ".up-processes.json")
        self.http = httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0))
        self.t0 = time.monotonic()

    # signal handlers only set a flag: every wait below polls it
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        first = not self.stopping.is_set()
        self.stopping.set()  # before printing: a second signal may arrive mid-print
        if first:
            self.console.print(f"\n[yellow]{signal.Signals(signum).name}: stopping…[/]")

    def start_all(self) -> None:
        """Start everything in dependency order; raise :class:`LaunchError` on a failure."""
        pending = list(self.services)
        last_reason: dict[str, str] = {}
        while pending or len(self.healthy) < len(self.services):
            if self.stopping.is_set():
                return
            for name in list(pending):
                service = self.services[name]
                if all(dep in self.healthy for dep in service.depends_on):
                    self._start(service)
                    pending.remove(name)
            for name, child in self.children.items():
                if name in self.healthy:
                    continue
                service = self.services[name]
                code = child.exited()
                if service.one_shot:
                    if code == 0:
                        self._mark_healthy(service)
                    elif code is not None:
                        raise LaunchError(f"{service.title} failed (exit code {code})")
                    continue
                if code is not None:
                    self._explain_death(child, code)
                    raise LaunchError(f"{service.title} exited during start-up (code {code})")
                reason = self._probe(service)
                if reason is None:
                    self._mark_healthy(service)
                elif time.monotonic() - child.started_at > self.settings.up_health_timeout_s:
                    self._explain_death(child, None)
                    raise LaunchError(
                        f"{service.title} not healthy after "
                        f"{self.settings.up_health_timeout_s:.0f} s at {service.health_url} "
                        f"({reason}); see {child.log_path} (UP_HEALTH_TIMEOUT_S sets the wait)"
                    )
                else:
                    last_reason[name] = reason
            time.sleep(POLL_S)

    def _start(self, service: svc.Service) -> None:
        log = None if service.one_shot else self.settings.logs_dir / f"{service.name}.log"
        env = {**os.environ, **svc.common_env(self.settings), **service.env}
        where = f" (log: {log})" if log else ""
        self.console.print(f"[dim]starting[/] {service.title}{where}")
        child = start_child(service.name, service.argv, env=env, cwd=Path.cwd(), log_path=log)
        self.children[service.name] = child
        self.run_file.add(child)

    def _probe(self, service: svc.Service) -> str | None:
        try:
            return service.healthy(self.http.get(service.health_url))
        except httpx.ConnectError:
            return "connection refused"
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def _mark_healthy(self, service: svc.Service) -> None:
        self.healthy[service.name] = time.monotonic() - self.t0
        if not service.one_shot:
            self.console.print(
                f"[green]✓[/] {service.title} healthy [dim]({self.healthy[service.name]:.1f} s)[/]"
            )

    def _explain_death(self, child: Child, code: int | None) -> None:
        what = f"exited with code {code}" if code is not None else "did not become healthy"
        self.console.print(f"[bold red]{self.services[child.name].title} {what}[/]")
        lines = child.last_lines()
        if lines:
            self.console.print(f"[dim]last lines of {child.log_path}:[/]")
            for line in lines:
                self.console.print(f"  {line}", markup=False, highlight=False)

    def watch(self) -> None:
        """Block until a signal (return) or a child's death (:class:`LaunchError`)."""
        while not self.stopping.wait(0.5):
            for name, child in self.children.items():
                if self.services[name].one_shot:
                    continue
                code = child.exited()
                if code is not None:
                    self._explain_death(child, code)
                    raise LaunchError(f"{self.services[name].title} stopped; stopping the rest")

    def stop_all(self) -> None:
        """Stop every child, last started first; nothing is left running."""
        for name in reversed(list(self.children)):
            child = self.children[name]
            if child.exited() is None:
                self.console.print(f"[dim]stopping[/] {self.services[name].title}")
            stop_child(child, timeout_s=self.services[name].stop_timeout_s)
            self.run_file.remove(name)
        self.run_file.clear()
        self.http.close()


def print_summary(launcher: Launcher, plan: ModelPlan, console: Console) -> None:
    table = Table(title="skin-mlops is up", title_justify="left")
    table.add_column("service", no_wrap=True)
    table.add_column("URL", no_wrap=True)
    table.add_column("log", overflow="fold")
    for name, service in launcher.services.items():
        if service.one_shot:
            continue
        table.add_row(service.title, service.url, str(launcher.children[name].log_path))
    console.print(table)
    slowest = max(launcher.healthy.values(), default=0.0)
    console.print(f"all healthy in {slowest:.1f} s. Ctrl-C stops everything.")
    if plan.action == "wait-for-data":
        console.print(f"[yellow]{plan.detail}[/]")
    if "airflow" in launcher.services:
        password = launcher.settings.airflow_home / "simple_auth_manager_passwords.json.generated"
        console.print(f"Airflow login: admin, password in {password}")


def run_up(settings: Settings, *, with_airflow: bool, console: Console) -> None:
    """The ``skin-mlops up`` flow (see the module docstring); returns after a clean stop."""
    check_secrets(settings, component="skin-mlops up")  # production: no dev secret from .env
    run_file = RunFile(settings.logs_dir / ".up-processes.json")
    other = run_file.running_launcher()
    if other:
        raise ConfigError(f"skin-mlops up is already running here (pid {other}); stop it first")
    swept = run_file.sweep()
    if swept:
        console.print(f"[yellow]stopped what an earlier `up` left running: {', '.join(swept)}[/]")

    plan = plan_model(settings)
    console.print(("[yellow]" if plan.action == "wait-for-data" else "") + plan.detail)
    prometheus = svc.prometheus_binary()
    if prometheus is None:
        console.print(
            "[yellow]prometheus not found: running without monitoring "
            "(Debian/Ubuntu: sudo apt-get install prometheus)[/]"
        )
    services = plan_services(settings, plan, with_airflow=with_airflow, prometheus=prometheus)
    check_ports(services)

    launcher = Launcher(settings, services, console)
    previous = {
        sig: signal.signal(sig, launcher._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        launcher.start_all()
        if not launcher.stopping.is_set():
            print_summary(launcher, plan, console)
            launcher.watch()
    finally:
        launcher.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("stopped.")
