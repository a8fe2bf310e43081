"""Every dashboard query and every alert rule against a real Prometheus that scraped the apps.

One real ``prometheus`` (Debian's binary) scrapes, every second, with the repo's
``prometheus.yml`` job names, paths and labels and the repo's rules file loaded:

* ``skin-api``: the real API app serving the tiny model (session fixture ``live_api``),
  sent predictions of every label, a refused upload (415), a corrupt one (422) and a
  ``/predict/batch``;
* ``skin-webapp``: the page's own exporter, started as ``skin-mlops webapp`` starts it
  (``process_metrics`` before the page), while Streamlit's ``AppTest`` runs the real page
  file against the API: visits, uploads, a "Classify again" click, a two-photo batch;
* ``airflow``: the plugin's ``/admin/metrics`` app, mounted at ``/admin`` as the Airflow
  api-server mounts it, in a child process with its own ``AIRFLOW_HOME`` (a migrated
  SQLite DB) with real ``dag.test()`` runs of the repo's ``ingestion`` DAG: one succeeds
  before Prometheus starts, one fails on a corrupt photo while Prometheus watches; a
  scheduler job is registered the way the scheduler registers itself
  (``Job.prepare_for_execution``).

Airflow runs in a child process rather than in this one because it reads ``AIRFLOW_HOME``
once, at import: ``tests/orchestration/conftest.py`` sets that at collection time for its
own session DB, and this module must neither depend on nor disturb it.

Traffic is sent in two rounds, each waited for in Prometheus (polling, no fixed sleeps),
so every counter, including those created by the first request, has increased between two
scrapes and every ``rate()`` is non-zero.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from ingest_fixtures import free_port, write_dataset_config, write_image
from utils.grafana import REPO_ROOT, Query, dashboard_queries
from utils.images import encode, two_tone
from utils.model_factory import LABELS
from utils.prometheus import (
    PrometheusServer,
    PromQLError,
    finite_values,
    grouping_labels,
    local_scrape_config,
    metric_names,
    missing_metric_names,
    parse_metrics,
    rule_expressions,
    start_prometheus,
    stop_prometheus,
    unmatched_label_matchers,
    wait_until,
)
from utils.servers import ADMIN_TOKEN, stop_command, wait_http
from utils.tools import require_tool

pytestmark = [pytest.mark.service, pytest.mark.timeout(240)]

PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml"
RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules" / "skin-mlops.yml"
DAGS = REPO_ROOT / "airflow" / "dags"
AIRFLOW_LABELS = ("acne", "eczema")

# Run in a child process (cwd: a dataset root; argv: port, trigger file). Airflow's own code
# does the work: upgradedb() is `airflow db migrate`, dag.test() runs the repo's DAG, Job
# is the row a scheduler writes when it starts.
AIRFLOW_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    from pathlib import Path

    import uvicorn
    from airflow.dag_processing.dagbag import DagBag
    from airflow.jobs.job import Job
    from airflow.utils import db
    from airflow.utils.session import create_session
    from fastapi import FastAPI

    from skin_mlops.orchestration.plugin import SkinMlopsPlugin

    port, trigger = int(sys.argv[1]), Path(sys.argv[2])
    db.upgradedb()  # what `airflow db migrate` runs
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    ingestion = bag.dags["ingestion"]
    run = ingestion.test()
    assert str(run.state) == "success", run.state

    scheduler = Job()
    scheduler.job_type = "SchedulerJob"
    with create_session() as session:
        scheduler.prepare_for_execution(session=session)

    (entry,) = SkinMlopsPlugin.fastapi_apps
    app = FastAPI()
    app.mount(entry["url_prefix"], entry["app"])
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=web.run, daemon=True).start()

    # The second run fails (the test adds a corrupt photo) while Prometheus is scraping.
    while not trigger.exists():
        time.sleep(0.05)
    run = ingestion.test()
    assert str(run.state) == "failed", run.state
    print("ingestion failed as planned; serving until SIGTERM", flush=True)
    threading.Event().wait()
    """
)


@dataclass
class Airflow:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    root: Path

    def fail_next_ingestion(self) -> None:
        """Add a corrupt photo, then let the child run the ingestion DAG again."""
        (self.root / "data/raw/train/acne/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
        (self.root / "trigger").write_text("go", encoding="utf-8")


def start_airflow_metrics(root: Path) -> Airflow:
    """Start the child process above on a free port (returns at once; it needs ~15 s)."""
    for split in ("train", "val"):
        for index, label in enumerate(AIRFLOW_LABELS):
            for n in range(2):
                write_image(root / "data/raw" / split / label / f"{n}.jpg", seed=100 * index + n)
    config = write_dataset_config(root / "configs" / "dataset_config.yaml", AIRFLOW_LABELS)
    (root / "run.py").write_text(AIRFLOW_SCRIPT, encoding="utf-8")
    port = free_port()
    drop = ("STORAGE_BACKEND", "LOCAL_OBJECT_ROOT", "DATASET_CONFIG", "S3_ENDPOINT_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k not in drop}
    env.update(
        {
            "AIRFLOW_HOME": str(root / "airflow-home"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES": "airflow.* skin_mlops.*",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "STORAGE_BACKEND": "local",
            "LOCAL_OBJECT_ROOT": str(root / "data" / "objects"),
            "DATASET_CONFIG": str(config),
        }
    )
    log_path = root / "airflow.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "run.py", str(port), str(root / "trigger")],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Airflow(f"http://127.0.0.1:{port}", process, log_path, root)


# --- traffic ------------------------------------------------------------------------------


def api_traffic(api: str, reload: bool = False) -> None:
    """Predictions of every label, a 415, a 422, a batch of three (and a model reload)."""
    with httpx.Client(base_url=api, timeout=30) as client:
        if reload:  # the same export again: a real swap, counted, still version v1
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            response = client.post("/admin/reload", headers=headers)
            assert response.status_code == 200, response.text
        for label in LABELS:
            photo = encode(two_tone(label))
            response = client.post("/predict", files={"file": (f"{label}.png", photo)})
            assert response.status_code == 200, response.text
        notes = client.post("/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
        assert notes.status_code == 415, notes.text
        whole = encode(two_tone("red"))
        corrupt = client.post(
            "/predict", files={"file": ("cut.png", whole[: len(whole) // 2], "image/png")}
        )
        assert corrupt.status_code == 422, corrupt.text
        batch = [("files", (f"{c}.png", encode(two_tone(c)), "image/png")) for c in LABELS[:3]]
        response = client.post("/predict/batch", files=batch)
        assert response.status_code == 200, response.text
        assert client.get("/model").status_code == 200


class Page:
    """The real page file in Streamlit's AppTest (one per browser session)."""

    def __init__(self) -> None:
        from streamlit.testing.v1 import AppTest

        from skin_mlops.webapp.cli import APP_FILE

        self.at = AppTest.from_file(str(APP_FILE), default_timeout=30)
        self._run()

    def _run(self) -> None:
        self.at.run()
        assert not self.at.exception, self.at.exception

    def upload(self, *labels: str) -> None:
        files = [(f"{label}.png", encode(two_tone(label)), "image/png") for label in labels]
        self.at.file_uploader(key="uploads").set_value(files)
        self._run()
        assert not self.at.error, [e.value for e in self.at.error]

    def classify_again(self) -> None:
        self.at.button(key="classify").click()
        self._run()


def scraped_value(prometheus: PrometheusServer, expr: str) -> float:
    value = prometheus.value(expr)
    return -1.0 if value is None else value


def app_value(url: str, series: str) -> float:
    """One series' value on an app's own /metrics, summed over matching series."""
    values = parse_metrics(httpx.get(url, timeout=5).text)
    return sum(v for k, v in values.items() if k == series or k.startswith(series + "{"))


def wait_scraped(prometheus: PrometheusServer, checks: dict[str, float]) -> None:
    """Wait until Prometheus holds, for each ``sum(name)``, at least the app's value."""
    for name, at_least in checks.items():
        expr = f"sum({name})"
        wait_until(
            lambda e=expr, v=at_least: scraped_value(prometheus, e) >= v,
            f"{expr} >= {at_least:g} in Prometheus",
            timeout_s=20,
        )


# --- the stack ----------------------------------------------------------------------------


@dataclass
class Stack:
    prometheus: PrometheusServer
    api: str


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Prometheus after two rounds of traffic to the three apps (~40 s, mostly Airflow)."""
    from skin_mlops.core.config import get_settings
    from skin_mlops.webapp.metrics import process_metrics

    binary = require_tool("prometheus", "apt-get install prometheus")
    root = tmp_path_factory.mktemp("promql-live")
    # Airflow first: its child process is the longest step and overlaps the model build.
    airflow = start_airflow_metrics(root / "airflow")
    prometheus: PrometheusServer | None = None
    exporter = None
    try:
        api: str = request.getfixturevalue("live_api")
        with pytest.MonkeyPatch.context() as env:
            webapp_port = free_port()
            for key, value in {
                "API_BASE_URL": api,
                "WEBAPP_METRICS_PORT": str(webapp_port),
                "WEBAPP_API_TIMEOUT_S": "10",
                "UNCERTAINTY_THRESHOLD": "0.5",
            }.items():
                env.setenv(key, value)
            get_settings.cache_clear()
            exporter = process_metrics(webapp_port)  # before the page, as the command does
            assert exporter.port == webapp_port, exporter.problem
            webapp_metrics = f"http://127.0.0.1:{webapp_port}/metrics"

            # Prometheus applies new targets on a 5 s tick: start it before Airflow is up.
            port = free_port()
            config = local_scrape_config(
                yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8")),
                {
                    "skin-api": api.removeprefix("http://"),
                    "skin-webapp": f"127.0.0.1:{webapp_port}",
                    "airflow": airflow.url.removeprefix("http://"),
                    "prometheus": f"127.0.0.1:{port}",
                },
                [RULES],
            )
            prometheus = start_prometheus(binary, config, port, root / "prometheus")
            server = prometheus
            wait_http(f"{airflow.url}/admin/metrics", airflow.process, airflow.log_path, 120)

            def all_up() -> bool:
                targets = server.active_targets()
                return len(targets) == len(config["scrape_configs"]) and all(
                    t["health"] == "up" for t in targets
                )

            wait_until(all_up, "every target scraped and up", timeout_s=30)
            # Prometheus has seen the successful run; now one fails while it watches.
            airflow.fail_next_ingestion()

            first = Page()
            for round_no in (1, 2):
                api_traffic(api, reload=round_no == 2)
                if round_no == 1:
                    first.upload("red")
                else:
                    first.classify_again()
                    Page().upload("green", "blue")  # a second visitor, two photos: a batch
                wait_scraped(
                    prometheus,
                    {
                        "api_requests_total": app_value(f"{api}/metrics", "api_requests_total"),
                        "webapp_uploads_total": app_value(webapp_metrics, "webapp_uploads_total"),
                        "webapp_prediction_latency_seconds_count": app_value(
                            webapp_metrics, "webapp_prediction_latency_seconds_count"
                        ),
                    },
                )
            failed_runs = 'airflow_dag_runs{dag_id="ingestion", state="failed"}'
            wait_until(
                lambda: scraped_value(server, f"count_over_time({failed_runs}[1h])") >= 2,
                "the failed ingestion run in two scrapes",
                timeout_s=30,
            )
            yield Stack(prometheus, api)
    finally:
        if prometheus is not None:
            stop_prometheus(prometheus)
        if exporter is not None:
            exporter.stop()
        stop_command(airflow.process, timeout_s=1)  # Airflow's exit hooks take ~3 s: not needed
        get_settings.cache_clear()


# --- dashboards ---------------------------------------------------------------------------

QUERIES = dashboard_queries()


def counts_traffic(promql: str) -> bool:
    """A plain sum of rate()/increase() (no ratio, no fallback): positive after traffic."""
    return (
        promql.startswith("sum")
        and re.search(r"\b(rate|increase)\(", promql) is not None
        and "/" not in promql
        and " or " not in promql
    )


@pytest.mark.parametrize("query", QUERIES, ids=[q.id for q in QUERIES])
def test_every_dashboard_expression_returns_data(stack: Stack, query: Query) -> None:
    result = stack.prometheus.query(query.promql)  # a syntax error raises (400 bad_data)
    assert result, f"{query.id}: empty result for {query.promql}"
    values = finite_values(result)
    assert values, f"{query.id}: only NaN/Inf for {query.promql}: {result}"
    if counts_traffic(query.promql):
        assert max(values) > 0, f"{query.id}: no traffic seen by {query.promql}: {result}"
    names = metric_names(query.promql)
    labels = grouping_labels(query.promql) - {"le"}
    if labels:
        missing = labels - stack.prometheus.series_labels(names)
        assert not missing, f"{query.id}: no series of {names} has label(s) {missing}"


def test_the_traffic_reached_prometheus_with_its_labels(stack: Stack) -> None:
    statuses = {
        s["metric"]["status"]
        for s in stack.prometheus.query('sum by (status) (api_requests_total{endpoint="/predict"})')
    }
    assert {"200", "415", "422"} <= statuses, statuses
    # prometheus_client writes float bounds: le="1.0", never le="1"
    batches = stack.prometheus.value(
        'sum(api_batch_size_bucket{le="1.0"}) < sum(api_batch_size_count)'
    )
    assert batches is not None, "a model call held more than one image (/predict/batch)"
    assert stack.prometheus.value('sum(airflow_dag_runs{dag_id="ingestion"})') == 2


# --- alert rules --------------------------------------------------------------------------


def test_every_alert_rule_is_loaded_evaluated_and_healthy(stack: Stack) -> None:
    expected = rule_expressions(RULES)

    def evaluated() -> bool:
        rules = stack.prometheus.rules()
        return len(rules) == len(expected) and all(r["health"] != "unknown" for r in rules)

    wait_until(evaluated, "every rule evaluated once", timeout_s=15)
    rules = {rule["name"]: rule for rule in stack.prometheus.rules()}
    assert set(rules) == set(expected)
    unhealthy = {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    for expr in expected.values():
        stack.prometheus.query(expr)  # parses and runs (a quiet rule's result is empty)
    for name in ("SkinApiDown", "SkinWebappDown"):
        assert rules[name]["state"] == "inactive", "the targets are up"
    # The DB has no successful train_model_pipeline run while Airflow answers: the rule
    # sees real data and goes pending (it would fire after its `for:` of 1 h).
    assert rules["SkinTrainingStale"]["state"] in ("pending", "firing")


def test_a_failed_ingestion_run_is_seen_by_the_ingestion_alert(stack: Stack) -> None:
    """The ingestion DAG failed while Prometheus watched: SkinIngestionFailing's condition.

    The exporter creates ``airflow_dag_runs{dag_id, state}`` at 0 for every DAG it knows,
    so a DAG's first failure is a step 0 -> 1 that ``delta()`` sees (without that, the
    first failure was a new series already at 1, and the alert missed it).
    """
    failed = 'airflow_dag_runs{dag_id="ingestion", state="failed"}'
    assert stack.prometheus.value(f"sum({failed})") == 1
    assert stack.prometheus.value('sum(airflow_dag_runs{dag_id="ingestion"})') == 2
    samples = stack.prometheus.value(f"count_over_time({failed}[1h])")
    assert samples is not None and samples >= 2, "the failed-run series, scraped twice"
    expr = rule_expressions(RULES)["SkinIngestionFailing"]
    assert stack.prometheus.value(f"min_over_time({failed}[1h])") == 0
    assert (stack.prometheus.value(expr) or 0) > 0


# --- metric names -------------------------------------------------------------------------


def used_metric_names() -> dict[str, set[str]]:
    used = {query.id: metric_names(query.promql) for query in QUERIES}
    used.update({f"rule {name}": metric_names(e) for name, e in rule_expressions(RULES).items()})
    return used


def test_every_metric_name_in_dashboards_and_rules_exists(stack: Stack) -> None:
    known = stack.prometheus.metric_names()
    used = used_metric_names()
    assert all(used.values()), [where for where, names in used.items() if not names]
    missing = {w: missing_metric_names(n, known) for w, n in used.items()}
    assert not any(missing.values()), {w: m for w, m in missing.items() if m}


def test_a_wrong_metric_name_is_caught(stack: Stack) -> None:
    """A misspelt name parses and answers success with nothing: only the name check sees it."""
    expr = 'sum(rate(api_request_total{endpoint="/predict"}[1m]))'  # missing "s"
    assert stack.prometheus.query(expr) == []
    known = stack.prometheus.metric_names()
    assert missing_metric_names(metric_names(expr), known) == {"api_request_total"}
    assert missing_metric_names(metric_names("sum(rate(api_requests_total[1m]))"), known) == set()


def repo_dag_ids() -> set[str]:
    return {
        dag_id
        for path in DAGS.glob("*.py")
        for dag_id in re.findall(r'dag_id="([\w.-]+)"', path.read_text(encoding="utf-8"))
    }


def test_every_label_matcher_selects_an_existing_label_value(stack: Stack) -> None:
    """``job="skin-api"``, ``le="0.5"``, ``endpoint="/predict"``... exist as written.

    A DAG id that has no run in this stack (``train_model_pipeline``: training is too slow
    here) counts as existing when it is a DAG id of the repo's DAG folder.
    """
    dag_ids = repo_dag_ids()
    assert {"ingestion", "train_model_pipeline"} <= dag_ids
    expressions = {query.id: query.promql for query in QUERIES}
    expressions.update({f"rule {n}": e for n, e in rule_expressions(RULES).items()})
    problems = {
        where: found
        for where, expr in expressions.items()
        if (found := unmatched_label_matchers(stack.prometheus, expr, {"dag_id": dag_ids}))
    }
    assert not problems, problems


def test_a_label_value_that_exists_nowhere_is_caught(stack: Stack) -> None:
    expr = 'sum(api_batch_size_bucket{le="1"}) and up{job="skin_api"}'
    assert stack.prometheus.query(expr) == []
    problems = unmatched_label_matchers(stack.prometheus, expr)
    assert len(problems) == 2 and "1.0" in problems[0] and "skin-api" in problems[1], problems
    assert unmatched_label_matchers(stack.prometheus, 'api_batch_size_bucket{le="1.0"}') == []


def test_a_syntax_error_is_a_400_bad_data(stack: Stack) -> None:
    with pytest.raises(PromQLError) as caught:
        stack.prometheus.query("sum(rate(api_requests_total[1m])")
    assert caught.value.status_code == 400 and caught.value.error_type == "bad_data"
