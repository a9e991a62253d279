"""Dense (self-scaled) BFGS on the core solver protocol."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.problems import problems

from opifex.optimization.core import Status, solve
from opifex.optimization.second_order import BFGSConfig, create_bfgs_solver
from opifex.optimization.second_order._bfgs import _update, bfgs_solver

PROBLEMS = {p.name: p for p in problems()}
rosenbrock = PROBLEMS["rosenbrock"].objective


def quadratic(x, data):
    a, b = data
    return 0.5 * x @ a @ x - b @ x


def _spd(n, seed=0, cond=10.0):
    """Random SPD matrix with distinct eigenvalues in [1, cond] and a random vector."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q @ np.diag(np.linspace(1.0, cond, n)) @ q.T, rng.normal(size=n)


@pytest.mark.parametrize("self_scaling", [True, False])
@pytest.mark.parametrize("name", ["rosenbrock", "beale", "spd_quadratic"])
def test_reference_minimisers(name, self_scaling):
    p = PROBLEMS[name]
    solver = bfgs_solver(p.objective, self_scaling=self_scaling, gtol=1e-10)
    sol = solve(solver, jnp.asarray(p.x0), jax.tree.map(jnp.asarray, p.args))
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, p.x_star, atol=1e-9, rtol=0)
    assert float(sol.value) < 1e-20
    assert float(jnp.max(jnp.abs(sol.state.grad))) <= 1e-10


def test_quadratic_termination_recovers_inverse_hessian():
    # With exact line searches, plain BFGS on a quadratic has the hereditary property
    # H_k y_j = s_j (j < k), so after n steps along n conjugate directions H_n = A^-1 and
    # x_n = A^-1 b (quadratic termination of the Broyden class, Nocedal & Wright, Sec. 6.3). On a
    # quadratic the cubic interpolation of the zoom is exact, so c2 = 1e-9 makes each line
    # search exact to rounding. The first step is along -g, which the rescaled H_0 = gamma I
    # also gives, so the theorem applies from the start.
    n = 5
    a, b = _spd(n)
    args = (jnp.asarray(a), jnp.asarray(b))
    solver = bfgs_solver(quadratic, self_scaling=False, c1=1e-10, c2=1e-9, gtol=0.0)
    sol = solve(solver, jnp.zeros(n), args, max_steps=n)
    assert int(sol.status) == Status.MAX_STEPS and int(sol.num_steps) == n
    h = np.asarray(sol.state.inverse_hessian)
    np.testing.assert_allclose(h @ a, np.eye(n), atol=1e-9)
    np.testing.assert_allclose(sol.params, np.linalg.solve(a, b), atol=1e-8)
    np.testing.assert_allclose(h, h.T, atol=1e-12)

    # Self-scaling multiplies the earlier pairs' part of H by 1/tau >= 1, so the hereditary
    # property becomes H_n A s_j = c_j s_j with c_j >= 1 and c_{n-1} = 1 (the secant equation
    # of the last pair always holds): every eigenvalue of H_n A is >= 1, the smallest is 1.
    scaled = bfgs_solver(quadratic, self_scaling=True, c1=1e-10, c2=1e-9, gtol=0.0)
    sol = solve(scaled, jnp.zeros(n), args, max_steps=n)
    eig = np.sort(np.linalg.eigvals(np.asarray(sol.state.inverse_hessian) @ a).real)
    assert eig[0] == pytest.approx(1.0, abs=1e-8)
    assert np.all(eig >= 1.0 - 1e-8)
    np.testing.assert_allclose(sol.params, np.linalg.solve(a, b), atol=1e-8)


def _self_scaled_update(h, s, y, g, a, self_scaling):
    """H+ = (1/tau)[H - Hyy'H/y'Hy + (y'Hy) v v'] + ss'/s'y, v = s/s'y - Hy/y'Hy,
    tau = min(1, s'y / (-a s'g)) (Al-Baali 1998), written out in numpy."""
    sy = s @ y
    hy = h @ y
    yhy = y @ hy
    v = s / sy - hy / yhy
    tau = min(1.0, sy / (-a * (s @ g))) if self_scaling else 1.0
    return (h - np.outer(hy, hy) / yhy + yhy * np.outer(v, v)) / tau + np.outer(s, s) / sy, tau


def _hand_example(curvature):
    # s = -a H g, so -a s'g = s'H^-1 s = s'Bs; y = curvature * B s + noise sets s'y/s'Bs.
    rng = np.random.default_rng(7)
    n = 4
    m = rng.normal(size=(n, n))
    h = m @ m.T + np.eye(n)
    a = 0.5
    g = rng.normal(size=n)
    s = -a * h @ g
    y = curvature * np.linalg.solve(h, s) + 0.05 * rng.normal(size=n)
    return h, s, y, g, a


@pytest.mark.parametrize("curvature", [0.3, 3.0])
def test_update_matches_numpy_formula(curvature):
    h, s, y, g, a = _hand_example(curvature)
    expected, tau = _self_scaled_update(h, s, y, g, a, self_scaling=True)
    # curvature 0.3 gives tau ~ 0.3 (H enlarged); 3.0 gives tau = 1 (capped: plain BFGS).
    assert (tau < 0.5) if curvature < 1 else (tau == 1.0)
    got, ok = _update(*map(jnp.asarray, (h, s, y, g)), a, True, 1e-12)
    assert bool(ok)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got @ y, s, rtol=1e-10)  # secant equation H+ y = s
    assert np.all(np.linalg.eigvalsh(0.5 * (got + got.T)) > 0)

    # Without self-scaling: the textbook form (I - r s y') H (I - r y s') + r s s', r = 1/s'y
    # (Nocedal & Wright, eq. 6.17).
    plain, _ = _update(*map(jnp.asarray, (h, s, y, g)), a, False, 1e-12)
    r = 1.0 / (s @ y)
    v = np.eye(4) - r * np.outer(y, s)
    np.testing.assert_allclose(plain, v.T @ h @ v + r * np.outer(s, s), rtol=1e-12, atol=1e-12)
    if curvature > 1:
        np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-12)
    else:
        assert not np.allclose(got, plain)


def test_pair_without_curvature_is_skipped():
    h, s, _, g, a = _hand_example(0.3)
    h = jnp.asarray(h)
    # s'y < 0, and s'y > 0 but below curvature_eps ||s|| ||y||: H unchanged, ok False.
    for y_bad in (-jnp.asarray(s), jnp.asarray(s) + 1e3 * jnp.asarray([s[1], -s[0], 0.0, 0.0])):
        sy = float(jnp.vdot(jnp.asarray(s), y_bad))
        assert sy < 1e-2 * float(jnp.linalg.norm(s) * jnp.linalg.norm(y_bad))
        got, ok = _update(h, jnp.asarray(s), y_bad, jnp.asarray(g), a, True, 1e-2)
        assert not bool(ok)
        np.testing.assert_array_equal(got, h)

    # Through the solver: on a linear objective y = 0, so the pair is skipped and counted.
    solver = bfgs_solver(lambda x, a: jnp.sum(x), max_linesearch_steps=3)
    x = jnp.zeros(2)
    state = solver.init(x, None)
    h0 = state.inverse_hessian
    _, state = solver.step(x, state, None)
    assert int(state.num_skipped) == 1
    np.testing.assert_array_equal(state.inverse_hessian, h0)
    np.testing.assert_allclose(h0, np.eye(2) / np.sqrt(2.0))  # min(1, 1/||g||) I, ||g|| = 2^.5


def test_jit_equals_no_jit():
    # f* = 0, so gtol = 1e-10 is well above rounding and both runs stop on it, not on noise.
    def fn(x, a):
        e = x - 1.0
        return jnp.sum(e**2 + 0.1 * e**4) + e[0] * e[1]

    solver = bfgs_solver(fn, gtol=1e-10)
    x = jnp.array([2.0, -1.0])
    sol = solve(solver, x, max_steps=3)  # the first iterates: eager steps cost seconds each
    assert int(sol.status) == Status.MAX_STEPS
    with jax.disable_jit():
        state = solver.init(x, None)
        for _ in range(3):
            x, state = solver.step(x, state, None)
    assert int(state.count) == int(sol.num_steps) == 3
    assert int(state.num_fun_evals) == int(sol.state.num_fun_evals)
    np.testing.assert_allclose(x, sol.params, rtol=1e-12)
    np.testing.assert_allclose(state.inverse_hessian, sol.state.inverse_hessian, rtol=1e-10)


def test_grad_through_solve_matches_finite_differences():
    a, b = map(jnp.asarray, _spd(4, seed=3))

    def objective(x, bb):
        return 0.5 * x @ a @ x - bb @ x + 0.1 * jnp.sum(x**4)

    solver = bfgs_solver(objective, gtol=1e-12)

    def loss(bb):
        return jnp.sum(solve(solver, jnp.zeros(4), bb).params ** 2)

    grad = jax.grad(loss)(b)
    eps = 1e-3
    fd = [(loss(b.at[i].add(eps)) - loss(b.at[i].add(-eps))) / (2 * eps) for i in range(4)]
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)


def test_float32_kept_and_converges():
    sol = solve(bfgs_solver(rosenbrock, gtol=1e-4), jnp.array([-1.2, 1.0], jnp.float32), 1.0)
    assert int(sol.status) == Status.CONVERGED
    assert sol.params.dtype == jnp.float32 and sol.value.dtype == jnp.float32
    assert sol.state.inverse_hessian.dtype == jnp.float32
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-3)


def test_pytree_params_and_factory_matches_solver():
    a, b = _spd(6, seed=1)
    args = (jnp.asarray(a), jnp.asarray(b))

    def fn(p, data):
        return quadratic(jnp.concatenate([p["u"], p["v"].ravel()]), data)

    x0 = {"u": jnp.zeros(2), "v": jnp.zeros((2, 2))}
    sol = solve(create_bfgs_solver(fn, BFGSConfig(gtol=1e-10)), x0, args)
    assert int(sol.status) == Status.CONVERGED
    x_star = np.linalg.solve(a, b)
    np.testing.assert_allclose(sol.params["u"], x_star[:2], atol=1e-9)
    np.testing.assert_allclose(sol.params["v"], x_star[2:].reshape(2, 2), atol=1e-9)
    with pytest.raises(TypeError, match="BFGSConfig"):
        create_bfgs_solver(fn, {"gtol": 1e-10})


def test_non_scalar_objective_rejected_with_shape():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        bfgs_solver(lambda x, a: x**2).init(jnp.zeros(3), None)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_iterations": 0},
        {"gtol": -1.0},
        {"ftol": -1.0},
        {"self_scaling": 1},
        {"max_linesearch_steps": 0},
        {"c1": 0.0},
        {"c2": 1e-5},
        {"curvature_eps": -1.0},
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BFGSConfig(**bad)


def _run(**changes):
    config = BFGSConfig().replace(**changes)
    return solve(create_bfgs_solver(rosenbrock, config), jnp.array([-1.2, 1.0]), 1.0, max_steps=500)


@pytest.fixture(scope="module")
def baseline():
    return _run()


def _summary(sol):
    return (
        int(sol.status),
        int(sol.num_steps),
        int(sol.state.num_fun_evals),
        int(sol.state.num_skipped),
        float(sol.value),
    )


# Each config field changes the run on Rosenbrock (iterations, evaluations, status or result).
FIELD_CHANGES = {
    "max_iterations": 5,
    "gtol": 1e-3,
    "ftol": 1e-6,
    "self_scaling": False,
    "max_linesearch_steps": 1,
    "c1": 0.4,
    "c2": 0.1,
    "curvature_eps": 2.0,  # s'y > 2 ||s|| ||y|| never holds: every pair skipped
}


def test_every_config_field_is_covered():
    assert set(FIELD_CHANGES) == {f.name for f in dataclasses.fields(BFGSConfig)}


@pytest.mark.parametrize(("field", "value"), FIELD_CHANGES.items())
def test_config_field_changes_behaviour(baseline, field, value):
    assert int(baseline.status) == Status.CONVERGED
    changed = _run(**{field: value})
    assert _summary(changed) != _summary(baseline)
    if field == "max_iterations":
        assert int(changed.status) == Status.MAX_STEPS and int(changed.num_steps) == 5
    if field in ("gtol", "ftol"):
        assert int(changed.num_steps) < int(baseline.num_steps)
        assert int(changed.status) == Status.CONVERGED
    if field == "curvature_eps":
        assert int(changed.state.num_skipped) == int(changed.num_steps)
        assert int(baseline.state.num_skipped) == 0
