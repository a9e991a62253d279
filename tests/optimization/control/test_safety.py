"""CBF safety filter: closed forms, scipy on random QPs, HOCBF safety, gradients, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from opifex.optimization.control.safety import (
    ControlBarrierFunction,
    SafetyFilter,
    SafetyFilterConfig,
    cbf_filter,
    cbf_qp,
    discrete_cbf_constraint,
)

# A rotation field with two inputs of unequal authority, kept inside the unit disc.
G = np.array([[1.0, 0.0], [0.5, 2.0]])


def f_rot(x, args):
    return jnp.array([x[1], -x[0]])


def g_rot(x, args):
    return jnp.asarray(G)


def disc(x, args):
    return 1.0 - x @ x


def _disc_projection(x, u_nom, alpha, w):
    """The CBF-QP closed form, by hand: grad h = -2x, L_f h = 0 for the rotation."""
    grad = -2.0 * x
    a = grad @ G
    b = -(grad @ np.array([x[1], -x[0]]) + alpha * (1.0 - x @ x))
    gap = max(0.0, b - a @ u_nom)
    return u_nom + gap / (a @ (a / w)) * (a / w)


def test_single_barrier_equals_closed_form_projection_and_inactive_returns_u_nom():
    w = np.array([1.0, 3.0])
    safe = SafetyFilter(
        dynamics=(f_rot, g_rot),
        barriers=[ControlBarrierFunction(h=disc, alpha=2.0)],
        control_weight=w,
    )
    run = jax.jit(safe.filter_with_info)
    x = np.array([0.6, -0.5])
    u_out = np.array([3.0, -1.0])  # pushes outward: the barrier is active
    u, info = run(x, u_out)
    np.testing.assert_allclose(u, _disc_projection(x, u_out, 2.0, w), rtol=1e-12)
    assert bool(info.feasible) and info.multipliers[0] > 0
    np.testing.assert_allclose(info.residual, 0.0, atol=1e-12)
    u_in = np.array([-0.5, 0.2])  # points inward: nothing to do
    u, info = run(x, u_in)
    np.testing.assert_array_equal(u, u_in)
    assert float(info.multipliers[0]) == 0.0 and float(info.residual[0]) > 0
    np.testing.assert_allclose(info.h, [1.0 - x @ x])
    a, b = np.array([[1.0, -2.0]]), np.array([1.0])  # eager closed form equals jitted
    np.testing.assert_allclose(cbf_qp(u_out, a, b)[0], jax.jit(cbf_qp)(u_out, a, b)[0])
    u32 = run(x.astype(np.float32), u_out.astype(np.float32))[0]
    assert u32.dtype == jnp.float32
    np.testing.assert_allclose(u32, _disc_projection(x, u_out, 2.0, w), rtol=1e-5)


def _random_qp(rng, n=3, m=3):
    A = rng.normal(size=(m, n))
    lo, hi = -rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    b = A @ rng.uniform(lo, hi) - rng.uniform(0.0, 0.5, m)  # a box point satisfies every row
    return rng.normal(size=n) * 3.0, A, b, lo, hi, rng.uniform(0.5, 2.0, n)


def _scipy_qp(u_nom, A, b, lo, hi, w):
    res = minimize(
        lambda u: 0.5 * np.sum(w * (u - u_nom) ** 2),
        np.clip(u_nom, lo, hi),
        jac=lambda u: w * (u - u_nom),
        bounds=list(zip(lo, hi, strict=True)),
        constraints=[{"type": "ineq", "fun": lambda u: A @ u - b, "jac": lambda u: A}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success
    return res.x


def test_multi_barrier_qp_matches_scipy_and_kkt_on_random_instances():
    rng = np.random.default_rng(3)
    solve = jax.jit(cbf_qp)
    for _ in range(8):
        u_nom, A, b, lo, hi, w = _random_qp(rng)
        u, info = solve(u_nom, A, b, lo, hi, w)
        np.testing.assert_allclose(u, _scipy_qp(u_nom, A, b, lo, hi, w), atol=1e-7)
        assert bool(info.feasible)
        lam = np.asarray(info.multipliers)
        # KKT: W (u - u_nom) - A' lam is the box multiplier, outward at active bounds only.
        r = w * (np.asarray(u) - u_nom) - A.T @ lam
        assert np.all(lam >= 0) and np.all(A @ u - b >= -1e-10)
        np.testing.assert_allclose(lam * (A @ u - b), 0.0, atol=1e-9)
        free = (u > lo + 1e-9) & (u < hi - 1e-9)
        np.testing.assert_allclose(r[free], 0.0, atol=1e-9)
        assert np.all(r[u <= lo + 1e-9] >= -1e-9) and np.all(r[u >= hi - 1e-9] <= 1e-9)


def test_infeasible_bounds_give_least_violating_control_and_flag_never_nan():
    a = np.array([[1.0, -2.0]])
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    u, info = jax.jit(cbf_qp)(np.array([0.3, 0.3]), a, np.array([5.0]), lo, hi)
    np.testing.assert_allclose(u, [1.0, -1.0])  # argmax of a u over the box: a u = 3 < 5
    assert not bool(info.feasible) and np.all(np.isfinite(info.multipliers))
    np.testing.assert_allclose(info.residual, [-2.0])


def test_slack_penalty_trades_off_conflicting_rows():
    # u >= 1 and -u >= 1 conflict; the relaxed optimum is 5 / (1 + 2 rho) for u_nom = 5.
    A, b, u_nom = np.array([[1.0], [-1.0]]), np.array([1.0, 1.0]), np.array([5.0])
    solve = jax.jit(cbf_qp)  # slack_penalty is traced: both values share one compile
    for rho in (3.0, 1e6):
        u, info = solve(u_nom, A, b, slack_penalty=rho)
        np.testing.assert_allclose(u, [5.0 / (1.0 + 2.0 * rho)], rtol=1e-10, atol=1e-9)
        assert not bool(info.feasible)


def test_config_fields_max_iter_and_feasibility_tol_change_the_result():
    lower, upper = -np.ones(1), np.ones(1)
    kwargs = dict(
        dynamics=(lambda x, a: jnp.zeros(1), lambda x, a: jnp.ones((1, 1))),
        barriers=[ControlBarrierFunction(h=lambda x, a: 1.0 - x[0])],
        input_bounds=(lower, upper),
    )
    x, u_nom = np.array([1.5]), np.array([0.5])  # needs u <= -0.5
    run = jax.jit(SafetyFilter(**kwargs).filter_with_info)
    u, info = run(x, u_nom)
    np.testing.assert_allclose(u, [-0.5], atol=1e-12)
    assert bool(info.feasible)
    lazy = SafetyFilter(**kwargs, config=SafetyFilterConfig(max_iter=0))
    u, info = jax.jit(lazy.filter_with_info)(x, u_nom)  # no dual step: the clipped nominal control
    np.testing.assert_allclose(u, u_nom)
    assert not bool(info.feasible)
    x_bad = np.array([2.5])  # needs u <= -1.5, below the bound
    _, info = run(x_bad, u_nom)
    assert not bool(info.feasible)
    loose = SafetyFilter(**kwargs, config=SafetyFilterConfig(feasibility_tol=1.0))
    assert bool(jax.jit(loose.filter_with_info)(x_bad, u_nom)[1].feasible)


def _double_integrator():
    f = lambda x, args: jnp.array([x[1], 0.0])  # noqa: E731
    g = lambda x, args: jnp.array([[0.0], [1.0]])  # noqa: E731
    wall = ControlBarrierFunction(
        h=lambda x, args: args - x[0], alpha=2.0, relative_degree=2, alpha2=3.0
    )
    return SafetyFilter(dynamics=(f, g), barriers=[wall]), f, g


def _closed_loop(policy, f, g, x0s, args, dt=0.01, steps=400):
    def field(x):
        return f(x, args) + g(x, args) @ policy(x)

    def step(x, _):
        k1 = field(x)
        k2 = field(x + 0.5 * dt * k1)
        k3 = field(x + 0.5 * dt * k2)
        k4 = field(x + dt * k3)
        x = x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x, x

    one = lambda x0: jax.lax.scan(step, x0, None, length=steps)[1]  # noqa: E731
    return jax.jit(jax.vmap(one))(x0s)


def test_hocbf_keeps_relative_degree_two_system_safe():
    safe, f, g = _double_integrator()
    push = jnp.array([2.0])
    x0s = np.array([[0.0, 0.0], [0.5, 0.8], [-1.0, 1.5]])  # h >= 0 and psi_1 >= 0
    filtered = _closed_loop(lambda x: safe.filter(x, push, 1.0), f, g, x0s, 1.0)
    nominal = _closed_loop(lambda x: push, f, g, x0s, 1.0)
    assert float(jnp.min(1.0 - filtered[..., 0])) >= -1e-6
    assert np.all(np.min(1.0 - nominal[..., 0], axis=1) < -1.0)  # the nominal control crashes
    assert np.all(filtered[:, -1, 0] > 0.95)  # and the filter is not needlessly timid


def _central(fn, z, eps=1e-6):
    cols = []
    for i in range(z.size):
        e = np.zeros_like(z)
        e[i] = eps
        cols.append((np.asarray(fn(z + e)) - np.asarray(fn(z - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("bounded", [False, True])
def test_gradients_match_central_differences(bounded):
    barriers = [ControlBarrierFunction(h=disc, alpha=2.0)]
    bounds = None
    if bounded:  # the QP path: a second barrier and input bounds, one of them active
        barriers.append(ControlBarrierFunction(h=lambda x, a: x[0] + 0.9, alpha=1.0))
        bounds = (np.array([-4.0, -0.4]), np.array([4.0, 4.0]))
    safe = SafetyFilter(dynamics=(f_rot, g_rot), barriers=barriers, input_bounds=bounds)
    z = np.array([0.6, -0.5, 3.0, -1.0])  # (x, u_nom)

    def with_info(z):
        u, info = safe.filter_with_info(z[:2], z[2:])
        return u, (u, info)

    # One compile serves the Jacobian and the values the differences are taken of.
    run = jax.jit(jax.jacfwd(with_info, has_aux=True))
    jac, (_, info) = run(z)
    assert bool(info.feasible) and float(info.multipliers[0]) > 1e-3
    if bounded:
        assert float(info.multipliers[1]) == 0.0
    np.testing.assert_allclose(jac, _central(lambda z: run(z)[1][0], z), atol=1e-6)


def test_vmap_equals_loop_and_no_retrace():
    traces = []

    def f_counted(x, args):
        traces.append(1)
        return f_rot(x, args)

    safe = SafetyFilter(
        dynamics=(f_counted, g_rot),
        barriers=[ControlBarrierFunction(h=disc, alpha=2.0)],
        input_bounds=(-2.0, 2.0),
    )
    rng = np.random.default_rng(0)
    xs = rng.uniform(-0.7, 0.7, (6, 2))
    us = rng.normal(size=(6, 2)) * 3.0
    batched = jax.jit(jax.vmap(safe.filter))(xs, us)
    one = jax.jit(safe.filter)
    looped = np.stack([one(x, u) for x, u in zip(xs, us, strict=True)])
    np.testing.assert_allclose(batched, looped, atol=1e-12)
    count = len(traces)
    one(xs[1] + 0.1, us[1])
    assert len(traces) == count  # same shapes: no new trace


def test_bad_input_raises_clear_errors_before_compilation():
    f, g = f_rot, g_rot
    cbf = ControlBarrierFunction(h=disc)
    x, u = np.zeros(2), np.zeros(2)
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        ControlBarrierFunction(h=disc, alpha=0.0)
    with pytest.raises(ValueError, match="alpha2"):
        ControlBarrierFunction(h=disc, alpha2=-1.0, relative_degree=2)
    with pytest.raises(ValueError, match="relative_degree must be 1 or 2"):
        ControlBarrierFunction(h=disc, relative_degree=3)
    with pytest.raises(ValueError, match="lower > upper"):
        SafetyFilter(dynamics=(f, g), barriers=[cbf], input_bounds=(np.ones(2), np.zeros(2)))
    with pytest.raises(ValueError, match="control_weight must be positive"):
        SafetyFilter(dynamics=(f, g), barriers=[cbf], control_weight=np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one"):
        SafetyFilter(dynamics=(f, g), barriers=[])
    with pytest.raises(ValueError, match="max_iter must be an int >= 0"):
        SafetyFilterConfig(max_iter=-1)
    safe = SafetyFilter(dynamics=(f, g), barriers=cbf)
    with pytest.raises(ValueError, match="x must be a vector"):
        jax.jit(safe.filter)(np.zeros((3, 2)), u)
    with pytest.raises(ValueError, match=r"g\(x, args\) must have shape \(n_x, n_u\) = \(2, 3\)"):
        jax.jit(safe.filter)(x, np.zeros(3))
    with pytest.raises(ValueError, match="must return a scalar"):
        cbf_filter(x, u, dynamics=(f, g), barriers=[ControlBarrierFunction(h=lambda x, a: x)])
    with pytest.raises(ValueError, match=r"f\(x, args\) must have shape \(2,\)"):
        cbf_filter(x, u, dynamics=(lambda x, a: x[:1], g), barriers=[cbf])
    with pytest.raises(ValueError, match="input bound lower must be a scalar or"):
        cbf_filter(x, u, dynamics=(f, g), barriers=[cbf], input_bounds=(np.zeros(3), None))
    with pytest.raises(ValueError, match=r"gamma must be a number in \(0, 1\]"):
        discrete_cbf_constraint(disc, 0.0)


def test_discrete_cbf_constraint_value_and_gradient():
    c = discrete_cbf_constraint(disc, gamma=0.25)
    x, x_next = jnp.array([0.3, 0.4]), jnp.array([0.5, 0.5])
    np.testing.assert_allclose(c(x, x_next), (1 - 0.5) - 0.75 * (1 - 0.25))
    np.testing.assert_allclose(jax.grad(c, argnums=1)(x, x_next), -2.0 * x_next)
    np.testing.assert_allclose(jax.grad(c)(x, x_next), 0.75 * 2.0 * x)
