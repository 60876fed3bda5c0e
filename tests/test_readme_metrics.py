"""The README's metrics table lists every metric the package defines."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from workers import metrics

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_metric_names() -> set[str]:
    return {
        line.split("`")[1]
        for line in README.read_text().splitlines()
        if line.startswith("| `") and line.count("`") >= 2
    }


def defined_metric_names() -> set[str]:
    names = set(metrics.EXPORTER_METRICS)
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # Counters are stored without their _total suffix.
            name = value._name
            names.add(f"{name}_total" if value._type == "counter" else name)
    return names


def test_every_defined_metric_is_in_the_readme_table() -> None:
    missing = defined_metric_names() - readme_metric_names()
    assert not missing, f"add these to README.md, 'Every metric': {sorted(missing)}"
