"""The provisioned Grafana dashboards as data: panels, queries, Grafana's variables.

Grafana fills ``$__rate_interval`` and friends in before a query reaches Prometheus;
:func:`substitute_variables` does the same with fixed sample values (as grafana's
dashboard-linter does), so every expression can be parsed and run by a real Prometheus.
An unknown variable is an error rather than a silent pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO_ROOT / "monitoring" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"

#: Sample values of Grafana's built-in variables (a 1 h range, 15 s steps).
SAMPLE_VALUES = {
    "__rate_interval": "1m",
    "__rate_interval_ms": "60000",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# $name, ${name} / ${name:format}, and the deprecated [[name]]
_VARIABLE = re.compile(
    r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]"
)


def substitute_variables(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by :data:`SAMPLE_VALUES` (others: error)."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in SAMPLE_VALUES:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return SAMPLE_VALUES[name]

    return _VARIABLE.sub(replace, expr)


def load_dashboards() -> dict[str, dict[str, Any]]:
    """``{file name: dashboard JSON}`` of every ``*.json`` in :data:`DASHBOARDS_DIR`."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def provisioned_datasource() -> dict[str, Any]:
    """The one datasource of :data:`DATASOURCES_FILE`."""
    (datasource,) = yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))["datasources"]
    return dict(datasource)


@dataclass(frozen=True)
class Query:
    """One target of one panel."""

    dashboard: str
    panel_id: int
    panel: str
    ref_id: str
    expr: str

    @property
    def promql(self) -> str:
        """The expression as Prometheus receives it (variables substituted)."""
        return substitute_variables(self.expr)

    @property
    def id(self) -> str:
        """A readable, unique test id: ``dashboard uid/panel id title/refId``."""
        return f"{self.dashboard}/{self.panel_id} {self.panel}/{self.ref_id}"


def dashboard_queries(dashboards: dict[str, dict[str, Any]] | None = None) -> list[Query]:
    """Every target with an ``expr`` of every dashboard."""
    queries = []
    for dashboard in (dashboards or load_dashboards()).values():
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(
                    Query(
                        dashboard.get("uid", "?"),
                        panel.get("id", -1),
                        panel.get("title", "?"),
                        target.get("refId", "?"),
                        target.get("expr", ""),
                    )
                )
    return queries
