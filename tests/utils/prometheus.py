"""Reading Prometheus text exposition in tests."""

from __future__ import annotations


def parse_metrics(text: str) -> dict[str, float]:
    """``{series with its labels: value}`` of a ``/metrics`` body (comments skipped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values
