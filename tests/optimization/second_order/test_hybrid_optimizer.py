"""Adam -> L-BFGS: the switch tests, both phases against references, compile-once, config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from opifex.optimization.core import Status
from opifex.optimization.second_order import (
    HybridOptimizer,
    HybridOptimizerConfig,
    LBFGSConfig,
    create_lbfgs_optimizer,
)
from opifex.optimization.second_order._hybrid import hybrid_adam_lbfgs, push_history, should_switch


def rosen(x, a=1.0):
    return (a - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def quad(x, args):
    a, b = args
    return 0.5 * x @ a @ x - b @ x


def spd_problem(n=6, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    a = m @ m.T + n * np.eye(n)
    b = rng.normal(size=n)
    return jnp.asarray(a), jnp.asarray(b), np.linalg.solve(a, b)


def make_train_step(tx, f, counter=None):
    """A jitted training step: evaluate f, update, apply."""

    def traced_f(x):
        if counter is not None:
            counter[0] += 1
        return f(x)

    @jax.jit
    def train_step(x, state):
        value, grad = jax.value_and_grad(traced_f)(x)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=traced_f)
        return optax.apply_updates(x, updates), state, value

    return train_step


def run(tx, f, x, steps):
    step = make_train_step(tx, f)
    state = tx.init(x)
    xs = [x]
    for _ in range(steps):
        x, state, _ = step(x, state)
        xs.append(x)
    return np.stack(xs), state


def switch_on_sequence(tx, values, grad_norms):
    """Feed a synthetic loss/gradient-norm sequence; return the switch step taken."""
    f = lambda x: jnp.sum(x**2)  # noqa: E731

    @jax.jit
    def feed(x, state, value, gnorm):
        grad = jnp.full_like(x, gnorm / jnp.sqrt(x.size))
        _, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return state

    x = jnp.ones(4)
    state = tx.init(x)
    for v, g in zip(values, grad_norms, strict=True):
        state = feed(x, state, v, g)
        if int(state.phase) == 1:
            break
    return int(state.switch_step_taken)


def replay(values, grad_norms, **fields):
    """The transform's own switch rule on a synthetic sequence, without compiling L-BFGS."""
    cfg = HybridOptimizerConfig(**fields).to_kwargs()
    w = cfg.pop("plateau_window")
    for name in ("adam_learning_rate", "adam_b1", "adam_b2", "adam_eps", "lbfgs"):
        cfg.pop(name)
    losses, norms = jnp.zeros(w + 1), jnp.zeros(w)
    for k, (v, g) in enumerate(zip(values, grad_norms, strict=True)):
        losses, norms = push_history(losses, norms, k, v, g)
        if should_switch(k, losses, norms, **cfg):
            return k
    return -1


def plateau_sequence(n=60, flat_from=30):
    return [1.0 / (min(k, flat_from) + 1) for k in range(n)]


def alternating_norms(n=60, settle_at=20):
    return [1.0 if (k >= settle_at or k % 2 == 0) else 3.0 for k in range(n)]


# -- the switch --------------------------------------------------------------------------


def test_step_criterion_switches_at_switch_step_and_matches_adam_before():
    a, b, _ = spd_problem()
    f = lambda x: quad(x, (a, b))  # noqa: E731
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=7, adam_learning_rate=0.05)
    x0 = jnp.zeros(6)
    xs, state = run(tx, f, x0, 10)
    ref, _ = run(optax.adam(0.05), f, x0, 7)
    np.testing.assert_allclose(xs[:8], ref, rtol=0, atol=1e-15)
    assert int(state.switch_step_taken) == 7
    assert int(state.phase) == 1
    # Update 7 is an L-BFGS step: it leaves Adam's trajectory.
    adam10, _ = run(optax.adam(0.05), f, x0, 8)
    assert np.max(np.abs(xs[8] - adam10[8])) > 1e-3


def test_step_criterion_phase_before_switch_is_adam():
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=7)
    _, state = run(tx, lambda x: jnp.sum(x**2), jnp.ones(3), 7)
    assert int(state.phase) == 0 and int(state.switch_step_taken) == -1


def test_plateau_switches_when_loss_flattens():
    # Loss 1/(k+1) until k = 30, constant after: over a window of 5 the relative
    # improvement first drops below 1e-3 at k = 35 (1/31 vs 1/31); at k = 34 it is 1/31.
    tx = hybrid_adam_lbfgs(
        switch_criterion="plateau", plateau_window=5, plateau_threshold=1e-3, min_adam_steps=0
    )
    assert switch_on_sequence(tx, plateau_sequence(), [1.0] * 60) == 35


def test_plateau_not_before_min_adam_steps():
    flat = [1.0] * 40
    tx = hybrid_adam_lbfgs(switch_criterion="plateau", plateau_window=5, min_adam_steps=0)
    assert switch_on_sequence(tx, flat, [1.0] * 40) == 5  # window full at k = 5
    tx = hybrid_adam_lbfgs(switch_criterion="plateau", plateau_window=5, min_adam_steps=12)
    assert switch_on_sequence(tx, flat, [1.0] * 40) == 12


def test_plateau_forced_by_switch_step():
    tx = hybrid_adam_lbfgs(switch_criterion="plateau", plateau_window=5, switch_step=20)
    # Always improving by 10% per step: never a plateau, so the forced switch decides.
    values = [0.9**k for k in range(40)]
    assert switch_on_sequence(tx, values, [1.0] * 40) == 20


def test_gradient_variance_switches_when_norms_settle():
    # Norms alternate 1, 3 (CV 0.5) until k = 20, then stay 1: with a window of 4 the CV
    # is first 0 at k = 23; at k = 22 the window still holds a 3 (CV 0.58).
    tx = hybrid_adam_lbfgs(
        switch_criterion="gradient_variance",
        plateau_window=4,
        gradient_variance_threshold=0.1,
        min_adam_steps=0,
    )
    assert switch_on_sequence(tx, [1.0] * 60, alternating_norms()) == 23


def test_plateau_on_a_real_problem_then_lbfgs_reaches_minimum():
    a, b, x_star = spd_problem()
    cfg = HybridOptimizerConfig(
        adam_learning_rate=0.05,
        switch_criterion="plateau",
        plateau_window=10,
        plateau_threshold=1e-2,
        min_adam_steps=20,
        switch_step=500,
    )
    res = HybridOptimizer(cfg).optimize(quad, jnp.zeros(6), (a, b), num_steps=800)
    assert 20 <= res.switch_step < 500
    losses = res.losses
    w = 10
    k = res.switch_step
    # At the switch the window's relative improvement is below the threshold...
    assert (losses[k - w] - losses[k]) / abs(losses[k - w]) < 1e-2
    # ...and it was not one step earlier (unless min_adam_steps was binding).
    if k > 20:
        assert (losses[k - 1 - w] - losses[k - 1]) / abs(losses[k - 1 - w]) >= 1e-2
    np.testing.assert_allclose(res.params, x_star, rtol=0, atol=1e-8)
    assert res.status == Status.CONVERGED


def test_reaches_rosenbrock_minimum_after_switch():
    cfg = HybridOptimizerConfig(switch_criterion="step", switch_step=30, adam_learning_rate=0.01)
    res = HybridOptimizer(cfg).optimize(rosen, jnp.array([-1.2, 1.0]), 1.0, num_steps=300)
    assert res.switch_step == 30
    assert res.status == Status.CONVERGED
    np.testing.assert_allclose(res.params, [1.0, 1.0], rtol=0, atol=1e-7)
    assert res.value < 1e-14
    assert len(res.losses) == res.num_steps + 1 and res.losses[-1] == pytest.approx(res.value)


def test_compiles_once_across_the_switch():
    counter = [0]
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=5, adam_learning_rate=0.01)
    step = make_train_step(tx, rosen, counter)
    x, state = jnp.array([-1.2, 1.0]), tx.init(jnp.array([-1.2, 1.0]))
    x, state, _ = step(x, state)
    traces = counter[0]
    assert traces >= 1
    for _ in range(40):
        x, state, _ = step(x, state)
    assert counter[0] == traces
    assert int(state.switch_step_taken) == 5
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-6)


def test_value_and_grad_from_state_reuses_line_search():
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=3, adam_learning_rate=0.01)
    value_and_grad = optax.value_and_grad_from_state(rosen)
    x = jnp.array([-1.2, 1.0])
    state = tx.init(x)

    @jax.jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        ref = jax.value_and_grad(rosen)(x)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=rosen)
        return optax.apply_updates(x, updates), state, (value, grad), ref

    for _ in range(12):
        x, state, got, ref = step(x, state)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-10, atol=1e-12)
    assert int(state.phase) == 1


def test_lbfgs_phase_matches_plain_lbfgs_from_the_switch_point():
    a, b, _ = spd_problem()
    f = lambda x: quad(x, (a, b))  # noqa: E731
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=4, adam_learning_rate=0.05)
    xs, _ = run(tx, f, jnp.zeros(6), 8)
    ref, _ = run(create_lbfgs_optimizer(LBFGSConfig()), f, jnp.asarray(xs[4]), 4)
    np.testing.assert_allclose(xs[4:], ref, rtol=0, atol=1e-12)


def test_jit_equals_no_jit():
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=1, adam_learning_rate=0.01)
    x = jnp.array([-1.2, 1.0])
    jitted, _ = run(tx, rosen, x, 2)
    state = tx.init(x)
    for k in range(2):
        value, grad = jax.value_and_grad(rosen)(x)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=rosen)
        x = optax.apply_updates(x, updates)
        np.testing.assert_allclose(x, jitted[k + 1], rtol=1e-12, atol=1e-14)


def test_float32_keeps_dtype_and_converges():
    a, b, x_star = spd_problem()
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    cfg = HybridOptimizerConfig(
        switch_criterion="step", switch_step=10, lbfgs=LBFGSConfig(gtol=1e-4)
    )
    opt = HybridOptimizer(cfg)
    res = opt.optimize(quad, jnp.zeros(6, jnp.float32), (a32, b32), num_steps=100)
    assert res.params.dtype == jnp.float32
    assert res.state.losses.dtype == jnp.float32
    np.testing.assert_allclose(res.params, x_star, atol=1e-4)


def test_nan_objective_gives_nonfinite_and_last_finite_iterate():
    # Adam moves x[0] up by about the learning rate per step, into the NaN region x[0] > 0.5.
    f = lambda x, a: jnp.where(x[0] > 0.5, jnp.nan, jnp.sum((x - 1.0) ** 2))  # noqa: E731
    cfg = HybridOptimizerConfig(switch_criterion="step", switch_step=100, adam_learning_rate=0.1)
    res = HybridOptimizer(cfg).optimize(f, jnp.zeros(2), None, num_steps=20)
    assert res.status == Status.NONFINITE
    assert 0.3 < float(res.params[0]) <= 0.5
    assert res.value == pytest.approx(float(f(res.params, None)))
    assert res.value == pytest.approx(res.losses[-1])


def test_tiny_budget_gives_max_steps():
    cfg = HybridOptimizerConfig(switch_criterion="step", switch_step=1)
    res = HybridOptimizer(cfg).optimize(rosen, jnp.array([-1.2, 1.0]), 1.0, num_steps=3)
    assert res.status == Status.MAX_STEPS and res.num_steps == 3 and len(res.losses) == 4
    assert res.value == pytest.approx(float(rosen(res.params)))


def test_init_and_update_delegate_to_transform():
    opt = HybridOptimizer(HybridOptimizerConfig(switch_criterion="step", switch_step=0))
    x = jnp.array([-1.2, 1.0])
    value, grad = jax.value_and_grad(rosen)(x)
    updates, state = opt.update(grad, opt.init(x), x, value=value, grad=grad, value_fn=rosen)
    ref, ref_state = opt.transform.update(
        grad, opt.transform.init(x), x, value=value, grad=grad, value_fn=rosen
    )
    np.testing.assert_allclose(updates, ref)
    assert int(state.phase) == int(ref_state.phase) == 1


# -- one test per config field -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("adam_learning_rate", 0.02), ("adam_b1", 0.5), ("adam_b2", 0.9), ("adam_eps", 1.0)],
)
def test_adam_fields_match_optax_adam(field, value):
    a, b, _ = spd_problem()
    f = lambda x: quad(x, (a, b))  # noqa: E731
    x0 = jnp.full(6, 0.1)
    names = {
        "adam_learning_rate": "learning_rate",
        "adam_b1": "b1",
        "adam_b2": "b2",
        "adam_eps": "eps",
    }
    kw = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, names[field]: value}
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=5, **{field: value})
    xs, _ = run(tx, f, x0, 5)
    ref, _ = run(optax.adam(**kw), f, x0, 5)
    default, _ = run(optax.adam(1e-3), f, x0, 5)
    np.testing.assert_allclose(xs, ref, rtol=0, atol=1e-15)
    assert np.max(np.abs(xs - default)) > 1e-6


def test_switch_criterion_changes_switch():
    values, norms = plateau_sequence(), alternating_norms()
    got = {
        c: replay(
            values, norms, switch_criterion=c, switch_step=50, plateau_window=4, min_adam_steps=0
        )
        for c in ("step", "plateau", "gradient_variance")
    }
    assert got == {"step": 50, "plateau": 34, "gradient_variance": 23}


def test_switch_step_changes_switch():
    tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=3)
    assert switch_on_sequence(tx, [1.0] * 20, [1.0] * 20) == 3
    for s in (3, 9):
        assert replay([1.0] * 20, [1.0] * 20, switch_criterion="step", switch_step=s) == s


def test_plateau_window_changes_switch():
    got = [replay([1.0] * 30, [1.0] * 30, plateau_window=w, min_adam_steps=0) for w in (3, 8)]
    assert got == [3, 8]


def test_plateau_threshold_changes_switch():
    # Relative improvement over 5 steps of 0.99**k is 1 - 0.99**5 = 0.049.
    values = [0.99**k for k in range(40)]
    got = [
        replay(
            values,
            [1.0] * 40,
            plateau_window=5,
            plateau_threshold=t,
            min_adam_steps=0,
            switch_step=30,
        )
        for t in (0.01, 0.05)
    ]
    assert got == [30, 5]


def test_gradient_variance_threshold_changes_switch():
    got = [
        replay(
            [1.0] * 60,
            alternating_norms(),
            switch_criterion="gradient_variance",
            plateau_window=4,
            gradient_variance_threshold=t,
            min_adam_steps=0,
        )
        for t in (0.1, 0.6)
    ]
    assert got == [23, 3]  # CV of (1, 3, 1, 3) is 0.5


def test_min_adam_steps_changes_switch():
    got = [replay([1.0] * 20, [1.0] * 20, plateau_window=2, min_adam_steps=m) for m in (0, 7)]
    assert got == [2, 7]


def test_lbfgs_config_changes_lbfgs_phase():
    a, b, _ = spd_problem(n=8)
    f = lambda x: quad(x, (a, b))  # noqa: E731

    def final(lbfgs):
        tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=2, lbfgs=lbfgs)
        return run(tx, f, jnp.zeros(8), 6)[0]

    base, small = final(LBFGSConfig()), final(LBFGSConfig(memory_size=1))
    np.testing.assert_allclose(base[:3], small[:3], atol=1e-15)  # Adam phase unaffected
    assert np.max(np.abs(base[-1] - small[-1])) > 1e-8


def test_factory_defaults_match_config():
    import inspect

    sig = inspect.signature(hybrid_adam_lbfgs).parameters
    for name, v in HybridOptimizerConfig().to_kwargs().items():
        if name != "lbfgs":
            assert sig[name].default == v, name


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"switch_criterion": "never"}, "switch_criterion"),
        ({"plateau_window": 0}, "plateau_window"),
        ({"switch_step": -1}, "switch_step"),
        ({"adam_b1": 1.0}, "adam_b1"),
        ({"adam_learning_rate": 0.0}, "adam_learning_rate"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HybridOptimizerConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        hybrid_adam_lbfgs(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="HybridOptimizerConfig"):
        HybridOptimizer(LBFGSConfig())
    opt = HybridOptimizer()
    with pytest.raises(ValueError, match="num_steps"):
        opt.optimize(rosen, jnp.zeros(2), 1.0, num_steps=0)
    with pytest.raises(ValueError, match="scalar"):
        opt.optimize(lambda x, a: x * a, jnp.zeros(2), 1.0, num_steps=3)
    with pytest.raises(TypeError, match="callable"):
        opt.optimize("rosen", jnp.zeros(2), 1.0, num_steps=3)
    state = opt.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="params"):
        opt.update(jnp.zeros(2), state, None, value=0.0, value_fn=rosen)
