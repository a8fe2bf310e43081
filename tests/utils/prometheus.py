"""Prometheus in tests: reading text exposition, PromQL metric names, a real server.

* :func:`parse_metrics` - ``{series: value}`` of a ``/metrics`` body.
* :func:`metric_names` / :func:`grouping_labels` - what a PromQL expression selects and
  groups by (a small lexer, not a parser: strings, label matchers, ranges and grouping
  clauses are removed first; what is left that is neither a function, an aggregation nor
  a keyword is a metric name). The real parser is Prometheus itself (:meth:`query`, or
  :func:`parse_errors` through ``promtool check rules``).
* :func:`rule_expressions` - every ``expr`` of a rules file.
* :func:`start_prometheus` - the real ``prometheus`` binary on a free loopback port with a
  temporary TSDB, and :class:`PrometheusServer` to query it.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml


def parse_metrics(text: str) -> dict[str, float]:
    """``{series with its labels: value}`` of a ``/metrics`` body (comments skipped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


# --- PromQL: metric names and grouping labels ---------------------------------------------

#: Words of PromQL that are not metric names when they stand alone (operators, modifiers,
#: aggregations, which may be followed by ``by (...)`` instead of their parenthesis).
PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "atan2",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
#: Series Prometheus writes itself for every target (no application defines them).
SYNTHETIC_METRICS = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*("(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\')')
_COMMENT = re.compile(r"#[^\n]*")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _without_strings(expr: str) -> str:
    return _COMMENT.sub(" ", _STRING.sub('""', expr))


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (``up{job="x"}``, ``{__name__="m"}``, ...)."""
    names = {match.group(1)[1:-1] for match in _NAME_MATCHER.finditer(expr)}
    text = _without_strings(expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _WORD.finditer(text):
        word = match.group(0)
        before = text[match.start() - 1] if match.start() else " "
        if before.isalnum() or before in "._":  # the tail of a number or duration: 1e9, 5m
            continue
        if text[match.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        if word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\')')


@dataclass(frozen=True)
class Selector:
    """One vector selector: ``metric{label op "value", ...}``."""

    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]

    def equalities(self) -> str:
        """The selector reduced to its metric name and its ``=`` matchers."""
        kept = [f'{label}="{value}"' for label, op, value in self.matchers if op == "="]
        name = self.metric or ""
        return f"{name}{{{', '.join(kept)}}}" if kept else name


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of an expression that have label matchers."""
    found = []
    for match in _SELECTOR.finditer(_COMMENT.sub(" ", expr)):
        matchers = tuple(
            (label, op, value[1:-1]) for label, op, value in _MATCHER.findall(match.group(2))
        )
        metric = match.group(1)
        if metric and metric.lower() in PROMQL_KEYWORDS:  # `and {__name__="x"}`
            metric = None
        found.append(Selector(metric, matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in the ``by (...)`` clauses of an expression."""
    labels: set[str] = set()
    for match in _GROUPING.finditer(_BRACES.sub(" ", _without_strings(expr))):
        if match.group(1) == "by":
            labels.update(part.strip() for part in match.group(2).split(",") if part.strip())
    return labels


def rule_expressions(path: Path) -> dict[str, str]:
    """``{alert or record name: expr}`` of a Prometheus rules file."""
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in groups
        for rule in group["rules"]
    }


def parse_errors(promtool: str, expressions: dict[str, str], workdir: Path) -> str | None:
    """Parse each expression with ``promtool check rules`` (as recording rules).

    Returns promtool's output when one does not parse, else ``None``. ``expressions`` maps
    a name (shown in the output's rule index order) to PromQL.
    """
    rules = [
        {"record": f"check:expression_{index}", "expr": expr}
        for index, expr in enumerate(expressions.values())
    ]
    path = workdir / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}), "utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if result.returncode == 0:
        return None
    names = "\n".join(f"  expression_{i}: {name}" for i, name in enumerate(expressions))
    return f"{result.stdout}{result.stderr}\nexpressions:\n{names}"


# --- a real Prometheus ------------------------------------------------------------------


class PromQLError(AssertionError):
    """Prometheus refused a query (``errorType`` ``bad_data`` for a syntax error)."""

    def __init__(self, expr: str, status_code: int, error_type: str, error: str) -> None:
        super().__init__(f"HTTP {status_code} {error_type}: {error}\n  expr: {expr}")
        self.status_code = status_code
        self.error_type = error_type


@dataclass
class PrometheusServer:
    """A ``prometheus`` child process and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _label_values: dict[tuple[str, str], set[str]] = field(default_factory=dict, repr=False)

    def _get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (a scalar or string becomes one sample)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PromQLError(
                expr, response.status_code, body.get("errorType", "?"), body.get("error", "?")
            )
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] == "matrix":
            return [
                {"metric": series["metric"], "value": series["values"][-1]}
                for series in data["result"]
                if series["values"]
            ]
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now, or ``None`` when its result is empty."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} has {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def metric_names(self) -> set[str]:
        """Every metric name the TSDB holds (``/api/v1/label/__name__/values``)."""
        return set(self._get("/api/v1/label/__name__/values"))

    def series_labels(self, names: Iterable[str]) -> set[str]:
        """Label names present on any series of the given metrics."""
        pattern = "|".join(re.escape(name) for name in sorted(names))
        series = self._get("/api/v1/series", **{"match[]": f'{{__name__=~"{pattern}"}}'})
        return {label for item in series for label in item}

    def label_values(self, label: str, metric: str) -> set[str]:
        """Values of ``label`` on the series of ``metric`` (cached: ask after the traffic)."""
        key = (label, metric)
        if key not in self._label_values:
            path = f"/api/v1/label/{label}/values"
            self._label_values[key] = set(self._get(path, **{"match[]": metric}))
        return self._label_values[key]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its ``health``, ``lastError`` and ``lastEvaluation``."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def active_targets(self) -> list[dict[str, Any]]:
        """The scrape targets with their ``health`` and ``lastError``."""
        return list(self._get("/api/v1/targets")["activeTargets"])


def missing_metric_names(names: Iterable[str], known: set[str]) -> set[str]:
    """The names of ``names`` that Prometheus has no series of (``known``: its names)."""
    return {name for name in names if name not in known}


def unmatched_label_matchers(
    server: PrometheusServer, expr: str, extra_values: dict[str, set[str]] | None = None
) -> list[str]:
    """Label matchers of ``expr`` that select nothing on their metric.

    An ``=`` matcher needs its value among the metric's values of that label (or in
    ``extra_values[label]``, values known to be valid without a series yet); any other
    matcher (``=~``, ``!=``, ``!~``) needs the label to exist on the metric. Catches
    ``le="1"`` where the exporter writes ``le="1.0"``, or a misspelt job.
    """
    problems = []
    for selector in selectors(expr):
        for label, op, value in selector.matchers:
            if selector.metric is None or label == "__name__":
                continue
            values = server.label_values(label, selector.metric)
            if op == "=" and value not in values | (extra_values or {}).get(label, set()):
                problems.append(f'{selector.metric}{{{label}="{value}"}}: values {sorted(values)}')
            elif op != "=" and not values:
                problems.append(f"{selector.metric} has no label {label!r}")
    return problems


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """The values of an instant-query result that are numbers (not NaN or +-Inf)."""
    values = (float(sample["value"][1]) for sample in result)
    return [value for value in values if math.isfinite(value)]


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = 30, interval_s: float = 0.2
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def local_scrape_config(
    config: dict[str, Any],
    targets: dict[str, str],
    rule_files: Iterable[Path],
    interval: str = "1s",
) -> dict[str, Any]:
    """A copy of a Prometheus config whose jobs scrape ``targets[job_name]`` every ``interval``.

    Job names, metrics paths and static labels are kept (the rules and dashboards select on
    them); per-job intervals are dropped. A job without a target in ``targets`` is an error,
    so a job added to the real config cannot silently go unchecked.
    """
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            raise KeyError(f"no local target for scrape job {name!r}")
        labels = {
            key: value
            for group in job.get("static_configs", [])
            for key, value in group.get("labels", {}).items()
        }
        local = {k: v for k, v in job.items() if k not in ("scrape_interval", "scrape_timeout")}
        local["static_configs"] = [{"targets": [targets[name]], "labels": labels}]
        jobs.append(local)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
            "external_labels": config.get("global", {}).get("external_labels", {}),
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": jobs,
    }


def start_prometheus(
    binary: str, config: dict[str, Any], port: int, workdir: Path, timeout_s: float = 30
) -> PrometheusServer:
    """Run ``prometheus`` with ``config`` on ``127.0.0.1:port`` (TSDB under ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{tail}")
        try:
            return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "prometheus to be ready", timeout_s)
    except BaseException:
        stop_prometheus(server)
        raise
    return server


def stop_prometheus(server: PrometheusServer) -> None:
    """Terminate the server (kill it after 10 s)."""
    if server.process.poll() is not None:
        return
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
