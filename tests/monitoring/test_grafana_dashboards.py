"""Grafana provisioning as code: the datasource, the dashboard provider, the dashboards.

Static checks (no Grafana binary exists here): the datasource's fixed uid and its
``timeInterval`` (= Prometheus' scrape interval), the provider's path, and for every
dashboard the structure Grafana relies on (unique uids and panel ids, collapsed rows
walked, every target with ``refId`` and ``expr`` on the provisioned datasource), Grafana's
variables, and every expression parsed by the real PromQL parser (``promtool``). That each
expression returns data is checked against a real Prometheus in ``test_promql_live.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from skin_mlops.api.metrics import ApiMetrics
from skin_mlops.webapp.metrics import create_metrics
from utils.grafana import (
    DASHBOARDS_DIR,
    DATASOURCES_FILE,
    PROVIDERS_FILE,
    REPO_ROOT,
    dashboard_queries,
    iter_panels,
    load_dashboards,
    provisioned_datasource,
    substitute_variables,
)
from utils.prometheus import (
    SYNTHETIC_METRICS,
    grouping_labels,
    metric_names,
    parse_errors,
    rule_expressions,
)
from utils.tools import require_tool

PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml"
RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules" / "skin-mlops.yml"
METRICS_APP = REPO_ROOT / "src" / "skin_mlops" / "orchestration" / "metrics_app.py"
DASHBOARDS = load_dashboards()
EXPECTED_DASHBOARDS = {"Airflow Overview", "Prediction API", "Webapp"}


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


def panels_with_targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in iter_panels(dashboard) if panel.get("type") != "row"]


# --- provisioning ----------------------------------------------------------------------


def test_the_datasource_has_a_fixed_uid_and_the_scrape_interval() -> None:
    datasource = provisioned_datasource()
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "skin-prometheus"
    assert datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
    assert yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))["apiVersion"] == 1


def test_the_datasource_url_is_the_compose_prometheus_service() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert "prometheus" in compose["services"]


def test_the_provider_reads_the_folder_compose_mounts() -> None:
    text = PROVIDERS_FILE.read_text(encoding="utf-8")
    (provider,) = yaml.safe_load(text)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    for mount in (
        "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro",
        "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro",
    ):
        assert mount in header, f"the header must say how to mount: {mount}"
        host = REPO_ROOT / mount.split(":")[0]
        assert host.is_dir(), host
    assert {path.name for path in DASHBOARDS_DIR.glob("*.json")} == set(DASHBOARDS)


# --- dashboards ------------------------------------------------------------------------


def test_the_three_dashboards_exist_with_unique_uids_and_titles() -> None:
    titles = [dashboard.get("title") for dashboard in DASHBOARDS.values()]
    uids = [dashboard.get("uid") for dashboard in DASHBOARDS.values()]
    assert set(titles) == EXPECTED_DASHBOARDS and len(titles) == len(set(titles))
    assert all(uids) and len(uids) == len(set(uids)), uids
    for uid in uids:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), f"uid {uid!r}: short, stable, url-safe"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard.get("title"), "title set"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None, "no instance-specific id in provisioned JSON"
    panels = list(iter_panels(dashboard))
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels_with_targets(dashboard):
        where = f"{name} panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel.get("datasource") == {"type": "prometheus", "uid": "skin-prometheus"}, where
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{where}: unit"
        targets = panel.get("targets", [])
        assert targets, f"{where}: no targets"
        ref_ids = [target.get("refId") for target in targets]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), f"{where}: {ref_ids}"
        for target in targets:
            assert target.get("expr", "").strip(), f"{where} {target.get('refId')}: expr"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where


def test_the_datasource_uid_is_the_provisioned_one_everywhere() -> None:
    uid = provisioned_datasource()["uid"]
    text = "".join(path.read_text(encoding="utf-8") for path in DASHBOARDS_DIR.glob("*.json"))
    assert "${DS_" not in text and "$datasource" not in text, "no exported-dashboard inputs"
    found = set(re.findall(r'"uid":\s*"([^"]+)"', text)) - {d["uid"] for d in DASHBOARDS.values()}
    assert found <= {uid, "-- Grafana --"}, found


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        return {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }

    # A collapsed row's panels are laid out when it opens; they may overlap what is below.
    top_level = DASHBOARDS[name]["panels"]
    taken: set[tuple[int, int]] = set()
    for panel in top_level:
        mine = cells(panel)
        assert not mine & taken, f"{name}: {panel['title']!r} overlaps another panel"
        taken |= mine
    for row in top_level:
        nested = row.get("panels", [])
        assert not nested or row.get("collapsed"), "only a collapsed row nests panels"
        inner: set[tuple[int, int]] = set()
        for panel in nested:
            mine = cells(panel)
            assert not mine & inner, f"{name}: {panel['title']!r} overlaps in its row"
            inner |= mine


def test_a_collapsed_row_is_walked() -> None:
    nested = [
        panel
        for dashboard in DASHBOARDS.values()
        for row in dashboard["panels"]
        for panel in row.get("panels", [])
    ]
    assert nested, "at least one collapsed row with panels (the walk is then exercised)"
    walked = {id(panel) for d in DASHBOARDS.values() for panel in iter_panels(d)}
    assert all(id(panel) in walked for panel in nested)
    assert {q.panel for q in dashboard_queries()} >= {panel["title"] for panel in nested}


# --- expressions -----------------------------------------------------------------------


def test_grafana_variables_are_substituted_and_unknown_ones_refused() -> None:
    assert substitute_variables("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert substitute_variables("increase(x[${__range}]) / $__interval_ms") == (
        "increase(x[1h]) / 15000"
    )
    assert substitute_variables("avg_over_time(x[$__interval])") == "avg_over_time(x[15s])"
    with pytest.raises(ValueError, match="datasource"):
        substitute_variables('up{instance="$datasource"}')
    for query in dashboard_queries():
        assert "$" not in query.promql, query.id


def test_every_rate_uses_rate_interval_and_windows_are_known() -> None:
    for query in dashboard_queries():
        for function, window in re.findall(
            r"\b(i?rate|increase|delta)\([^\[]*\[([^\]]+)\]", query.expr
        ):
            if function in ("rate", "irate"):
                assert window == "$__rate_interval", f"{query.id}: {function}(...[{window}])"
            else:  # increase/delta: per step, over the range, or the alert's fixed hour
                assert window in ("$__rate_interval", "$__range", "1h"), f"{query.id}: {window}"


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    queries = {query.id: query.promql for query in dashboard_queries()}
    assert len(queries) == len(dashboard_queries()), "query ids are unique"
    assert parse_errors(promtool(), queries, tmp_path) is None, parse_errors(
        promtool(), queries, tmp_path
    )


def test_a_broken_expression_is_caught_by_the_parse_check(tmp_path: Path) -> None:
    errors = parse_errors(promtool(), {"ok": "up", "broken": "sum(rate(x[1m])"}, tmp_path)
    assert errors is not None and "broken" in errors


def test_metric_names_are_extracted_from_the_alert_rules() -> None:
    names = {alert: metric_names(expr) for alert, expr in rule_expressions(RULES).items()}
    assert names["SkinApiDown"] == {"up"}
    assert names["SkinLabelShareDrift"] == {"api_predictions_total", "api_model_label_train_share"}
    assert names["SkinTrainingStale"] == {
        "airflow_dag_last_success_timestamp_seconds",
        "airflow_up",
    }
    assert names["SkinApiSlowPredictions"] == {
        "api_request_duration_seconds_bucket",
        "api_request_duration_seconds_count",
    }
    assert metric_names('{__name__="a_total", job="x"} offset 5m > bool 1e3') == {"a_total"}
    assert metric_names('sum without (le) (b) atan2 on() group_left c{l="rate(d)"}') == {"b", "c"}
    assert metric_names("time() - 8 * 86400 and vector(1)") == set()
    assert grouping_labels("sum by (le, status) (rate(x[1m])) / on(z) y") == {"le", "status"}


def defined_metric_names() -> set[str]:
    """Names the apps' code defines (samples as exposed), plus Prometheus' own."""
    names = set(SYNTHETIC_METRICS)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}
    for registry in (ApiMetrics().registry, create_metrics(None).registry):
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    names.update(re.findall(r'gauge\(\s*"(airflow_\w+)"', METRICS_APP.read_text("utf-8")))
    return names


def test_every_metric_used_is_defined_by_the_apps() -> None:
    defined = defined_metric_names()
    assert "airflow_queue_depth" in defined and "api_requests_total" in defined
    used = {q.id: metric_names(q.promql) for q in dashboard_queries()}
    used.update({f"rule {a}": metric_names(e) for a, e in rule_expressions(RULES).items()})
    unknown = {where: names - defined for where, names in used.items() if names - defined}
    assert not unknown, unknown
    assert all(used.values()), [where for where, names in used.items() if not names]
