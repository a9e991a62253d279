"""LearnToOptimize: the documented example, warm starts, fallback, and every config field."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from opifex.optimization.l2o.l2o_engine import learned_optimizer
from opifex.optimization.meta_optimization import (
    LearnToOptimize,
    MetaOptimizerConfig,
    learn_to_optimize,
)

TARGET = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(3.0)}


def objective_fn(params):
    return jnp.sum((params["w"] - TARGET["w"]) ** 2) + (params["b"] - TARGET["b"]) ** 2


def shifted(params, args):
    return jnp.sum((params - args) ** 2)


def _adam(lr, steps, make=optax.adam):
    adam, y = make(lr), jnp.zeros(2)
    state = adam.init(y)
    for _ in range(steps):
        updates, state = adam.update(2.0 * (y - jnp.array([1.0, -1.0])), state)
        y = optax.apply_updates(y, updates)
    return y


def test_documented_example_runs_as_written_and_finds_the_minimiser():
    params = {"w": jnp.zeros(3), "b": jnp.array(0.0)}
    config = MetaOptimizerConfig(
        meta_learning_rate=1e-4, adaptation_steps=5, warm_start_strategy="previous_params"
    )
    l2o = LearnToOptimize(config=config, rngs=nnx.Rngs(42))
    optimized_params = l2o.optimize(params, objective_fn, num_steps=1000)

    assert jax.tree.structure(optimized_params) == jax.tree.structure(params)
    np.testing.assert_allclose(optimized_params["w"], TARGET["w"], atol=1e-2)
    np.testing.assert_allclose(optimized_params["b"], TARGET["b"], atol=1e-2)
    result = l2o.last_result
    assert result.start == "given" and result.num_steps == 1000 and result.fallback_count == 0
    assert result.losses.shape == (1001,) and result.losses[0] == pytest.approx(14.25)
    assert result.losses[-1] < 1e-4 * result.losses[0]
    assert result.adaptation_loss.shape == (5,)  # adaptation_steps meta-steps were taken
    # The same problem again starts from the previous solution.
    l2o.optimize(params, objective_fn, num_steps=1000)
    assert l2o.last_result.start == "previous_params"
    assert l2o.last_result.losses[0] == pytest.approx(result.losses[-1], rel=1e-6)


def _spy(monkeypatch):
    calls = []

    def fake_meta_train(theta, family, **kwargs):
        calls.append(kwargs)
        return theta, {"meta_loss": np.zeros(kwargs["meta_steps"]), "time_s": np.zeros(1)}

    monkeypatch.setattr(learn_to_optimize, "meta_train", fake_meta_train)
    return calls


def test_meta_fields_reach_meta_training_and_adaptation(monkeypatch):
    calls = _spy(monkeypatch)
    cfg = MetaOptimizerConfig(
        meta_learning_rate=3e-3, adaptation_steps=2, unroll_length=7, meta_method="grad"
    )
    l2o = LearnToOptimize(config=cfg)
    l2o.optimize(jnp.zeros(2), shifted, num_steps=5, args=jnp.ones(2))
    l2o.meta_train(family=None, meta_steps=4, num_tasks=3)
    adapt, train = calls
    for call in calls:
        assert call["meta_learning_rate"] == 3e-3 and call["unroll_length"] == 7
        assert call["method"] == "grad"
    assert adapt["meta_steps"] == 2 and adapt["num_tasks"] == 1
    assert train["meta_steps"] == 4 and train["num_tasks"] == 3
    calls.clear()
    LearnToOptimize(config=cfg.replace(adaptation_steps=0)).optimize(
        jnp.zeros(2), shifted, num_steps=5, args=jnp.ones(2)
    )
    assert calls == []  # no adaptation


def test_meta_fields_change_the_adapted_optimizer_numerically():
    # The spy above shows where the fields go; this shows what they do, with the real
    # meta_train: no adaptation, then one meta-step, a 10x larger meta step, another unroll
    # length and the other gradient estimator all give different iterates.
    base = MetaOptimizerConfig(adaptation_steps=1, unroll_length=4, meta_method="grad")

    def run(cfg):
        l2o = LearnToOptimize(config=cfg, rngs=nnx.Rngs(0))
        return np.asarray(l2o.optimize(jnp.zeros(2), shifted, num_steps=5, args=jnp.ones(2)))

    x_none = run(base.replace(adaptation_steps=0))
    x_one = run(base)
    x_big = run(base.replace(meta_learning_rate=10 * base.meta_learning_rate))
    x_unroll = run(base.replace(unroll_length=3))
    x_es = run(base.replace(meta_method="es"))
    moved = np.abs(x_one - x_none).max()
    assert moved > 1e-9
    # Adam's first meta-step moves every meta-parameter by about its step size.
    assert np.abs(x_big - x_none).max() > 3 * moved
    for other in (x_unroll, x_es):
        assert np.abs(other - x_one).max() > 1e-9


def test_learning_rate_sets_the_untrained_step_and_hidden_sizes_the_network():
    # Untrained, the learned optimizer is AMSGrad (beta1 0.9) with step learning_rate, up to
    # the network's small initial output (init_meta_params' output_scale 1e-2).
    for lr in (0.1, 0.01):
        l2o = LearnToOptimize(config=MetaOptimizerConfig(learning_rate=lr))
        x = l2o.optimize(jnp.zeros(2), shifted, num_steps=5, args=jnp.array([1.0, -1.0]))
        np.testing.assert_allclose(x, _adam(lr, 5, optax.amsgrad), rtol=0.05)
    l2o = LearnToOptimize(config=MetaOptimizerConfig(hidden_sizes=(4,)))
    assert sorted(l2o.theta) == ["b0", "b1", "log_lr", "w0", "w1"]
    assert l2o.theta["w0"].shape[1] == 4 and l2o.theta["w1"].shape[0] == 4


def test_nonfinite_learned_updates_fall_back_to_base_adam_and_are_counted():
    for base_lr in (0.05, 0.2):
        l2o = LearnToOptimize(config=MetaOptimizerConfig(base_learning_rate=base_lr))
        l2o.theta = {**l2o.theta, "w0": jnp.full_like(l2o.theta["w0"], jnp.nan)}
        x = l2o.optimize(jnp.zeros(2), shifted, num_steps=5, args=jnp.array([1.0, -1.0]))
        assert l2o.last_result.fallback_count == 5
        np.testing.assert_allclose(x, _adam(base_lr, 5), rtol=1e-12)


def test_warm_start_strategies_and_memory_bound():
    cfg = MetaOptimizerConfig(warm_start_strategy="nearest_neighbor", warm_start_memory=2)
    l2o = LearnToOptimize(config=cfg, rngs=nnx.Rngs(0))
    targets = [jnp.array([0.0, 0.0]), jnp.array([5.0, 5.0]), jnp.array([9.0, 9.0])]
    for a in targets:
        l2o.optimize(jnp.zeros(2), shifted, num_steps=3000, args=a, features=a)
    assert l2o.warm_starter.size == 2
    # The problem at 0 was forgotten: a problem near it now starts from the one at 5.
    l2o.optimize(jnp.zeros(2), shifted, num_steps=3000, args=jnp.ones(2), features=jnp.ones(2))
    assert l2o.last_result.start == "nearest_neighbor"
    assert l2o.last_result.losses[0] == pytest.approx(2 * 4.0**2, rel=1e-3)
    with pytest.raises(ValueError, match="needs the problem's features"):
        l2o.optimize(jnp.zeros(2), shifted, num_steps=5, args=jnp.ones(2))
    # warm_start_strategy="none" never replaces the given params.
    cold = LearnToOptimize(config=MetaOptimizerConfig())
    for _ in range(2):
        cold.optimize(jnp.zeros(2), shifted, num_steps=5, args=jnp.ones(2))
        assert cold.last_result.start == "given" and cold.last_result.losses[0] == 2.0


def test_config_validation_lists_valid_choices():
    with pytest.raises(ValueError) as err:
        MetaOptimizerConfig(warm_start_strategy="closest")
    for name in ("none", "previous_params", "nearest_neighbor", "learned", "closest"):
        assert repr(name) in str(err.value)
    bad = {
        "meta_learning_rate": 0.0,
        "adaptation_steps": -1,
        "learning_rate": -1.0,
        "base_learning_rate": 0.0,
        "unroll_length": 0,
        "meta_method": "adam",
        "hidden_sizes": [32],
        "warm_start_memory": 0,
    }
    assert set(bad) == {f.name for f in dataclasses.fields(MetaOptimizerConfig)} - {
        "warm_start_strategy"
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            MetaOptimizerConfig(**{name: value})
    with pytest.raises(TypeError, match="MetaOptimizerConfig"):
        LearnToOptimize(config={"meta_learning_rate": 1e-3})
    with pytest.raises(ValueError, match="num_steps"):
        LearnToOptimize().optimize(jnp.zeros(2), objective_fn, num_steps=0)


def test_save_load_and_as_transform(tmp_path):
    l2o = LearnToOptimize(config=MetaOptimizerConfig(hidden_sizes=(4,)), rngs=nnx.Rngs(3))
    l2o.save(tmp_path / "theta.npz")
    other = LearnToOptimize(config=MetaOptimizerConfig(hidden_sizes=(4,)), rngs=nnx.Rngs(4))
    other.load(tmp_path / "theta.npz")
    for k, v in l2o.theta.items():
        np.testing.assert_array_equal(other.theta[k], v)
    ours, ref = other.as_transform(), learned_optimizer(l2o.theta, base=optax.adam(1e-3))

    @jax.jit
    def both(g, p):
        return ours.update(g, ours.init(p), p)[0], ref.update(g, ref.init(p), p)[0]

    u1, u2 = both(jnp.array([0.5, -1.0]), jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(u1, u2, rtol=1e-12)
