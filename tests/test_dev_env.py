"""The development environment: ``.env``, ``docker-compose.yml``, the Dockerfiles and CI.

Nothing here starts Docker. The checks are static but real: the versioned ``.env`` must load
into :class:`Settings`; every port and credential in the compose file must come from ``.env``;
each container's environment must itself be a valid ``Settings``; the API image's dependency
group must not pull TensorFlow (checked on the resolved lock, not on the group's top level);
and, where a Docker Compose binary exists, ``docker compose config`` must accept the file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from skin_mlops.core.config import Settings, load_settings
from utils.tools import missing_tool, require_tool

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = REPO_ROOT / ".env"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKER_DIR = REPO_ROOT / "docker"

MANDATORY_SERVICES = [
    "minio",
    "minio-mc",
    "mlflow-db",
    "mlflow",
    "api",
    "webapp",
    "airflow-db",
    "redis",
    "airflow-init",
    "airflow-webserver",
    "airflow-scheduler",
    "airflow-worker",
    "prometheus",
    "grafana",
]

# Keys Settings reads from .env (name = upper-case field name), with their dev values.
REQUIRED_SETTINGS_KEYS = {
    "STORAGE_BACKEND": "local",
    "S3_ACCESS_KEY_ID": None,
    "S3_SECRET_ACCESS_KEY": None,
    "S3_ENDPOINT_URL": "http://localhost:9000",
    "S3_REGION": None,
    "S3_PROCESSED_BUCKET": "skin-processed",
    "S3_MODELS_BUCKET": "models-registry",
    "MLFLOW_TRACKING_URI": "sqlite:///data/mlflow/mlflow.db",
    "API_BASE_URL": "http://localhost:8000",
    "API_PORT": "8000",
    "WEBAPP_PORT": "8501",
    "MLFLOW_PORT": "5000",
    "MINIO_PORT": "9000",
    "MINIO_CONSOLE_PORT": "9001",
    "AIRFLOW_PORT": "8080",
    "PROMETHEUS_PORT": "9090",
    "GRAFANA_PORT": "3000",
    "AIRFLOW_ADMIN_USER": "admin",
    "AIRFLOW_ADMIN_PASSWORD": "admin",
    "GRAFANA_ADMIN_USER": "admin",
    "GRAFANA_ADMIN_PASSWORD": "admin",
    "MLFLOW_DB_USER": None,
    "MLFLOW_DB_PASSWORD": None,
    "MLFLOW_DB_NAME": None,
    "AIRFLOW_DB_USER": None,
    "AIRFLOW_DB_PASSWORD": None,
    "AIRFLOW_DB_NAME": None,
}
# Keys only docker compose reads (documented as [compose] in .env).
COMPOSE_ONLY_KEYS = {
    "COMPOSE_PROJECT_NAME",
    # MinIO's root login: the minio server and minio-mc only, never the project's code.
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "HOST_BIND_ADDRESS",
    "AIRFLOW_IMAGE",
    "AIRFLOW_UID",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_SECRET_KEY",
    "AIRFLOW_JWT_SECRET",
}

# service -> {.env port key: port the container listens on}. Nothing else is published.
PUBLISHED_PORTS = {
    "minio": {"MINIO_PORT": 9000, "MINIO_CONSOLE_PORT": 9001},
    "mlflow": {"MLFLOW_PORT": 5000},
    "api": {"API_PORT": 8000},
    "webapp": {"WEBAPP_PORT": 8501},
    "airflow-webserver": {"AIRFLOW_PORT": 8080},
    "prometheus": {"PROMETHEUS_PORT": 9090},
    "grafana": {"GRAFANA_PORT": 3000},
}

# ${VAR} / ${VAR:-default} / $VAR, but not the escaped $$VAR or $${VAR}.
INTERPOLATION = re.compile(
    r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))"
)


# --- helpers -------------------------------------------------------------------------------------


@cache
def env_values() -> dict[str, str]:
    """The versioned .env as ``{KEY: value}`` (python-dotenv, the parser pydantic-settings uses)."""
    values = dotenv_values(ENV_FILE)
    assert all(v is not None for v in values.values()), "every .env key needs a value"
    return {k: v for k, v in values.items() if v is not None}


def interpolate(text: str) -> str:
    """Substitute ``${VAR}`` from .env like compose does, leaving ``$$`` escapes as ``$``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env_values()[name]

    return INTERPOLATION.sub(one, text).replace("$$", "$")


def map_strings(node: Any, function: Any) -> Any:
    """Apply ``function`` to every string (keys and values) of a parsed YAML tree."""
    if isinstance(node, dict):
        return {map_strings(k, function): map_strings(v, function) for k, v in node.items()}
    if isinstance(node, list):
        return [map_strings(item, function) for item in node]
    return function(node) if isinstance(node, str) else node


@cache
def compose_raw() -> dict[str, Any]:
    """docker-compose.yml as written (anchors and ``<<`` merges resolved, no interpolation)."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml with ${VAR} replaced by the .env values (comments are not data)."""
    return map_strings(compose_raw(), interpolate)


def interpolated_names() -> set[str]:
    """Every variable name that compose interpolates from the environment."""
    names: set[str] = set()

    def collect(text: str) -> str:
        names.update(m.group(1) or m.group(2) for m in INTERPOLATION.finditer(text))
        return text

    map_strings(compose_raw(), collect)
    return names


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment:`` (map or list form) as a dict of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def image_environment(name: str) -> dict[str, str]:
    """The ``ENV`` of the last stage of the Dockerfile a service is built from (else {})."""
    build = services()[name].get("build")
    if not build:
        return {}
    instructions = dockerfile_instructions(REPO_ROOT / build["dockerfile"])
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    env: dict[str, str] = {}
    for kw, rest in instructions[last_from:]:
        if kw == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(rest))
    return env


def container_environment(name: str) -> dict[str, str]:
    """What a project container sees: its image's ``ENV`` overlaid by ``environment:``.

    No ``env_file`` (checked by :func:`test_no_service_reads_the_whole_env_file`), so
    nothing from .env reaches a container unless the service names it.
    """
    service = services()[name]
    assert not service.get("env_file"), f"{name} must not read the whole .env (env_file)"
    return {**image_environment(name), **environment_of(service)}


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def healthcheck_test(service: dict[str, Any]) -> list[str] | None:
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return None
    test = check.get("test")
    return [test] if isinstance(test, str) else test


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """``{dependency: condition}`` for both depends_on syntaxes."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}


@pytest.fixture
def settings_env_cleared(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No Settings key from the real environment overrides what a test loads."""
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    yield monkeypatch


# --- .env --------------------------------------------------------------------------------------


def test_env_exposes_every_required_key_with_its_dev_value() -> None:
    values = env_values()
    missing = sorted(set(REQUIRED_SETTINGS_KEYS) - set(values))
    assert not missing, f".env lacks {missing}"
    for key, expected in REQUIRED_SETTINGS_KEYS.items():
        assert values[key].strip(), f"{key} is empty in .env"
        if expected is not None:
            assert values[key] == expected, f"{key}={values[key]!r}, want {expected!r}"


def test_env_keys_are_settings_fields_or_documented_compose_keys() -> None:
    """A typo (API_PROT=...) would be silently ignored by Settings: catch it here."""
    fields = {name.upper() for name in Settings.model_fields}
    unknown = sorted(set(env_values()) - fields - COMPOSE_ONLY_KEYS)
    assert not unknown, f".env keys neither in Settings nor compose-only: {unknown}"
    missing_compose = sorted(COMPOSE_ONLY_KEYS - set(env_values()))
    assert not missing_compose, f".env lacks compose keys {missing_compose}"
    assert not COMPOSE_ONLY_KEYS & fields, "a compose-only key is also a Settings field"


def test_env_has_no_duplicate_keys() -> None:
    keys = [
        line.split("=", 1)[0].strip()
        for line in ENV_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"keys set twice in .env (the last one silently wins): {duplicates}"


def test_every_port_key_is_distinct() -> None:
    ports = {k: v for k, v in env_values().items() if k.endswith("_PORT")}
    assert len(set(ports.values())) == len(ports), f"two services share a host port: {ports}"


def test_settings_load_from_the_real_env_file(
    settings_env_cleared: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Settings reads the repo's .env from the working directory and every key parses."""
    shutil.copy(ENV_FILE, tmp_path / ".env")
    settings_env_cleared.chdir(tmp_path)
    settings = load_settings()
    for key, raw in env_values().items():
        field = key.lower()
        if field not in Settings.model_fields:
            continue
        value = getattr(settings, field)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        assert str(value) == raw, f"{key}: .env says {raw!r}, Settings has {value!r}"


def test_settings_from_the_env_file_accept_the_s3_backend(
    settings_env_cleared: pytest.MonkeyPatch,
) -> None:
    """Switching STORAGE_BACKEND=s3 (as Docker does) needs no other key: credentials are there."""
    settings_env_cleared.setenv("STORAGE_BACKEND", "s3")
    settings = load_settings(_env_file=ENV_FILE)
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint_url == env_values()["S3_ENDPOINT_URL"]


def test_airflow_fernet_key_is_a_valid_fernet_key() -> None:
    import base64

    key = env_values()["AIRFLOW_FERNET_KEY"]
    assert len(base64.urlsafe_b64decode(key.encode())) == 32
    assert len(env_values()["AIRFLOW_JWT_SECRET"]) >= 32


def test_env_is_versioned_and_not_ignored() -> None:
    git = shutil.which("git")
    if git is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("git missing or not a git checkout: .env versioning not checked")
    ignored = subprocess.run(
        [git, "check-ignore", "-q", ".env"], cwd=REPO_ROOT, capture_output=True
    ).returncode
    assert ignored == 1, ".env must be versioned (dev values), not git-ignored"


# --- docker-compose.yml: structure ----------------------------------------------------------------


def test_compose_defines_every_mandatory_service() -> None:
    missing = [s for s in MANDATORY_SERVICES if s not in services()]
    assert not missing, f"docker-compose.yml lacks {missing}"


def test_every_interpolated_variable_is_defined_in_env() -> None:
    used = interpolated_names()
    assert used, "expected ${VAR} interpolation in docker-compose.yml"
    undefined = sorted(used - set(env_values()))
    assert not undefined, f"used in docker-compose.yml but not in .env: {undefined}"


def test_published_ports_come_from_env_and_match() -> None:
    for name, service in compose_raw()["services"].items():
        expected = PUBLISHED_PORTS.get(name, {})
        found: dict[str, int] = {}
        for entry in service.get("ports", []):
            match = re.fullmatch(r"\$\{HOST_BIND_ADDRESS\}:\$\{([A-Z_]+_PORT)\}:(\d+)", str(entry))
            assert match, (
                f"{name}: published port {entry!r} must be "
                "'${HOST_BIND_ADDRESS}:${X_PORT}:<container>'"
            )
            found[match.group(1)] = int(match.group(2))
        assert found == expected, f"{name} publishes {found}, expected {expected}"
        for key, container_port in expected.items():
            # Dev values: the host port is the service's standard port.
            assert int(env_values()[key]) == container_port, f"{key} != {container_port}"
    published = {key for ports in PUBLISHED_PORTS.values() for key in ports}
    port_keys = {k for k in env_values() if k.endswith("_PORT")}
    assert published == port_keys, "every *_PORT in .env is published by exactly one service"


def test_published_ports_bind_to_this_machine_only_by_default() -> None:
    assert env_values()["HOST_BIND_ADDRESS"] == "127.0.0.1"


def test_prometheus_cannot_be_reloaded_or_shut_down_over_http() -> None:
    command = " ".join(compose_raw()["services"]["prometheus"]["command"])
    assert "--web.enable-lifecycle" not in command and "--web.enable-admin-api" not in command


def test_databases_and_broker_are_not_published_on_the_host() -> None:
    for name in ("mlflow-db", "airflow-db", "redis"):
        assert not services()[name].get("ports"), f"{name} must stay inside the compose network"


def test_build_dockerfiles_exist() -> None:
    built = {}
    for name, service in services().items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = REPO_ROOT / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        built[name] = dockerfile.relative_to(REPO_ROOT).as_posix()
    assert built["api"] == "docker/Dockerfile.api"
    assert built["webapp"] == "docker/Dockerfile.app"
    assert built["trainer"] == "docker/trainer.Dockerfile"
    assert built["mlflow"] == "docker/mlflow.Dockerfile"


def test_depends_on_names_existing_services_with_sound_conditions() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dep, condition in depends_on(service).items():
            assert dep in all_services, f"{name} depends on unknown service {dep!r}"
            assert dep != name
            assert condition in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }, f"{name} -> {dep}: unknown condition {condition}"
            if condition == "service_healthy":
                assert healthcheck_test(all_services[dep]), f"{dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert is_one_shot(all_services[dep]), f"{dep} is not a one-shot job"


def test_depends_on_has_no_cycle() -> None:
    graph = {name: set(depends_on(s)) for name, s in services().items()}
    done: set[str] = set()
    while graph.keys() - done:
        ready = {n for n in graph.keys() - done if graph[n] <= done}
        assert ready, f"dependency cycle among {sorted(graph.keys() - done)}"
        done |= ready


def test_long_running_services_have_healthchecks() -> None:
    for name, service in services().items():
        if is_one_shot(service):
            continue
        test = healthcheck_test(service)
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} needs a healthcheck"


def test_one_shot_jobs_are_the_expected_ones() -> None:
    one_shots = {name for name, s in services().items() if is_one_shot(s)}
    assert {"minio-mc", "airflow-init"} <= one_shots
    assert not one_shots & set(PUBLISHED_PORTS)


def test_healthchecks_probe_the_port_the_service_listens_on() -> None:
    for name, ports in PUBLISHED_PORTS.items():
        test = " ".join(healthcheck_test(services()[name]) or [])
        if name == "minio":
            assert "mc ready local" in test
            continue
        (container_port,) = ports.values()
        assert f":{container_port}/" in test, f"{name} healthcheck does not probe {container_port}"


def test_bind_mounted_project_files_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./") and Path(source).suffix:  # a file, not a data folder
                assert (REPO_ROOT / source).is_file(), f"{name} mounts missing {source}"
    assert (REPO_ROOT / "airflow" / "dags").is_dir()


# --- docker-compose.yml: what each part is wired to -----------------------------------------------


# The project's code each container runs (relative to src/skin_mlops; core/config.py, where
# every field is declared, does not count as reading it).
SERVICE_CODE: dict[str, tuple[str, ...]] = {
    "api": ("api", "core"),
    "webapp": ("webapp", "core"),
    "trainer": (
        "cli.py",
        "ingestion",
        "dataset_config.py",
        "metadata.py",
        "storage.py",
        "modeling",
        "core",
    ),
    "airflow-worker": (
        "orchestration",
        "ingestion",
        "dataset_config.py",
        "metadata.py",
        "storage.py",
        "modeling",
        "core",
    ),
    # The api-server loads the plugin (/admin/metrics: Airflow's own DB); the scheduler, the
    # DAG processor and the init job run no project code that reads Settings.
    "airflow-webserver": ("orchestration/plugin.py", "orchestration/metrics_app.py"),
    "airflow-scheduler": (),
    "airflow-dag-processor": (),
    "airflow-init": (),
}
# Variables that are not Settings fields, with who reads them.
NON_SETTINGS_KEYS = {
    "PYTHONPATH": "Python: the mounted ./src first on sys.path",
    "DUMB_INIT_SETSID": "the Airflow image's init (warm Celery shutdown)",
}
AIRFLOW_KEY = re.compile(r"_?AIRFLOW_?_[A-Z0-9_]+")  # AIRFLOW__SECTION__KEY, _AIRFLOW_*
S3_CREDENTIAL_KEYS = {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}
ROOT_LOGIN_KEYS = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
MINIO_SETUP = DOCKER_DIR / "minio" / "setup.sh"


@cache
def code_of(service: str) -> str:
    """The source text of the modules a service runs (see SERVICE_CODE)."""
    package = REPO_ROOT / "src" / "skin_mlops"
    texts = []
    for part in SERVICE_CODE[service]:
        path = package / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        texts += [f.read_text(encoding="utf-8") for f in files if f.name != "config.py"]
    return "\n".join(texts)


def test_no_service_reads_the_whole_env_file() -> None:
    """Each service names the variables it gets: .env holds every secret of the stack."""
    offenders = [name for name, s in compose_raw()["services"].items() if "env_file" in s]
    assert not offenders, f"env_file gives a service every key of .env: {offenders}"


def test_only_minio_and_minio_mc_see_the_root_login() -> None:
    for name, service in compose_raw()["services"].items():
        if name in {"minio", "minio-mc"}:
            continue
        text = yaml.safe_dump(service)
        assert not ROOT_LOGIN_KEYS & set(environment_of(service)), f"{name} gets MINIO_ROOT_*"
        assert "MINIO_ROOT_" not in text, f"{name} uses MinIO's root login"
    values = env_values()
    assert values["S3_ACCESS_KEY_ID"] != values["MINIO_ROOT_USER"], "the app user is not root"
    assert values["S3_SECRET_ACCESS_KEY"] != values["MINIO_ROOT_PASSWORD"]
    assert len(values["S3_SECRET_ACCESS_KEY"]) >= 8, "MinIO refuses secrets under 8 characters"


def test_services_that_touch_minio_use_the_app_user_and_the_others_no_keys() -> None:
    values = env_values()
    app_user = (values["S3_ACCESS_KEY_ID"], values["S3_SECRET_ACCESS_KEY"])
    for name in ("trainer", "airflow-worker"):
        env = environment_of(services()[name])
        assert (env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]) == app_user, name
    mlflow = environment_of(services()["mlflow"])
    assert (mlflow["AWS_ACCESS_KEY_ID"], mlflow["AWS_SECRET_ACCESS_KEY"]) == app_user
    # The API loads models from the mounted export or through MLflow's HTTP artifact proxy;
    # the page talks to the API only; Airflow's own processes run no project task.
    for name in ("api", "webapp", *(n for n in services() if n.startswith("airflow-"))):
        if name in {"airflow-db", "airflow-worker"}:
            continue
        env = container_environment(name)
        held = sorted(k for k in env if k in S3_CREDENTIAL_KEYS or k.startswith("AWS_"))
        assert not held, f"{name} holds S3 keys it never uses: {held}"


def test_every_variable_a_project_container_gets_is_one_its_code_reads() -> None:
    fields = set(Settings.model_fields)
    for name, service in services().items():
        if name not in SERVICE_CODE:
            continue
        code = code_of(name)
        airflow = name.startswith("airflow-")
        for key in environment_of(service):
            if key in NON_SETTINGS_KEYS or (airflow and AIRFLOW_KEY.fullmatch(key)):
                continue
            assert key.lower() in fields, f"{name}: {key} is neither a Settings field nor known"
            assert re.search(rf"\.{key.lower()}\b", code), f"{name} gets {key}, never read"
    assert set(SERVICE_CODE) <= set(services()), "SERVICE_CODE names a missing service"


@pytest.mark.parametrize("name", ["api", "webapp", "trainer", "airflow-worker"])
def test_project_containers_get_a_valid_docker_settings(
    settings_env_cleared: pytest.MonkeyPatch, name: str
) -> None:
    """The environment a project container sees loads into Settings, pointed at the stack."""
    for key, value in container_environment(name).items():
        settings_env_cleared.setenv(key, value)
    settings = load_settings(_env_file=None)
    if name in {"trainer", "airflow-worker"}:
        assert settings.storage_backend == "s3"
        assert settings.s3_endpoint_url == "http://minio:9000"
        assert settings.s3_access_key_id == env_values()["S3_ACCESS_KEY_ID"]
        assert settings.s3_models_bucket == env_values()["S3_MODELS_BUCKET"]
    else:
        assert settings.storage_backend == "local" and settings.s3_access_key_id is None
    if name != "webapp":
        assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    if name in {"webapp", "airflow-worker"}:
        assert settings.api_base_url == "http://api:8000"
    if name in {"api", "airflow-worker"}:
        assert settings.admin_token is not None
        assert settings.admin_token.get_secret_value() == env_values()["ADMIN_TOKEN"]
    if name == "api":
        assert settings.api_host == "0.0.0.0"
        assert settings.api_port == PUBLISHED_PORTS["api"]["API_PORT"]
    if name == "webapp":
        assert settings.webapp_port == PUBLISHED_PORTS["webapp"]["WEBAPP_PORT"]
        assert settings.webapp_metrics_host == "0.0.0.0" and settings.webapp_metrics_port == 9100


@pytest.mark.parametrize(
    ("name", "dockerfile", "command"),
    [
        ("api", "docker/Dockerfile.api", ["skin-mlops", "serve", "--reload"]),
        (
            "webapp",
            "docker/Dockerfile.app",
            ["skin-mlops", "webapp", "--host", "0.0.0.0", "--port", "8501", "--dev"],
        ),
    ],
)
def test_api_and_webapp_run_the_mounted_source_and_restart_on_save(
    name: str, dockerfile: str, command: list[str]
) -> None:
    """./src is mounted where PYTHONPATH points, so it beats the image's installed copy.

    The images install the project non-editable into /app/.venv (site-packages), so
    without PYTHONPATH the mount would be ignored. That PYTHONPATH beats an installed copy,
    and that ``serve --reload`` then restarts on a saved file, is run for real in
    tests/api/test_cli_reload.py.
    """
    service = services()[name]
    assert service["command"] == command
    mounts = {v.split(":")[1]: v.split(":") for v in service["volumes"]}
    pythonpath = environment_of(service)["PYTHONPATH"]
    assert mounts[pythonpath] == ["./src", pythonpath, "ro"], f"{name}: ./src not at PYTHONPATH"
    assert (REPO_ROOT / "src" / "skin_mlops" / "__init__.py").is_file()
    assert service["build"]["dockerfile"] == dockerfile
    instructions = dockerfile_instructions(REPO_ROOT / dockerfile)
    syncs = [rest for kw, rest in instructions if kw == "RUN" and "uv sync" in rest]
    assert "--no-editable" in syncs[-1], "installed non-editable: PYTHONPATH is what counts"
    workdirs = [rest for kw, rest in instructions if kw == "WORKDIR"]
    assert workdirs[-1] == "/app" and pythonpath == "/app/src"
    image_env = image_environment(name)
    assert "PYTHONPATH" not in image_env, "the image itself runs its installed copy"


def test_compose_commands_use_options_the_cli_has() -> None:
    """`serve --reload`, `webapp --dev`: a misspelt option would stop the container at start."""
    from typer.main import get_command

    from skin_mlops.cli import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    checked = set()
    for name, service in services().items():
        words = service.get("command")
        if not isinstance(words, list) or words[:1] != ["skin-mlops"]:
            continue
        options = {opt for param in commands[words[1]].params for opt in param.opts}
        options |= {opt for p in commands[words[1]].params for opt in p.secondary_opts}
        for word in words[2:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{name}: {words[1]} has no {word}"
        checked.add(name)
    assert {"api", "webapp", "trainer"} <= checked


# --- MinIO: the buckets, the app's user and its policy (docker/minio/setup.sh) --------------


def run_minio_setup(tmp_path: Path, env: dict[str, str], fail_on: str = "") -> tuple[int, str]:
    """Run the real setup script with a fake ``mc`` that logs its calls; (rc, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "mc"
    fake.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$*" >> "$MC_CALLS"\n'
        'if [ "$1 $2 $3" = "admin policy create" ]; then cat "$6" > "$MC_POLICY"; fi\n'
        'if [ -n "$MC_FAIL_ON" ] && [ "$1 $2" = "$MC_FAIL_ON" ]; then exit 1; fi\n'
    )
    fake.chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.unlink(missing_ok=True)
    calls.touch()
    result = subprocess.run(
        ["/bin/sh", str(MINIO_SETUP)],
        env={
            **env,
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "MC_CALLS": str(calls),
            "MC_POLICY": str(tmp_path / "policy.json"),
            "MC_FAIL_ON": fail_on,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, calls.read_text()


def test_minio_mc_runs_the_setup_script_with_the_keys_it_needs() -> None:
    service = services()["minio-mc"]
    env = environment_of(service)
    values = env_values()
    assert env == {
        key: values[key]
        for key in (
            "MINIO_ROOT_USER",
            "MINIO_ROOT_PASSWORD",
            "S3_PROCESSED_BUCKET",
            "S3_MODELS_BUCKET",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
        )
    }
    assert env["MINIO_ROOT_USER"] == services()["minio"]["environment"]["MINIO_ROOT_USER"]
    (entrypoint_shell, script) = service["entrypoint"]
    assert entrypoint_shell == "/bin/sh" and not service.get("command")
    assert f"./docker/minio/setup.sh:{script}:ro" in service["volumes"]
    assert depends_on(service) == {"minio": "service_healthy"}


def test_minio_setup_creates_the_buckets_the_user_and_attaches_the_policy(
    tmp_path: Path,
) -> None:
    env = environment_of(services()["minio-mc"])
    rc, calls = run_minio_setup(tmp_path, env)
    assert rc == 0, calls
    user, secret = env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"]
    root, root_password = env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]
    assert calls.splitlines() == [
        f"alias set skin http://minio:9000 {root} {root_password}",
        "mb --ignore-existing skin/skin-processed",
        "mb --ignore-existing skin/models-registry",
        "admin policy create skin skin-app /dev/stdin",
        f"admin user add skin {user} {secret}",  # before attach: the user must exist
        f"admin policy attach skin skin-app --user {user}",
        "ls skin",
    ]
    # A missing key stops it before any call; a failing call stops it there.
    for key in ("S3_ACCESS_KEY_ID", "MINIO_ROOT_PASSWORD"):
        rc, calls = run_minio_setup(tmp_path, {k: v for k, v in env.items() if k != key})
        assert rc != 0 and calls == "", key
    rc, calls = run_minio_setup(tmp_path, env, fail_on="admin policy")
    assert rc != 0 and "admin user add" not in calls


# Each S3 call the object store makes (skin_mlops.storage.S3ObjectStore) and the MLflow
# artifact proxy makes, as the IAM action MinIO checks.
ACTIONS_THE_PROJECT_NEEDS = {
    "bucket": {"s3:ListBucket"},  # ListObjectsV2, HeadBucket
    "object": {  # Get/Head, Put (+ multipart upload_file), Delete, aborted multipart
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    },
}

# Everything the app user may do: list, read, write and delete objects. No wildcard, no
# bucket creation or deletion, no bucket policy, ACL, versioning or lifecycle change.
ACTIONS_ALLOWED = {
    "s3:GetBucketLocation",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
}


def test_the_app_policy_grants_only_the_project_buckets(tmp_path: Path) -> None:
    env = environment_of(services()["minio-mc"])
    rc, calls = run_minio_setup(tmp_path, env)
    assert rc == 0, calls
    policy = json.loads((tmp_path / "policy.json").read_text())  # what mc was given
    buckets = {env["S3_PROCESSED_BUCKET"], env["S3_MODELS_BUCKET"]}
    assert buckets == {"skin-processed", "models-registry"}
    granted: dict[tuple[str, str], set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) <= {
            "Sid",
            "Effect",
            "Action",
            "Resource",
        }, statement
        actions = statement["Action"]
        unexpected = sorted(set(actions) - ACTIONS_ALLOWED)
        assert not unexpected, f"more than listing, reading and writing objects: {unexpected}"
        for resource in statement["Resource"]:
            match = re.fullmatch(r"arn:aws:s3:::([a-z0-9.-]+)(/\*)?", resource)
            assert match and match.group(1) in buckets, f"{resource} is not a project bucket"
            kind = "object" if match.group(2) else "bucket"
            granted.setdefault((match.group(1), kind), set()).update(actions)
    for bucket in buckets:
        for kind, needed in ACTIONS_THE_PROJECT_NEEDS.items():
            missing = needed - granted.get((bucket, kind), set())
            assert not missing, f"{bucket} ({kind}) lacks {sorted(missing)}"


def test_mlflow_runs_on_postgres_with_artifacts_in_minio() -> None:
    values = env_values()
    service = services()["mlflow"]
    args = service["command"]
    assert "--workers=1" in args
    assert "--serve-artifacts" in args
    assert f"--artifacts-destination=s3://{values['S3_MODELS_BUCKET']}/mlflow" in args
    store = (
        f"--backend-store-uri=postgresql://{values['MLFLOW_DB_USER']}:"
        f"{values['MLFLOW_DB_PASSWORD']}@mlflow-db:5432/{values['MLFLOW_DB_NAME']}"
    )
    assert store in args
    allowed = next(a for a in args if a.startswith("--allowed-hosts="))
    assert "mlflow:*" in allowed.split("=", 1)[1].split(","), "containers reach it as mlflow:5000"
    env = environment_of(service)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == values["S3_ACCESS_KEY_ID"]
    db_env = environment_of(services()["mlflow-db"])
    assert db_env["POSTGRES_USER"] == values["MLFLOW_DB_USER"]
    assert db_env["POSTGRES_DB"] == values["MLFLOW_DB_NAME"]


def test_airflow_is_version_3_with_celery_redis_and_postgres() -> None:
    values = env_values()
    assert re.fullmatch(r"apache/airflow:3\.\d+\.\d+(-python3\.\d+)?", values["AIRFLOW_IMAGE"])
    airflow = {n: s for n, s in services().items() if n.startswith("airflow-") and "image" in s}
    assert {"airflow-init", "airflow-webserver", "airflow-scheduler", "airflow-worker"} <= set(
        airflow
    )
    db_url = (
        f"{values['AIRFLOW_DB_USER']}:{values['AIRFLOW_DB_PASSWORD']}"
        f"@airflow-db:5432/{values['AIRFLOW_DB_NAME']}"
    )
    jwt_secrets = set()
    for name, service in airflow.items():
        if name == "airflow-db":
            continue
        env = environment_of(service)
        assert service["image"] == "skin-mlops/airflow:dev", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile.airflow", name
        assert service["build"]["args"]["AIRFLOW_IMAGE"] == values["AIRFLOW_IMAGE"], name
        assert "./src:/opt/airflow/src:ro" in service["volumes"], name
        assert env["PYTHONPATH"] == "/opt/airflow/src", name
        if name == "airflow-worker":  # the one that runs the project's tasks
            assert env["STORAGE_BACKEND"] == "s3" and env["API_BASE_URL"] == "http://api:8000"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"postgresql+psycopg2://{db_url}"
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql://{db_url}"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-webserver:8080/execution/"
        )
        assert "FabAuthManager" in env["AIRFLOW__CORE__AUTH_MANAGER"]
        assert env["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
        jwt_secrets.add(env["AIRFLOW__API_AUTH__JWT_SECRET"])
        assert "./airflow/dags:/opt/airflow/dags:ro" in service["volumes"], name
    assert jwt_secrets == {values["AIRFLOW_JWT_SECRET"]}, "one JWT secret for every container"
    assert airflow["airflow-webserver"]["command"] == "api-server"
    assert airflow["airflow-scheduler"]["command"] == "scheduler"
    assert airflow["airflow-worker"]["command"] == "celery worker"
    init_env = environment_of(airflow["airflow-init"])
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert init_env["_AIRFLOW_WWW_USER_USERNAME"] == values["AIRFLOW_ADMIN_USER"] == "admin"
    assert init_env["_AIRFLOW_WWW_USER_PASSWORD"] == values["AIRFLOW_ADMIN_PASSWORD"]
    worker_deps = depends_on(airflow["airflow-worker"])
    assert worker_deps["airflow-webserver"] == "service_healthy"  # execution API must be up
    assert worker_deps["redis"] == worker_deps["airflow-db"] == "service_healthy"


def test_airflow_image_is_the_locked_airflow_plus_the_project() -> None:
    values = env_values()
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text(encoding="utf-8"))
    locked = {p["name"]: p["version"] for p in lock["package"]}
    assert values["AIRFLOW_IMAGE"].startswith(f"apache/airflow:{locked['apache-airflow']}-")
    instructions = dockerfile_instructions(DOCKER_DIR / "Dockerfile.airflow")
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    assert args["AIRFLOW_IMAGE"] == values["AIRFLOW_IMAGE"]
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "--group airflow --group train" in runs and "--frozen" in runs
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in runs, "a lock/image mismatch must fail"
    assert "import skin_mlops.orchestration.plugin" in runs, "the build proves the plugin imports"
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users[-1] == "airflow"


def test_every_dockerfile_copy_source_exists() -> None:
    for dockerfile in sorted(DOCKER_DIR.glob("*Dockerfile*")):
        for kw, rest in dockerfile_instructions(dockerfile):
            if kw != "COPY" or "--from=" in rest:
                continue
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source} missing"


def test_prometheus_and_grafana_wiring() -> None:
    prometheus = services()["prometheus"]
    assert (
        "./monitoring/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in prometheus["volumes"]
    )
    grafana_env = environment_of(services()["grafana"])
    assert grafana_env["GF_SECURITY_ADMIN_USER"] == env_values()["GRAFANA_ADMIN_USER"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == env_values()["GRAFANA_ADMIN_PASSWORD"]


# --- docker-compose.yml: the real Compose parser, where one is installed --------------------------


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or a standalone ``docker-compose``, else None."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def run_compose_config(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        missing_tool(
            "no Docker Compose binary (docker compose plugin or docker-compose): "
            "docker-compose.yml was not checked by Compose itself "
            "(install Debian's docker-compose to run this check)"
        )
    # Only .env may feed interpolation: drop same-named variables from this process.
    env = {k: v for k, v in os.environ.items() if k not in env_values()}
    return subprocess.run(
        [*command, "-f", "docker-compose.yml", "config", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_accepts_the_file() -> None:
    result = run_compose_config(REPO_ROOT, "-q")
    assert result.returncode == 0, result.stderr
    listed = run_compose_config(REPO_ROOT, "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(MANDATORY_SERVICES) <= set(listed.stdout.split())


def test_docker_compose_rejects_a_broken_copy(tmp_path: Path) -> None:
    """Proves the check above can fail: a dependency on a missing service is refused."""
    shutil.copy(ENV_FILE, tmp_path / ".env")
    text = COMPOSE_FILE.read_text(encoding="utf-8").replace(
        '      minio:\n        condition: service_healthy\n    restart: "no"',
        '      minio-typo:\n        condition: service_healthy\n    restart: "no"',
        1,
    )
    assert "minio-typo" in text
    (tmp_path / "docker-compose.yml").write_text(text, encoding="utf-8")
    result = run_compose_config(tmp_path, "-q")
    assert result.returncode != 0
    assert "minio-typo" in result.stderr


# --- Dockerfiles ----------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def base_images(instructions: list[tuple[str, str]]) -> list[str]:
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    images = []
    for kw, rest in instructions:
        if kw == "FROM":
            image = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


@pytest.mark.parametrize(
    ("dockerfile", "group"),
    [("Dockerfile.api", "serve"), ("trainer.Dockerfile", "train"), ("Dockerfile.app", "webapp")],
)
def test_project_images_install_only_their_group(dockerfile: str, group: str) -> None:
    instructions = dockerfile_instructions(DOCKER_DIR / dockerfile)
    assert set(base_images(instructions)) == {"python:3.12-slim"}
    runs = [rest for kw, rest in instructions if kw == "RUN"]
    assert any(re.search(r"pip install .*\buv\b", r) for r in runs), "uv comes from PyPI"
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs, f"{dockerfile} never runs uv sync"
    for sync in syncs:
        assert "--frozen" in sync and "--no-default-groups" in sync, sync
        assert re.findall(r"--group\s+(\S+)", sync) == [group], sync
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}, "runs as a non-root user"
    healthchecks = [rest for kw, rest in instructions if kw == "HEALTHCHECK"]
    assert healthchecks and "NONE" not in healthchecks[-1].upper().split()
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "UV_PYTHON=/usr/local/bin/python3" in env, "use the image's Python, not .python-version"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "trainer.Dockerfile", "Dockerfile.app"])
def test_every_image_command_is_a_registered_cli_command(dockerfile: str) -> None:
    """An image whose CMD names a command the CLI lacks can never start (it happened)."""
    import json

    from typer.main import get_command

    from skin_mlops.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    cmds = [rest for kw, rest in dockerfile_instructions(DOCKER_DIR / dockerfile) if kw == "CMD"]
    if not cmds:
        pytest.skip(f"{dockerfile} has no CMD (compose gives the command)")
    argv = json.loads(cmds[-1])
    if argv[0] == "skin-mlops" and not argv[1].startswith("-"):
        assert argv[1] in commands, f"{dockerfile}: `skin-mlops {argv[1]}` does not exist"
    for name, service in services().items():
        command = service.get("command")
        words = command.split() if isinstance(command, str) else list(command or [])
        if words[:1] == ["skin-mlops"] and not words[1].startswith("-"):
            assert words[1] in commands, f"compose {name}: `skin-mlops {words[1]}` does not exist"


def test_webapp_image_serves_the_page_and_its_exporter() -> None:
    instructions = dockerfile_instructions(DOCKER_DIR / "Dockerfile.app")
    exposed = {p for kw, rest in instructions if kw == "EXPOSE" for p in rest.split()}
    assert {"8501", "9100"} <= exposed
    healthcheck = [rest for kw, rest in instructions if kw == "HEALTHCHECK"][-1]
    assert "/_stcore/health" in healthcheck
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "WEBAPP_METRICS_HOST=0.0.0.0" in env, "Prometheus must reach the exporter"
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "onnxruntime" in runs and "find_spec" in runs, "the build guards against ORT/TF"


def test_api_dockerfile_installs_serve_not_train() -> None:
    text = (DOCKER_DIR / "Dockerfile.api").read_text(encoding="utf-8")
    assert "--group serve" in text
    assert "--group train" not in text
    assert "find_spec" in text and "tensorflow" in text, "the build guards against TensorFlow"


def resolved_group(group: str) -> set[str]:
    """Package names the locked ``group`` installs (uv export, offline, no interpreter)."""
    uv = shutil.which("uv")
    if uv is None:
        missing_tool("uv not on PATH (pip install uv)")
    result = subprocess.run(
        [
            uv,
            "export",
            "--frozen",
            "--no-default-groups",
            "--group",
            group,
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
            "--no-annotate",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names = set()
    for line in result.stdout.splitlines():
        if line and not line.startswith(("#", " ", "-")):
            names.add(re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower())
    return names


def test_serve_group_resolves_without_tensorflow() -> None:
    """The API image's locked dependency closure has no TensorFlow/Keras (transitively)."""
    serve = resolved_group("serve")
    assert {"fastapi", "onnxruntime", "prometheus-client"} <= serve
    forbidden = {n for n in serve if n.startswith(("tensorflow", "keras", "tf-keras", "torch"))}
    assert not forbidden, f"the serve group pulls {sorted(forbidden)}"
    assert "tensorflow-cpu" in resolved_group("train")  # the check can see TensorFlow


def test_webapp_group_stays_light() -> None:
    webapp = resolved_group("webapp")
    assert "streamlit" in webapp
    assert not {n for n in webapp if n.startswith(("tensorflow", "keras", "onnxruntime"))}


def test_mlflow_server_image_matches_the_locked_client() -> None:
    instructions = dockerfile_instructions(DOCKER_DIR / "mlflow.Dockerfile")
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text(encoding="utf-8"))
    locked = {p["name"]: p["version"] for p in lock["package"]}
    assert args["MLFLOW_VERSION"] == locked["mlflow"], "server and client MLflow must agree"
    run = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "psycopg2" in run and "boto3" in run, "Postgres backend + S3 artifacts"
    assert [rest for kw, rest in instructions if kw == "USER"][-1] != "root"


def test_dockerignore_keeps_data_secrets_and_venv_out_of_images() -> None:
    patterns = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "data", "runs", ".cache", ".python-version"} <= patterns
    for needed in ("src", "configs", "pyproject.toml", "uv.lock", "README.md"):
        assert needed not in patterns, f"{needed} is needed by the image builds"


# --- CI -------------------------------------------------------------------------------------------


WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


def test_ci_workflow_runs_the_ci_script() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as True
    assert triggers["push"]["branches"] == ["main"]
    assert triggers["pull_request"]["branches"] == ["main"]
    assert "workflow_dispatch" in triggers
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert set(jobs) == {"lint-and-test", "docker-build"}
    assert all(job["runs-on"] == "ubuntu-latest" for job in jobs.values())
    steps = jobs["lint-and-test"]["steps"]
    python = [s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python")]
    assert python and str(python[0]["with"]["python-version"]) == "3.12"
    assert any(str(s.get("uses", "")).startswith("actions/cache") for s in steps), "uv cache"
    commands = "\n".join(str(s.get("run", "")) for s in steps)
    for command in ("pip install uv", "ruff check .", "ruff format --check .", "bash .ci/run"):
        assert command in commands, command
    assert "uv run pytest" in (REPO_ROOT / ".ci" / "run").read_text(), "the README's command"


def test_docker_build_job_builds_both_images_and_pushes_only_from_main() -> None:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["docker-build"]
    assert job["needs"] == "lint-and-test"
    runs = {s.get("name", ""): str(s.get("run", "")) for s in job["steps"]}
    builds = "\n".join(runs.values())
    assert 'docker build -f docker/Dockerfile.api -t "skin-mlops-api:${GITHUB_SHA}" .' in builds
    assert 'docker build -f docker/Dockerfile.app -t "skin-mlops-webapp:${GITHUB_SHA}" .' in builds
    for dockerfile in ("Dockerfile.api", "Dockerfile.app"):
        assert (DOCKER_DIR / dockerfile).is_file()
    (push,) = [s for s in job["steps"] if "docker push" in str(s.get("run", ""))]
    assert "github.ref == 'refs/heads/main'" in push["if"]
    assert (
        "env.DOCKERHUB_USERNAME != ''" in push["if"] and "env.DOCKERHUB_TOKEN != ''" in push["if"]
    )
    assert "--password-stdin" in push["run"], "the token never appears on a command line"
    assert job["env"]["DOCKERHUB_TOKEN"] == "${{ secrets.DOCKERHUB_TOKEN }}"


def venv_tool(name: str) -> str:
    return require_tool(name, "uv sync (dev group)", str(Path(sys.executable).with_name(name)))


def test_the_workflow_matches_githubs_schema() -> None:
    result = subprocess.run(
        [
            venv_tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_in_the_workflow() -> None:
    """Pinned actions, read-only token, no persisted credentials, no template injection."""
    result = subprocess.run(
        [venv_tool("zizmor"), "--offline", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_catches_an_unpinned_action(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(
        re.sub(r"actions/checkout@[0-9a-f]{40}", "actions/checkout@v4", WORKFLOW.read_text())
    )
    result = subprocess.run(
        [venv_tool("zizmor"), "--offline", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "unpinned" in result.stdout + result.stderr


# --- the API image's install, for real (slow: builds a venv like the Dockerfile does) ----------


def healthcheck_command(dockerfile: Path) -> str:
    """The Python one-liner of a Dockerfile's ``HEALTHCHECK ... CMD python -c "<code>"``."""
    (check,) = [rest for kw, rest in dockerfile_instructions(dockerfile) if kw == "HEALTHCHECK"]
    match = re.search(r'CMD python -c "(.+)"$', check)
    assert match, f"unexpected HEALTHCHECK form: {check}"
    return match.group(1)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_api_group_install_serves_health_without_tensorflow(tmp_path: Path) -> None:
    """``uv sync --group serve`` (as in docker/Dockerfile.api) gives an environment where
    the image's CMD (`skin-mlops serve`) starts and the image's HEALTHCHECK passes, with no
    TensorFlow/Keras installed or imported."""
    uv = shutil.which("uv")
    if uv is None:
        missing_tool("uv not on PATH (pip install uv)")
    venv = tmp_path / "venv"
    env = {
        **{k: v for k, v in os.environ.items() if k.upper() not in env_values()},
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "VIRTUAL_ENV": str(venv),
    }
    sync = subprocess.run(
        [uv, "sync", "--frozen", "--no-default-groups", "--group", "serve", "--no-editable"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sync.returncode == 0, sync.stderr
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, sys, skin_mlops.cli, skin_mlops.api.main; "
            "print([m for m in ('tensorflow', 'keras', 'streamlit') if u.find_spec(m)], "
            "sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[] []"

    # Start it the way the image does (CMD skin-mlops serve, API_HOST/API_PORT from ENV),
    # in an empty working directory (the image has no .env), and run the image's HEALTHCHECK.
    workdir = tmp_path / "app"
    workdir.mkdir()
    port = unused_port()
    run_env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
    }
    health = healthcheck_command(DOCKER_DIR / "Dockerfile.api")
    before = subprocess.run(
        [str(python), "-c", health], env=run_env, capture_output=True, timeout=30
    )
    assert before.returncode != 0, "the healthcheck must fail while nothing listens"
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [str(venv / "bin" / "skin-mlops"), "serve"],
        cwd=workdir,
        env=run_env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            check = subprocess.run(
                [str(python), "-c", health], env=run_env, capture_output=True, timeout=30
            )
            if check.returncode == 0:
                break
            assert server.poll() is None, f"skin-mlops serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "healthcheck never passed within 60 s"
            time.sleep(0.5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
