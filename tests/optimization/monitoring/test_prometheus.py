"""Prometheus exposition: naming rules, parsable output with the right values, HTTP endpoint."""

import math
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from opifex.optimization.performance_monitoring import PrometheusExporter, check_metric_name


def _samples(text):
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("name", "kind", "unit", "rule"),
    [
        ("1step_seconds", "histogram", "seconds", "data model"),
        ("step-time_seconds", "histogram", "seconds", "data model"),
        ("StepTime_seconds", "histogram", "seconds", "snake_case"),
        ("job:step_seconds", "histogram", "seconds", "snake_case"),
        ("__step_seconds", "histogram", "seconds", "snake_case"),
        ("step_time_ms", "gauge", None, "base units"),
        ("step_minutes_total", "counter", None, "base units"),
        ("memory_mb", "gauge", None, "base units"),
        ("gpu_utilization_percent", "gauge", None, "base units"),
        ("steps", "counter", None, "counter suffix"),
        ("loss_total", "gauge", None, "counter suffix"),
        ("step_time", "histogram", "seconds", "unit suffix"),
        ("heap_bytes", "gauge", None, "unit suffix"),
        ("heap_seconds", "gauge", "bytes", "unit suffix"),
        ("latency_seconds_bucket", "histogram", "seconds", "reserved suffix"),
        ("requests_count", "gauge", None, "reserved suffix"),
    ],
)
def test_bad_names_are_rejected_naming_the_rule(name, kind, unit, rule):
    with pytest.raises(ValueError, match=f"breaks the Prometheus rule '{rule}'"):
        check_metric_name(name, kind=kind, unit=unit)
    exporter = PrometheusExporter(namespace="")
    with pytest.raises(ValueError, match=f"rule '{rule}'"):
        exporter.define(name, "help", kind=kind, unit=unit)


@pytest.mark.parametrize(
    ("name", "kind", "unit"),
    [
        ("opifex_step_duration_seconds", "histogram", "seconds"),
        ("opifex_compile_seconds_total", "counter", "seconds"),
        ("opifex_device_memory_in_use_bytes", "gauge", "bytes"),
        ("opifex_steps_total", "counter", None),
        ("opifex_throughput_items_per_second", "gauge", None),
    ],
)
def test_good_names_pass(name, kind, unit):
    assert check_metric_name(name, kind=kind, unit=unit) == name


def test_bad_label_names_and_kinds_are_rejected():
    exporter = PrometheusExporter()
    with pytest.raises(ValueError, match="rule 'label name'"):
        exporter.define("loss", "help", kind="gauge", labelnames=("loop-name",))
    with pytest.raises(ValueError, match="kind must be one of"):
        exporter.define("loss", "help", kind="summary")
    with pytest.raises(ValueError, match="use base units"):
        exporter.define("loss_ms", "help", kind="gauge", unit="milliseconds")
    exporter.define("loss", "help", kind="gauge", labelnames=("loop",))
    with pytest.raises(ValueError, match="already a gauge"):
        exporter.define("loss", "help", kind="histogram")
    with pytest.raises(ValueError, match=r"takes labels \['loop'\]"):
        exporter.set("loss", 1.0, {"phase": "train"})
    with pytest.raises(ValueError, match="counter only goes up"):
        exporter.define("steps_total", "help", kind="counter")
        exporter.inc("steps_total", -1)


def test_exposition_parses_and_values_match():
    exporter = PrometheusExporter(namespace="demo")
    exporter.define("steps_total", "Steps.", kind="counter", labelnames=("loop",))
    exporter.define("loss", "Loss.", kind="gauge", labelnames=("loop",))
    exporter.define(
        "step_duration_seconds", "Step time.", kind="histogram", unit="seconds",
        buckets=(0.01, 0.1, 1.0),
    )  # fmt: skip
    exporter.inc("steps_total", 2, {"loop": "train"})
    exporter.inc("steps_total", 1, {"loop": "train"})
    exporter.set("loss", 0.375, {"loop": "train"})
    durations = [0.005, 0.05, 0.05, 0.5, 2.0]
    for d in durations:
        exporter.observe("step_duration_seconds", d)
    samples = _samples(exporter.exposition())
    assert samples[("demo_steps_total", (("loop", "train"),))] == 3.0
    assert samples[("demo_loss", (("loop", "train"),))] == 0.375
    assert samples[("demo_step_duration_seconds_count", ())] == 5.0
    assert samples[("demo_step_duration_seconds_sum", ())] == pytest.approx(sum(durations))
    for le, expected in (("0.01", 1), ("0.1", 3), ("1.0", 4), ("+Inf", 5)):
        assert samples[("demo_step_duration_seconds_bucket", (("le", le),))] == expected
    types = {f.name: f.type for f in text_string_to_metric_families(exporter.exposition())}
    assert types["demo_steps"] == "counter" and types["demo_loss"] == "gauge"
    assert types["demo_step_duration_seconds"] == "histogram"


def test_nonfinite_values_are_counted_not_exported():
    exporter = PrometheusExporter()
    exporter.define("loss", "Loss.", kind="gauge")
    exporter.define("grad_seconds", "t", kind="histogram", unit="seconds")
    exporter.set("loss", 2.5)
    exporter.set("loss", math.nan)
    exporter.set("loss", math.inf)
    exporter.observe("grad_seconds", -math.inf)
    samples = _samples(exporter.exposition())
    assert samples[("opifex_loss", ())] == 2.5
    assert samples[("opifex_grad_seconds_count", ())] == 0.0
    assert samples[("opifex_nonfinite_values_total", (("metric", "opifex_loss"),))] == 2.0
    assert samples[("opifex_nonfinite_values_total", (("metric", "opifex_grad_seconds"),))] == 1


def test_registry_argument_and_isolation():
    registry = CollectorRegistry()
    a = PrometheusExporter(registry)
    a.define("loss", "Loss.", kind="gauge")
    a.set("loss", 1.5)
    assert registry.get_sample_value("opifex_loss") == 1.5
    # A second exporter owns a fresh registry, so the same names do not collide.
    b = PrometheusExporter()
    b.define("loss", "Loss.", kind="gauge")
    b.set("loss", 4.0)
    assert registry.get_sample_value("opifex_loss") == 1.5
    assert b.registry.get_sample_value("opifex_loss") == 4.0


def test_http_endpoint_serves_on_loopback():
    exporter = PrometheusExporter()
    exporter.define("loss", "Loss.", kind="gauge")
    exporter.set("loss", 0.125)
    server = exporter.serve()
    try:
        assert server.address == "127.0.0.1" and server.port > 0
        with urllib.request.urlopen(server.url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.close()
    assert _samples(text)[("opifex_loss", ())] == 0.125
