"""Tests of opifex.optimization.scientific_integration.profiling."""

import json

import jax.numpy as jnp
import pytest

from opifex.optimization.scientific_integration.profiling import (
    PhysicsProfiler,
    ProfileReport,
    _cost_figure,
)

M, K, N = 64, 128, 32


def test_matmul_flops_times_and_throughput():
    a, b = jnp.ones((M, K)), jnp.ones((K, N))
    report = PhysicsProfiler(repeats=4, warmup=2).profile(jnp.matmul, a, b, num_points=M)
    assert report.compile_time_s > 0 and report.step_time_s > 0
    assert len(report.step_times_s) == 4
    ordered = sorted(report.step_times_s)
    assert report.step_time_s == (ordered[1] + ordered[2]) / 2  # median of 4
    assert report.throughput == M / report.step_time_s
    assert report.num_points == M
    if report.argument_bytes is not None:
        assert report.argument_bytes == (M * K + K * N) * 8  # float64 under the test config
        assert report.output_bytes == M * N * 8
    if report.flops is None:
        pytest.skip(f"XLA reports no cost analysis on {report.backend}")
    assert report.flops == pytest.approx(2 * M * N * K, rel=0.01)
    assert report.flops_per_second == pytest.approx(report.flops / report.step_time_s)


def test_compiles_once_and_times_only_compiled_calls():
    traces = []

    def step(x):
        traces.append(1)
        return jnp.tanh(x) @ x.T

    PhysicsProfiler(repeats=3, warmup=2).profile(step, jnp.ones((4, 4)))
    assert len(traces) == 1  # lower+compile traced it; warmup and timed calls did not


def test_report_without_points_has_no_throughput_and_serialises():
    report = PhysicsProfiler(repeats=1, warmup=0).profile(lambda x: jnp.sin(x) * 2, jnp.ones(8))
    assert report.throughput is None
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["step_times_s"] == list(report.step_times_s)
    text = str(report)
    assert "compile time" in text and "throughput" in text and "n/a" in text


def test_cost_figure_handles_every_return_form():
    assert _cost_figure(None, "flops") is None
    assert _cost_figure({}, "flops") is None
    assert _cost_figure({"flops": -1.0}, "flops") is None  # XLA's "unknown"
    assert _cost_figure({"flops": 10.0}, "flops") == 10.0
    assert _cost_figure([{"flops": 10.0}, {"flops": 5.0}], "flops") == 15.0
    assert _cost_figure([{"bytes accessed": 3.0}], "flops") is None


def test_str_prints_missing_figures_as_na():
    report = ProfileReport(backend="cpu", compile_time_s=1.0, step_time_s=0.5, step_times_s=(0.5,))
    lines = str(report).splitlines()
    assert any(line.startswith("FLOPs per step") and line.endswith("n/a") for line in lines)


def test_bad_config_and_arguments_raise():
    with pytest.raises(ValueError, match="repeats"):
        PhysicsProfiler(repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        PhysicsProfiler(warmup=-1)
    with pytest.raises(ValueError, match="num_points"):
        PhysicsProfiler().profile(jnp.sin, jnp.ones(2), num_points=0)
