"""The platform front door: documented call, metrics, NNX models, training steps, bad input."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from opifex.optimization.production import (
    NO_REMAT,
    HybridPerformancePlatform,
    IntelligentGPUMemoryManager,
    PerformanceMetrics,
    RematCandidate,
    scan_layers,
)

FULL = RematCandidate("per-layer", "nothing_saveable")


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


def _tiny_problem(layers=4, width=6, batch=8):
    rng = np.random.default_rng(3)
    params = {
        "w": jnp.asarray(rng.normal(size=(layers, width, width)) / np.sqrt(width)),
        "b": jnp.full((layers, width), 0.1),
    }
    args = (jnp.asarray(rng.normal(size=(batch, width))), jnp.asarray(rng.normal(size=(batch,))))

    def make_loss(remat):
        def loss(p, xy):
            h = scan_layers(lambda h, q: jnp.tanh(h @ q["w"] + q["b"]), p, xy[0], remat)
            return jnp.mean((h.sum(axis=1) - xy[1]) ** 2)

        return loss

    return make_loss, params, args


def _hand_steps(make_loss, params, args, opt, n):
    """Plain optax loop on the un-rematerialized loss."""
    state = opt.init(params)
    losses = []
    value_and_grad = jax.jit(jax.value_and_grad(make_loss(NO_REMAT)))
    for _ in range(n):
        loss, grads = value_and_grad(params, args)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return params, losses


def _copy(tree):
    return jax.tree.map(jnp.array, tree)


def test_training_step_applies_the_memory_plan_and_donates():
    make_loss, params, args = _tiny_problem()
    opt = optax.adam(0.05)
    manager = IntelligentGPUMemoryManager(candidates=[NO_REMAT, FULL])
    platform = HybridPerformancePlatform(probe_calls=1, memory_manager=manager)
    step = platform.optimize_training_step(make_loss, params, args, opt)
    p, state, losses = _copy(params), opt.init(params), []
    for _ in range(3):  # an eager probe, a compiled probe, then the decision's mode
        given = p
        p, state, loss = step(p, state, args)
        losses.append(float(loss))
    want, want_losses = _hand_steps(make_loss, params, args, opt, 3)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    m = step.metrics
    plan = step.memory_plan
    rows = {r.candidate.name: r.cost for r in plan.remat.rows}
    assert m.memory_policy == plan.remat.chosen_candidate.name
    assert m.baseline_temp_bytes == rows["no remat"].temp_bytes
    assert m.remat_temp_bytes == rows[m.memory_policy].temp_bytes <= m.baseline_temp_bytes
    assert m.remat_flops_ratio == pytest.approx(
        rows[m.memory_policy].flops / rows["no remat"].flops
    )
    assert m.micro_batches == 1 and m.donated and m.calls == 3
    if m.decision == "jit":
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(given))


def test_training_step_without_memory_optimization_is_the_baseline():
    make_loss, params, args = _tiny_problem()
    opt = optax.sgd(0.1)
    platform = HybridPerformancePlatform(gpu_memory_optimization=False, adaptive_jit=False)
    step = platform.optimize_training_step(make_loss, params, args, opt)
    new, _, loss = step(params, opt.init(params), args)
    want, want_losses = _hand_steps(make_loss, params, args, opt, 1)
    assert float(loss) == pytest.approx(want_losses[0], rel=1e-12)
    np.testing.assert_allclose(np.asarray(new["w"]), np.asarray(want["w"]), rtol=1e-10)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(params))  # no donation
    m = step.metrics
    assert (m.memory_policy, m.donated, m.compiled_calls) == ("no remat", False, 1)
    assert m.baseline_temp_bytes is None and m.remat_temp_bytes is None
    assert step.memory_plan is None


def test_training_step_budget_splits_into_exact_micro_batches():
    make_loss, params, args = _tiny_problem(batch=8)
    opt = optax.sgd(0.1)
    free = IntelligentGPUMemoryManager(candidates=[NO_REMAT]).plan(make_loss, params, args)
    tight = free.remat.rows[0].cost.temp_bytes // 2
    manager = IntelligentGPUMemoryManager(candidates=[NO_REMAT], memory_budget_bytes=tight)
    platform = HybridPerformancePlatform(adaptive_jit=False, memory_manager=manager)
    step = platform.optimize_training_step(make_loss, params, args, opt)
    new, _, loss = step(_copy(params), opt.init(params), args)
    want, want_losses = _hand_steps(make_loss, params, args, opt, 1)
    assert step.metrics.micro_batches > 1
    assert step.memory_plan.micro_batches.chosen_cost.temp_bytes <= tight
    assert float(loss) == pytest.approx(want_losses[0], rel=1e-10)
    np.testing.assert_allclose(np.asarray(new["w"]), np.asarray(want["w"]), rtol=1e-9)


def test_training_step_bad_input_raises():
    make_loss, params, args = _tiny_problem()
    platform = HybridPerformancePlatform(memory_manager=IntelligentGPUMemoryManager())
    with pytest.raises(TypeError, match="optimizer must be an optax"):
        platform.optimize_training_step(make_loss, params, args, object())
    with pytest.raises(TypeError, match="make_loss must be callable"):
        platform.optimize_training_step(None, params, args, optax.sgd(0.1))
    with pytest.raises(TypeError, match="memory_manager must be an IntelligentGPUMemoryManager"):
        HybridPerformancePlatform(memory_manager="big")
    with pytest.raises(ValueError, match="gpu_memory_optimization=False"):
        HybridPerformancePlatform(
            gpu_memory_optimization=False, memory_manager=IntelligentGPUMemoryManager()
        )
