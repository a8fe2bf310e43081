"""The alert rules, checked and unit-tested by the real ``promtool`` (firing and quiet).

Each case gives input series and says whether the alert fires at ``eval_time``; the
expected annotations are read from the rule itself (they are static text), so a test
fails on a wrong expression, a wrong ``for:``, wrong labels, or a rule that is missing.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from utils.tools import require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules" / "skin-mlops.yml"


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


@dataclass
class Case:
    """Series in, and the alerts expected out (each one's extra labels), at ``eval_time``."""

    alert: str
    series: dict[str, str]
    eval_time: str
    fires: list[dict[str, str]] = field(default_factory=list)
    interval: str = "1m"


CASES = [
    # absent() of a comparison carries no labels
    Case("SkinApiDown", {'up{job="skin-api"}': "0x10"}, "5m", [{}]),
    Case("SkinApiDown", {'up{job="skin-api"}': "1x10"}, "5m"),
    Case("SkinApiDown", {'up{job="skin-api"}': "1 1 0 1 1 1 1 1"}, "5m"),  # a blip
    Case(
        "SkinApiHighErrorRatio",
        {
            'api_requests_total{endpoint="/predict",method="POST",status="500"}': "0+10x20",
            'api_requests_total{endpoint="/predict",method="POST",status="200"}': "0+10x20",
        },
        "15m",
        [{}],
    ),
    Case(
        "SkinApiHighErrorRatio",
        {
            'api_requests_total{endpoint="/predict",method="POST",status="500"}': "0x20",
            'api_requests_total{endpoint="/predict",method="POST",status="200"}': "0+10x20",
        },
        "15m",
    ),
    Case(
        "SkinApiSlowPredictions",
        {
            'api_request_duration_seconds_bucket{endpoint="/predict",method="POST",le="0.1"}': (
                "0x20"
            ),
            'api_request_duration_seconds_bucket{endpoint="/predict",method="POST",le="1"}': (
                "0+10x20"
            ),
            'api_request_duration_seconds_bucket{endpoint="/predict",method="POST",le="+Inf"}': (
                "0+10x20"
            ),
            'api_request_duration_seconds_count{endpoint="/predict",method="POST"}': "0+10x20",
        },
        "15m",
        [{}],
    ),
    Case(
        "SkinApiSlowPredictions",
        {
            'api_request_duration_seconds_bucket{endpoint="/predict",method="POST",le="0.1"}': (
                "0+10x20"
            ),
            'api_request_duration_seconds_bucket{endpoint="/predict",method="POST",le="1"}': (
                "0+10x20"
            ),
            'api_request_duration_seconds_bucket{endpoint="/predict",method="POST",le="+Inf"}': (
                "0+10x20"
            ),
            'api_request_duration_seconds_count{endpoint="/predict",method="POST"}': "0+10x20",
        },
        "15m",
    ),
    Case("SkinModelReloadFailing", {"api_model_reload_failing": "1x20"}, "15m", [{}]),
    Case("SkinModelReloadFailing", {"api_model_reload_failing": "1x5 0x15"}, "15m"),
    Case(
        "SkinLowConfidenceShareHigh",
        {
            'api_prediction_confidence_bucket{label="acne",le="0.5"}': "0+1x100",
            'api_prediction_confidence_count{label="acne"}': "0+2x100",
        },
        "90m",
        [{}],
    ),
    Case(
        "SkinLowConfidenceShareHigh",
        {
            'api_prediction_confidence_bucket{label="acne",le="0.5"}': "0+0x100",
            'api_prediction_confidence_count{label="acne"}': "0+2x100",
        },
        "90m",
    ),
    Case(
        "SkinOutOfDistributionShareHigh",
        {
            'api_out_of_distribution_total{label="acne"}': "0+1x100",
            'api_predictions_total{label="acne"}': "0+2x100",
        },
        "90m",
        [{}],
    ),
    Case(
        "SkinOutOfDistributionShareHigh",
        {
            'api_out_of_distribution_total{label="acne"}': "0+0.1x100",
            'api_predictions_total{label="acne"}': "0+2x100",
        },
        "90m",
    ),
    Case(
        "SkinLabelShareDrift",
        {
            'api_predictions_total{label="acne"}': "0+9x100",
            'api_predictions_total{label="lichen_planus"}': "0+1x100",
            'api_model_label_train_share{label="acne"}': "0.5x100",
            'api_model_label_train_share{label="lichen_planus"}': "0.5x100",
        },
        "90m",
        [{"label": "acne"}, {"label": "lichen_planus"}],
    ),
    Case(
        "SkinLabelShareDrift",
        {
            'api_predictions_total{label="acne"}': "0+5x100",
            'api_predictions_total{label="lichen_planus"}': "0+5x100",
            'api_model_label_train_share{label="acne"}': "0.5x100",
            'api_model_label_train_share{label="lichen_planus"}': "0.5x100",
        },
        "90m",
    ),
    # 1-minute samples (Prometheus forgets a series 5 minutes after its last sample)
    Case(
        "SkinTrainingStale",
        {
            'airflow_dag_last_success_timestamp_seconds{dag_id="train_model_pipeline"}': "0x11700",
            "airflow_up": "1x11700",
        },
        "194h",
        [{}],
    ),
    Case(
        "SkinTrainingStale",
        {
            'airflow_dag_last_success_timestamp_seconds{dag_id="train_model_pipeline"}': (
                "0+60x11700"
            ),
            "airflow_up": "1x11700",
        },
        "194h",
    ),
    Case("SkinTrainingStale", {"airflow_up": "1x400"}, "5h", [{"dag_id": "train_model_pipeline"}]),
    Case(
        "SkinIngestionFailing",
        {'airflow_dag_runs{dag_id="ingestion",state="failed"}': "0x10 1x20"},
        "4h",
        [{"dag_id": "ingestion", "state": "failed"}],
        interval="10m",
    ),
    Case(
        "SkinIngestionFailing",
        {'airflow_dag_runs{dag_id="ingestion",state="failed"}': "0x30"},
        "4h",
        interval="10m",
    ),
    Case("SkinWebappDown", {'up{job="skin-webapp"}': "0x10"}, "8m", [{}]),
    Case("SkinWebappDown", {'up{job="skin-webapp"}': "1x10"}, "8m"),
]


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


def test_promtool_accepts_the_rules_with_the_duplicate_lint() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", "--lint=duplicate-rules", "--lint-fatal", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_every_rule_follows_the_conventions() -> None:
    for name, rule in rules().items():
        assert name[0].isupper() and "_" not in name, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert "{{" not in "".join(rule["annotations"].values()), "static text (tests compare it)"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    for name in rules():
        cases = [c for c in CASES if c.alert == name]
        assert any(c.fires for c in cases) and any(not c.fires for c in cases), name


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.alert}-{'fires' if c.fires else 'quiet'}"
)
def test_promtool_unit_test(case: Case, tmp_path: Path) -> None:
    rule = rules()[case.alert]
    expected = [
        {
            "exp_labels": {**rule["labels"], **extra},
            "exp_annotations": rule["annotations"],
        }
        for extra in case.fires
    ]
    test_file = tmp_path / "case_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": case.interval,
                        "input_series": [
                            {"series": series, "values": values}
                            for series, values in case.series.items()
                        ],
                        "alert_rule_test": [
                            {
                                "eval_time": case.eval_time,
                                "alertname": case.alert,
                                "exp_alerts": expected,
                            }
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_loads_the_rules_folder_in_compose() -> None:
    config = yaml.safe_load((RULES.parent.parent / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./monitoring/prometheus/rules:/etc/prometheus/rules:ro" in volumes
