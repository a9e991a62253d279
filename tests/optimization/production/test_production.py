"""The platform front door: the documented call, measured metrics, NNX models, bad input."""

import time

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from opifex.optimization.production import (
    HybridPerformancePlatform,
    IntelligentGPUMemoryManager,
    PerformanceMetrics,
)


def test_documented_call_and_measured_metrics():
    platform = HybridPerformancePlatform(gpu_memory_optimization=True, adaptive_jit=True)
    assert isinstance(platform.memory_manager, IntelligentGPUMemoryManager)
    w = np.linspace(-1.0, 1.0, 12).reshape(4, 3)

    def f(x, w):
        return jnp.tanh(x @ w)

    x = np.random.default_rng(0).normal(size=(10, 4))
    model = platform.optimize(f, x, w, batch_argnums=(0,))
    m = model.metrics
    assert isinstance(m, PerformanceMetrics)
    assert (m.calls, m.eager_calls, m.compiled_calls) == (6, 3, 3)
    assert m.decision in ("jit", "eager")
    want = m.compile_time_s / (m.eager_run_s - m.compiled_run_s)
    if m.eager_run_s > m.compiled_run_s:
        assert m.break_even_calls == pytest.approx(want)
        assert (m.decision == "jit") == (want <= platform.expected_calls)
    assert m.programs == 1 and m.compiled_buckets == (16,)
    assert m.compilations >= 1 and m.temp_bytes is not None and m.argument_bytes > 0
    np.testing.assert_allclose(np.asarray(model(x[:7], w)), np.tanh(x[:7] @ w), rtol=1e-12)


def test_metrics_match_a_hand_timed_loop():
    platform = HybridPerformancePlatform(adaptive_jit=True, probe_calls=3)

    def slow(x):
        time.sleep(0.02)  # eager-only cost: the compiled program traces it once
        return x * 2.0

    model = platform.optimize(slow, np.ones(3))
    m = model.metrics
    assert m.eager_run_s == pytest.approx(0.02, abs=0.015)
    assert m.compiled_run_s < 0.01
    assert m.decision == "jit"


def test_nnx_model_and_non_adaptive_mode():
    linear = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    platform = HybridPerformancePlatform(gpu_memory_optimization=False, adaptive_jit=False)
    assert platform.memory_manager is None
    x = np.arange(15.0).reshape(5, 3)
    model = platform.optimize(linear, x, batch_argnums=(0,))
    np.testing.assert_allclose(np.asarray(model(x[:2])), np.asarray(linear(x[:2])), rtol=1e-12)
    m = model.metrics
    assert m.decision == "jit" and m.eager_calls == 0 and m.compiled_calls == 2
    with pytest.raises(ValueError, match="gpu_memory_optimization=True"):
        platform.plan_memory(None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"adaptive_jit": "yes"}, TypeError, "adaptive_jit must be a bool"),
        ({"max_batch": 0}, ValueError, "max_batch must be an int >= 1"),
        ({"bucket_growth": 0.5}, ValueError, "growth must be > 1"),
        ({"probe_calls": 0}, ValueError, "probe_calls must be an int >= 1"),
        ({"compilation_cache_dir": ""}, ValueError, "non-empty directory"),
    ],
)
def test_bad_settings_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        HybridPerformancePlatform(**kwargs)


def test_bad_target_raises():
    with pytest.raises(TypeError, match="target must be a function or an nnx"):
        HybridPerformancePlatform().optimize(42)
