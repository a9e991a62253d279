"""L-BFGS over nnx.Param: equal to raw L-BFGS on flat params, non-param state, compile once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from opifex.optimization.core import Status
from opifex.optimization.second_order import (
    HybridOptimizerConfig,
    LBFGSConfig,
    NNXLBFGSWrapper,
    create_lbfgs_optimizer,
    create_nnx_lbfgs_optimizer,
)

X = jnp.linspace(-2.0, 2.0, 24)[:, None]
Y = jnp.sin(X)


class MLP(nnx.Module):
    def __init__(self, rngs, dtype=jnp.float64, width=8):
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        self.l1 = nnx.Linear(1, width, **kw)
        self.l2 = nnx.Linear(width, 1, **kw)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


class NormDropMLP(nnx.Module):
    """BatchNorm (batch stats) and Dropout (RNG state): both change on every forward call."""

    def __init__(self, rngs, train=True):
        kw = {"dtype": jnp.float64, "param_dtype": jnp.float64, "rngs": rngs}
        self.l1 = nnx.Linear(1, 8, **kw)
        self.bn = nnx.BatchNorm(8, use_running_average=not train, **kw)
        self.drop = nnx.Dropout(0.2, deterministic=not train, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, **kw)

    def __call__(self, x):
        return self.l2(self.drop(jnp.tanh(self.bn(self.l1(x)))))


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def raw_lbfgs(model, loss_fn, steps, config):
    """Reference: the same L-BFGS transform on the ravelled parameter vector."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure((params, rest))
    v0, unravel = ravel_pytree(params)

    def flat_loss(v):
        return loss_fn(nnx.merge(graphdef, unravel(v), rest), X, Y)

    tx = create_lbfgs_optimizer(config)
    value_and_grad = optax.value_and_grad_from_state(flat_loss)

    @jax.jit
    def step(v, s):
        value, grad = value_and_grad(v, state=s)
        updates, s = tx.update(grad, s, v, value=value, grad=grad, value_fn=flat_loss)
        return v + updates, s, value

    v, s, losses = v0, tx.init(v0), []
    for _ in range(steps):
        v, s, value = step(v, s)
        losses.append(float(value))
    return np.asarray(v), np.asarray(losses)


def flat_params(model):
    return np.asarray(ravel_pytree(nnx.as_pure(nnx.state(model, nnx.Param)))[0])


def test_fit_iterates_equal_raw_lbfgs_on_flat_params():
    config = LBFGSConfig(gtol=0.0)
    ref_v, ref_losses = raw_lbfgs(MLP(nnx.Rngs(0)), mse, 20, config)
    model = MLP(nnx.Rngs(0))
    history = NNXLBFGSWrapper(model, config).fit(mse, X, Y, num_steps=20)
    assert history.status == Status.MAX_STEPS and history.num_steps == 20
    np.testing.assert_allclose(flat_params(model), ref_v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(history.losses[:20], ref_losses, rtol=1e-10, atol=1e-14)
    assert history.losses[-1] == pytest.approx(float(mse(model, X, Y)), rel=1e-12)
    assert history.losses[-1] < 0.1 * history.losses[0]


def test_step_iterates_equal_raw_lbfgs_and_trace_once():
    calls = [0]

    def counted(model, x, y):
        calls[0] += 1
        return mse(model, x, y)

    ref_v, ref_losses = raw_lbfgs(MLP(nnx.Rngs(1)), mse, 6, LBFGSConfig())
    model = MLP(nnx.Rngs(1))
    wrapper = NNXLBFGSWrapper(model)
    losses = [float(wrapper.step(counted, X, Y))]
    traced = calls[0]
    losses += [float(wrapper.step(counted, X, Y)) for _ in range(5)]
    assert wrapper.num_traces == 1 and calls[0] == traced
    np.testing.assert_allclose(flat_params(model), ref_v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)


def test_fit_converges_to_least_squares_solution_and_compiles_once():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 3))
    b = a @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.01 * rng.normal(size=30)
    design = np.hstack([a, np.ones((30, 1))])
    coef = np.linalg.lstsq(design, b, rcond=None)[0]
    model = nnx.Linear(3, 1, param_dtype=jnp.float64, rngs=nnx.Rngs(2))
    wrapper = NNXLBFGSWrapper(model, LBFGSConfig(gtol=1e-10))
    loss = lambda m, x, y: jnp.mean((m(x)[:, 0] - y) ** 2)  # noqa: E731
    first = wrapper.fit(loss, jnp.asarray(a), jnp.asarray(b), num_steps=100)
    assert first.status == Status.CONVERGED
    np.testing.assert_allclose(model.kernel[...][:, 0], coef[:3], atol=1e-9)
    np.testing.assert_allclose(model.bias[...], coef[3:], atol=1e-9)
    again = wrapper.fit(loss, jnp.asarray(a), jnp.asarray(b), num_steps=100)
    assert again.status == Status.CONVERGED and again.num_steps == 0
    assert wrapper.num_traces == 1


@nnx.jit
def nnx_train_step(model, optimizer, x, y):
    """A plain nnx training step with an nnx.Optimizer; the line search sees the pre-step
    non-parameter state (fresh copies), the gradient evaluation advances it."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    rest = nnx.as_pure(rest)
    loss, grads = nnx.value_and_grad(mse)(model, x, y)
    value_fn = lambda p: mse(nnx.merge(graphdef, p, rest), x, y)  # noqa: E731
    optimizer.update(model, grads, value=loss, grad=grads, value_fn=value_fn)
    return loss


def test_step_updates_non_param_state_like_a_training_step():
    """BatchNorm stats and RNG counters advance once per step, as in a normal train step;
    the line search's extra evaluations leave no trace."""
    model, ref = NormDropMLP(nnx.Rngs(3)), NormDropMLP(nnx.Rngs(3))
    wrapper = NNXLBFGSWrapper(model)
    optimizer = create_nnx_lbfgs_optimizer(ref)
    for k in range(3):
        value = nnx_train_step(ref, optimizer, X, Y)
        got = wrapper.step(mse, X, Y)
        np.testing.assert_allclose(got, value, rtol=1e-12)
        assert int(model.drop.rngs.count[...]) == int(ref.drop.rngs.count[...]) == k + 1
    np.testing.assert_allclose(flat_params(model), flat_params(ref), rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.bn.mean[...], ref.bn.mean[...], rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.bn.var[...], ref.bn.var[...], rtol=0, atol=1e-12)
    assert not np.allclose(model.bn.var[...], 1.0)


def test_fit_advances_rng_once_per_update():
    model = NormDropMLP(nnx.Rngs(4))
    history = NNXLBFGSWrapper(model).fit(mse, X, Y, num_steps=7)
    assert int(model.drop.rngs.count[...]) == history.num_steps == 7


def test_fit_eval_mode_keeps_batch_stats_and_equals_raw():
    model = NormDropMLP(nnx.Rngs(5), train=False)
    before = nnx.as_pure(nnx.state(model, nnx.BatchStat))
    ref_v, _ = raw_lbfgs(NormDropMLP(nnx.Rngs(5), train=False), mse, 10, LBFGSConfig(gtol=0.0))
    NNXLBFGSWrapper(model, LBFGSConfig(gtol=0.0)).fit(mse, X, Y, num_steps=10)
    after = nnx.as_pure(nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    np.testing.assert_allclose(flat_params(model), ref_v, rtol=0, atol=1e-10)


def test_create_nnx_lbfgs_optimizer_matches_raw():
    ref_v, _ = raw_lbfgs(MLP(nnx.Rngs(6)), mse, 5, LBFGSConfig())
    model = MLP(nnx.Rngs(6))
    optimizer = create_nnx_lbfgs_optimizer(model)
    assert isinstance(optimizer, nnx.Optimizer)
    for _ in range(5):
        nnx_train_step(model, optimizer, X, Y)
    np.testing.assert_allclose(flat_params(model), ref_v, rtol=0, atol=1e-10)


def test_create_nnx_lbfgs_optimizer_with_hybrid_config():
    cfg = HybridOptimizerConfig(switch_criterion="step", switch_step=3, adam_learning_rate=0.01)
    model = MLP(nnx.Rngs(6))
    optimizer = create_nnx_lbfgs_optimizer(model, cfg)
    losses = [float(nnx_train_step(model, optimizer, X, Y)) for _ in range(8)]
    state = optimizer.opt_state
    assert int(state.switch_step_taken[...]) == 3 and int(state.phase[...]) == 1
    assert losses[-1] < 0.5 * losses[3]


def test_hybrid_config_through_wrapper():
    cfg = HybridOptimizerConfig(
        switch_criterion="step",
        switch_step=10,
        adam_learning_rate=0.01,
        lbfgs=LBFGSConfig(gtol=0.0),
    )
    # Asymmetric data: Adam's g / sqrt(g^2) amplifies roundoff in gradients that vanish by
    # symmetry, which would make two evaluation orders differ visibly.
    x, y = X + 0.5, jnp.sin(X + 0.5) + 0.3
    model = MLP(nnx.Rngs(7))
    adam_model = MLP(nnx.Rngs(7))
    history = NNXLBFGSWrapper(model, cfg).fit(mse, x, y, num_steps=30)
    assert history.switch_step == 10 and history.num_steps == 30
    # The Adam phase is plain optax.adam.
    optimizer = nnx.Optimizer(adam_model, optax.adam(0.01), wrt=nnx.Param)
    adam_losses = []
    for _ in range(10):
        loss, grads = nnx.value_and_grad(mse)(adam_model, x, y)
        optimizer.update(adam_model, grads)
        adam_losses.append(float(loss))
    np.testing.assert_allclose(history.losses[:10], adam_losses, rtol=1e-10)
    assert history.losses[-1] < 0.5 * history.losses[10]


def test_float32_model():
    model = MLP(nnx.Rngs(8), dtype=jnp.float32)
    x32, y32 = X.astype(jnp.float32), Y.astype(jnp.float32)
    history = NNXLBFGSWrapper(model, LBFGSConfig(gtol=1e-5)).fit(mse, x32, y32, num_steps=100)
    assert model.l1.kernel[...].dtype == jnp.float32
    assert history.status in (Status.CONVERGED, Status.MAX_STEPS)
    assert history.losses[-1] < 0.05 * history.losses[0]


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match=r"nnx\.Module"):
        NNXLBFGSWrapper(lambda x: x)
    with pytest.raises(TypeError, match="LBFGSConfig or a HybridOptimizerConfig"):
        NNXLBFGSWrapper(MLP(nnx.Rngs(0)), {"memory_size": 3})
    with pytest.raises(TypeError, match="LBFGSConfig or a HybridOptimizerConfig"):
        create_nnx_lbfgs_optimizer(MLP(nnx.Rngs(0)), "lbfgs")
    with pytest.raises(ValueError, match=r"no nnx\.Param"):
        NNXLBFGSWrapper(nnx.Dropout(0.5, rngs=nnx.Rngs(0)))
    wrapper = NNXLBFGSWrapper(MLP(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="num_steps"):
        wrapper.fit(mse, X, Y, num_steps=0)
    with pytest.raises(TypeError, match="callable"):
        wrapper.step("mse", X, Y)
    with pytest.raises(ValueError, match="scalar"):
        wrapper.step(lambda m, x, y: m(x) - y, X, Y)
