"""PerformanceMonitor: metrics equal hand measurements; compile events; memory; bad values."""

import math
import resource
import sqlite3
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from opifex.optimization.core import Solution, Status
from opifex.optimization.performance_monitoring import PerformanceMonitor


def _samples(text):
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_step_metrics_are_exact_with_an_injected_clock():
    ticks = [10.0, 10.25, 10.75, 11.0, 12.0]
    clock = iter(ticks)
    losses = [4.0, 2.0, 1.0, 0.5]
    with PerformanceMonitor(clock=lambda: next(clock), compile_events=False) as mon:
        mon.start("train")
        records = [mon.step("train", loss=l, grad_norm=2 * l, items=8) for l in losses]
        dts = list(np.diff(ticks))
        assert [r.seconds for r in records] == dts
        assert [r.throughput for r in records] == [8 / d for d in dts]
        assert [r.step for r in records] == [1, 2, 3, 4]
        assert [p.value for p in mon.query("opifex_step_duration_seconds")] == dts
        assert [p.value for p in mon.query("opifex_loss", {"loop": "train"})] == losses
        assert [p.value for p in mon.query("opifex_gradient_norm")] == [2 * l for l in losses]
        samples = _samples(mon.exposition())
    train = (("loop", "train"),)
    assert samples[("opifex_steps_total", train)] == 4
    assert samples[("opifex_items_total", train)] == 32
    assert samples[("opifex_step_duration_seconds_sum", train)] == sum(dts)
    assert samples[("opifex_step_duration_seconds_count", train)] == 4
    assert samples[("opifex_throughput_items_per_second", train)] == 8.0
    assert samples[("opifex_loss", train)] == 0.5


def test_step_times_match_a_hand_timed_training_loop():
    def loss_fn(w, x):
        return jnp.mean((x @ w - 1.0) ** 2)

    step = jax.jit(lambda w, x: w - 0.1 * jax.grad(loss_fn)(w, x))
    value = jax.jit(loss_fn)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8)))
    w = jnp.zeros(8)
    step(w, x).block_until_ready()
    value(w, x).block_until_ready()
    hand, losses = [], []
    with PerformanceMonitor(compile_events=False) as mon:
        mon.start("train")
        for _ in range(20):
            t0 = time.perf_counter()
            w = step(w, x)
            time.sleep(0.005)
            loss = value(w, x)
            losses.append(float(loss))
            hand.append(time.perf_counter() - t0)
            mon.step("train", loss=loss, items=64)
        measured = [p.value for p in mon.query("opifex_step_duration_seconds")]
        stored = [p.value for p in mon.query("opifex_loss")]
    # Each monitored interval contains the hand-timed one plus the loop's own overhead.
    assert all(m >= h for m, h in zip(measured, hand, strict=True))
    # ... and nothing more than the loop's bookkeeping (a median, so that a scheduler hiccup on
    # a busy machine cannot fail the test).
    assert np.median(np.subtract(measured, hand)) < 2e-3
    assert stored == losses


def test_served_calls_match_hand_timing_and_count_errors():
    @jax.jit
    def predict(x):
        return jnp.tanh(x) * 2.0

    x = jnp.ones(16)
    predict(x).block_until_ready()
    with PerformanceMonitor(compile_events=False) as mon:
        served = mon.timed(predict, block=True)
        hand = []
        for _ in range(10):
            t0 = time.perf_counter()
            out = served(x)
            hand.append(time.perf_counter() - t0)
        np.testing.assert_allclose(out, np.tanh(1.0) * 2.0 * np.ones(16))
        with pytest.raises(ZeroDivisionError), mon.timed("divide"):
            time.sleep(0.002)
            _ = 1 / 0
        measured = [
            p.value for p in mon.query("opifex_call_duration_seconds", {"function": "predict"})
        ]
        divide = mon.query("opifex_call_duration_seconds", {"function": "divide"})
        samples = _samples(mon.exposition())
    assert all(0 < m <= h for m, h in zip(measured, hand, strict=True))
    assert divide[0].value >= 0.002
    assert samples[("opifex_calls_total", (("function", "predict"),))] == 10
    assert samples[("opifex_call_errors_total", (("function", "divide"),))] == 1
    assert ("opifex_call_errors_total", (("function", "predict"),)) not in samples


def test_compile_events_are_counted_from_jax_monitoring():
    x5, x6 = jnp.ones(5), jnp.ones(6)
    with PerformanceMonitor() as mon:
        f = jax.jit(lambda v: jnp.sin(v) + 1.0)
        f(x5).block_until_ready()
        f(x5).block_until_ready()
        f(x6).block_until_ready()
        samples = _samples(mon.exposition())
        stages = {p.labels["stage"] for p in mon.query("opifex_compile_duration_seconds")}
    # Two shapes: two executables, compiled or (if another test enabled JAX's persistent
    # cache) loaded from it; the repeated call with shape (5,) adds none.
    compiled = samples[("opifex_compilations_total", ())]
    assert compiled == 2
    assert samples[("opifex_compilation_cache_hits_total", ())] <= compiled
    key = ("opifex_compile_duration_seconds_count", (("stage", "backend_compile"),))
    assert samples[key] == 2
    assert "jaxpr_trace" in stages
    # Closed monitors stop listening: later compiles reach nobody.
    jax.jit(lambda v: v * 3.0)(jnp.ones(2)).block_until_ready()
    assert _samples(mon.exposition())[("opifex_compilations_total", ())] == compiled


def test_memory_is_sampled_from_device_or_process():
    with PerformanceMonitor(compile_events=False, memory_every=2) as mon:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        mon.step("train", loss=1.0)
        assert mon.query("opifex_process_max_resident_memory_bytes") == []
        mon.step("train", loss=1.0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        peak = mon.query("opifex_process_max_resident_memory_bytes")[0].value
        current = mon.query("opifex_process_resident_memory_bytes")[0].value
        values = mon.sample_memory()
    assert before <= peak <= max(after, current)
    assert 0 < current <= peak
    stats = jax.local_devices()[0].memory_stats()
    if stats and "bytes_in_use" in stats:
        assert values[f"device_memory_in_use_bytes:{jax.local_devices()[0].id}"] > 0
    else:
        assert not any(k.startswith("device_") for k in values)


def test_solver_results_are_recorded():
    solution = Solution(
        params=jnp.zeros(2),
        value=jnp.asarray(0.125),
        status=jnp.asarray(Status.CONVERGED, jnp.int32),
        num_steps=jnp.asarray(7, jnp.int32),
        state=None,
    )
    with PerformanceMonitor(compile_events=False) as mon:
        mon.observe_solution(solution, seconds=0.5, loop="lbfgs")
        samples = _samples(mon.exposition())
        assert [p.value for p in mon.query("opifex_solver_steps")] == [7.0]
    assert samples[("opifex_solves_total", (("loop", "lbfgs"), ("status", "CONVERGED")))] == 1
    assert samples[("opifex_loss", (("loop", "lbfgs"),))] == 0.125
    assert samples[("opifex_step_duration_seconds_sum", (("loop", "lbfgs"),))] == 0.5


def test_nonfinite_loss_is_counted_flagged_and_not_exported():
    with PerformanceMonitor(compile_events=False) as mon:
        mon.step("train", loss=1.5)
        mon.step("train", loss=jnp.asarray(jnp.nan))
        mon.step("train", loss=math.inf)
        health = mon.health()
        flags = [p.flag for p in mon.query("opifex_loss", include_flagged=True)]
        samples = _samples(mon.exposition())
    assert health.nonfinite == {"opifex_loss": 2} and not health.ok
    assert "2 non-finite values in series 'opifex_loss'" in health.reasons[0]
    assert flags == [None, "nan", "+inf"]
    assert samples[("opifex_loss", (("loop", "train"),))] == 1.5
    assert samples[("opifex_nonfinite_values_total", (("metric", "opifex_loss"),))] == 2


def test_file_store_survives_reopen_and_lock_never_blocks(tmp_path):
    path = str(tmp_path / "monitor.sqlite")
    mon = PerformanceMonitor(path, compile_events=False)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    worst = 0.0
    for i in range(300):
        t0 = time.perf_counter()
        mon.step("train", loss=float(i), seconds=0.01)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.1 and mon.flush() is False
    samples = _samples(mon.exposition())
    assert samples[("opifex_metric_store_pending_points", ())] == 600
    assert samples[("opifex_metric_store_write_failures_total", ())] >= 1
    other.execute("ROLLBACK")
    other.close()
    mon.close()
    with PerformanceMonitor(path, compile_events=False) as again:
        assert [p.value for p in again.query("opifex_loss")] == [float(i) for i in range(300)]
        assert again.health().ok


def test_bad_arguments():
    with pytest.raises(TypeError, match="store must be a MetricStore"):
        PerformanceMonitor(store=3)
    with pytest.raises(ValueError, match="memory_every must be an int >= 0"):
        PerformanceMonitor(memory_every=-1)
    with (
        PerformanceMonitor(store=None, compile_events=False) as mon,
        pytest.raises(ValueError, match="keeps no history"),
    ):
        mon.query("opifex_loss")
