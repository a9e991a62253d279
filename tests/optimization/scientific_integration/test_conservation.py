"""Conservation laws: exact projection, drift checks against closed forms, the augmented
Lagrangian solver, soft penalties, and input validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization.core import Status, solve
from opifex.optimization.scientific_integration.conservation import (
    AugmentedLagrangianState,
    ConservationCheckResult,
    ConservationLaw,
    augmented_lagrangian_solver,
    penalty_loss,
)


def _linear_problem(m=3, n=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, n)), rng.normal(size=m), rng.normal(size=(5, n))


# ---------------------------------------------------------------- projection (hard enforcement)


def test_projection_is_exact_idempotent_and_the_closest_feasible_point():
    A, b, ys = _linear_problem()
    law = ConservationLaw.linear("linear", A, b)
    m, n = A.shape
    for y in ys:
        p = np.asarray(law.project(jnp.asarray(y)))
        np.testing.assert_allclose(A @ p, b, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(law.project(p)), p, rtol=0, atol=1e-12)
        # KKT system of min ||x - y||^2 s.t. A x = b.
        kkt = np.block([[np.eye(n), A.T], [A, np.zeros((m, m))]])
        closest = np.linalg.solve(kkt, np.concatenate([y, b]))[:n]
        np.testing.assert_allclose(p, closest, rtol=0, atol=1e-12)
        # The correction is the least-squares solution of A d = A y - b.
        d = np.linalg.lstsq(A, A @ y - b, rcond=None)[0]
        np.testing.assert_allclose(p, y - d, rtol=0, atol=1e-12)


def test_projection_batched_equals_loop_under_jit_and_vmap():
    A, b, ys = _linear_problem(seed=1)
    law = ConservationLaw.linear("linear", A, b)
    loop = np.stack([np.asarray(law.project(y)) for y in ys])
    np.testing.assert_allclose(np.asarray(law.project(ys)), loop, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(law.project))(ys)), loop, atol=1e-13)
    layer = jax.jit(law.projection_layer())
    np.testing.assert_allclose(np.asarray(layer(ys)), loop, rtol=0, atol=1e-13)
    assert law.project(ys.astype(np.float32)).dtype == jnp.float32


def test_gradient_through_projection_is_the_projector_matrix():
    A, b, ys = _linear_problem(seed=2)
    law = ConservationLaw.linear("linear", A, b)
    projector = np.eye(A.shape[1]) - A.T @ np.linalg.solve(A @ A.T, A)
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.jacfwd(law.project))(ys[0])), projector, atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.jacrev(law.project))(ys[1])), projector, atol=1e-12
    )
    # A loss on the projected output sees only the feasible directions of its gradient.
    target = jnp.asarray(ys[2])
    grad = jax.jit(jax.grad(lambda y: jnp.sum((law.project(y) - target) ** 2)))(ys[3])
    expected = projector @ (2.0 * (np.asarray(law.project(ys[3])) - ys[2]))
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-12)


def test_projection_stays_accurate_on_nearly_dependent_rows():
    # cond(A) ~ 4e6: the normal equations (A A')^{-1} lose ~cond^2 * eps ~ 1e-3 here.
    A = np.array([[1.0, 1.0, 0.0], [1.0, 1.0 + 1e-6, 0.0]])
    b = np.array([1.0, 2.0])
    p = np.asarray(ConservationLaw.linear("x", A, b).project(jnp.array([0.3, -2.0, 5.0])))
    np.testing.assert_allclose(A @ p, b, rtol=0, atol=1e-8)


def test_linear_violation_penalty_and_check():
    A = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, -1.0]])
    b = np.array([1.0, 0.0])
    law = ConservationLaw.linear("flux", A, b, tolerance=1e-3)
    y = jnp.array([1.0, 2.0, 0.5])
    r = A @ np.asarray(y) - b  # [2.0, 1.5]
    np.testing.assert_allclose(np.asarray(law.violation(y)), r, atol=1e-15)
    assert float(law.penalty(y, 3.0)) == pytest.approx(3.0 * np.mean(r**2), abs=1e-14)
    grad = jax.jit(jax.grad(lambda z: law.penalty(z, 3.0)))(y)
    np.testing.assert_allclose(np.asarray(grad), 3.0 * A.T @ r, atol=1e-14)  # 3 * 2/m * A'r

    batch = np.stack([np.asarray(y), np.asarray(law.project(y))])
    res = law.check(batch)
    assert res.kind == "linear" and res.series.shape == (2, 2)
    assert res.max_violation == pytest.approx(2.0, abs=1e-14)
    # Normwise backward error: ||A||_inf = 2, max|y| = 2, ||b||_inf = 1.
    assert res.relative_violation == pytest.approx(2.0 / (2.0 * 2.0 + 1.0), abs=1e-14)
    assert not res.passed and "exceeds tolerance" in str(res) and "2 samples" in str(res)
    feasible = law.check(batch[1])
    assert feasible.passed and feasible.max_violation <= 1e-14
    assert feasible.growth_rate is None and "within tolerance" in feasible.summary()


# ---------------------------------------------------------------- quantities along trajectories


def _harmonic_trajectory(step, dt=0.1, num_steps=1000):
    q, p = np.empty(num_steps + 1), np.empty(num_steps + 1)
    q[0], p[0] = 1.0, 0.0
    for k in range(num_steps):
        q[k + 1], p[k + 1] = step(q[k], p[k], dt)
    return {"q": jnp.asarray(q), "p": jnp.asarray(p)}


def _velocity_verlet(q, p, dt):
    p_half = p - 0.5 * dt * q
    q_new = q + dt * p_half
    return q_new, p_half - 0.5 * dt * q_new


def _explicit_euler(q, p, dt):
    return q + dt * p, p - dt * q


def _energy():
    return ConservationLaw.quantity(
        "energy", lambda s: 0.5 * (s["p"] ** 2 + s["q"] ** 2), tolerance=1e-2
    )


def test_symplectic_integrator_energy_drift_is_bounded():
    dt = 0.1
    traj = _harmonic_trajectory(_velocity_verlet, dt)
    res = _energy().check(traj)
    # Velocity Verlet conserves p^2/2 + (1 - dt^2/4) q^2/2 exactly, so with q0 = 1, p0 = 0
    # the energy error is dt^2/8 (q_n^2 - 1), bounded by dt^2/8 and never growing.
    bound = dt**2 / 8
    np.testing.assert_allclose(
        res.series, bound * (np.asarray(traj["q"]) ** 2 - 1.0), rtol=0, atol=1e-13
    )
    assert 0.99 * bound <= res.max_violation <= bound + 1e-15
    assert res.relative_violation == pytest.approx(res.max_violation / 0.5, rel=1e-12)
    assert res.num_steps == 1000 and res.passed
    assert abs(res.growth_rate) < 1e-6
    assert str(res).startswith("energy drift 1.2e-03 (relative 2.5e-03) over 1000 steps: within")


def test_explicit_euler_energy_grows_as_its_closed_form():
    dt, n = 0.1, np.arange(1001)
    res = _energy().check(_harmonic_trajectory(_explicit_euler, dt))
    # Explicit Euler multiplies q^2 + p^2 by (1 + dt^2) every step.
    drift = 0.5 * ((1.0 + dt**2) ** n - 1.0)
    np.testing.assert_allclose(res.series, drift, rtol=1e-10, atol=1e-15)
    assert res.max_violation == pytest.approx(drift[-1], rel=1e-10)
    assert not res.passed
    expected_slope = np.polyfit(n.astype(float), drift, 1)[0]
    assert res.growth_rate == pytest.approx(expected_slope, rel=1e-8) and res.growth_rate > 1.0
    assert "exceeds tolerance" in res.summary() and "growing" in res.summary()


def test_quantity_violation_is_differentiable_drift():
    law = ConservationLaw.quantity("mass", jnp.sum)
    traj = jnp.array([[1.0, 1.0], [1.0, 1.5], [0.5, 1.0]])
    np.testing.assert_allclose(np.asarray(law.violation(traj)), [0.0, 0.5, -0.5])
    grad = jax.jit(jax.grad(law.penalty))(traj)
    # penalty = mean over 3 steps of (sum(x_t) - sum(x_0))^2.
    d = np.array([0.0, 0.5, -0.5])
    expected = np.repeat((2.0 / 3.0) * d[:, None], 2, axis=1)
    expected[0] = -(2.0 / 3.0) * d.sum()
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-14)
    single = law.check(traj[:1])
    assert single.num_steps == 0 and single.max_violation == 0.0 and single.growth_rate == 0.0


# ---------------------------------------------------------------- residual constraints


def test_constraint_reports_max_abs_g():
    law = ConservationLaw.constraint("mass", lambda u: u.sum(axis=1) - 1.0, tolerance=0.1)
    u = jnp.array([[0.2, 0.8], [0.5, 0.3], [0.6, 0.45]])
    res = law.check(u)
    np.testing.assert_allclose(res.series, [0.0, -0.2, 0.05], atol=1e-15)
    assert res.max_violation == pytest.approx(0.2, abs=1e-15)
    assert res.relative_violation == res.max_violation and not res.passed
    assert res.summary() == (
        "mass constraint violation 2.0e-01 over 3 values: exceeds tolerance 1.0e-01"
    )
    assert float(law.penalty(u)) == pytest.approx((0.04 + 0.0025) / 3, abs=1e-15)
    assert ConservationLaw.constraint("mass", law.fn, tolerance=0.25).check(u).passed


def test_result_and_law_are_frozen():
    law = ConservationLaw.constraint("g", jnp.ravel)
    with pytest.raises(dataclasses.FrozenInstanceError):
        law.tolerance = 1.0  # type: ignore[misc]
    res = ConservationCheckResult(
        law="g", kind="constraint", max_violation=np.nan, relative_violation=np.nan,
        series=np.array([np.nan]), tolerance=1.0,
    )  # fmt: skip
    assert res.passed is False


# ---------------------------------------------------------------- augmented Lagrangian


def _sum_of_squares(x, args):
    return jnp.sum(x**2)


def _sum_constraint(x, target):
    return jnp.array([jnp.sum(x) - target])


# One solver object for the tests that share a problem, so its compilation is reused.
_LINEAR_AL = augmented_lagrangian_solver(_sum_of_squares, _sum_constraint)


def test_augmented_lagrangian_linear_constraint():
    sol = solve(_LINEAR_AL, jnp.zeros(2), 1.0)
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(np.asarray(sol.params), [0.5, 0.5], atol=1e-6)
    # grad f + J' lambda = 0 at (0.5, 0.5): 1 + lambda = 0.
    np.testing.assert_allclose(np.asarray(sol.state.multipliers), [-1.0], atol=1e-6)
    assert float(sol.state.constraint_norm) <= 1e-8
    assert isinstance(sol.state, AugmentedLagrangianState)


def test_augmented_lagrangian_nonfinite_constraint():
    sol = solve(_LINEAR_AL, jnp.zeros(2), float("nan"))
    assert int(sol.status) == Status.NONFINITE
    np.testing.assert_array_equal(np.asarray(sol.params), [0.0, 0.0])


def test_augmented_lagrangian_on_the_circle_by_hand():
    def objective(x, args):
        return x[0] + x[1]

    def circle(x, radius_sq):
        return jnp.array([x @ x - radius_sq])

    # Driven by hand (init/step), as a user monitoring the outer iterations would; the
    # settings make the penalty grow once (1 -> 4, capped at 2) and the budget run out early.
    growth, cap, max_outer = 4.0, 2.0, 3
    solver = augmented_lagrangian_solver(
        objective, circle, penalty=1.0, penalty_growth=growth, max_penalty=cap, max_outer=max_outer
    )
    assert solver.max_steps == max_outer
    step = jax.jit(solver.step)
    x, args = jnp.array([1.0, 0.0]), 2.0
    state = solver.init(x, args)
    norms, penalties = [float(state.constraint_norm)], [float(state.penalty)]
    while int(state.status) != Status.CONVERGED and int(state.count) < 30:
        old = state
        x, state = step(x, old, args)
        c = float(x @ x - args)
        norms.append(abs(c))
        penalties.append(float(state.penalty))
        assert float(state.constraint_norm) == pytest.approx(abs(c), rel=1e-12, abs=1e-15)
        lam = float(old.multipliers[0]) + float(old.penalty) * c
        np.testing.assert_allclose(np.asarray(state.multipliers), [lam], rtol=1e-12)
        fell = abs(c) <= 0.25 * norms[-2]
        mu = float(old.penalty) if fell else min(float(old.penalty) * growth, cap)
        assert float(state.penalty) == pytest.approx(mu, rel=1e-15)
        if int(state.status) != Status.CONVERGED:
            budget_spent = int(state.count) >= max_outer
            assert int(state.status) == (Status.MAX_STEPS if budget_spent else Status.RUNNING)
    assert int(state.status) == Status.CONVERGED
    # Non-increasing: near tol ~ sqrt(eps) an inner line search may stall for one step.
    assert np.all(np.diff(norms) <= 0) and norms[-1] <= 1e-8
    assert penalties[0] == 1.0 and penalties[-1] == cap
    np.testing.assert_allclose(np.asarray(x), [-1.0, -1.0], atol=1e-6)
    # 1 + lambda * 2 x = 0 at x = -1.
    np.testing.assert_allclose(np.asarray(state.multipliers), [0.5], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner": "newton"}, "inner must be one of"),
        ({"penalty": 0.0}, "penalty must be"),
        ({"penalty_growth": 0.5}, "penalty_growth must be"),
        ({"max_penalty": 1.0}, "max_penalty must be"),
        ({"tol": 0.0}, "tol must be"),
        ({"max_outer": 0}, "max_outer must be"),
        ({"inner_max_iterations": 2.5}, "inner_max_iterations must be"),
    ],
)
def test_augmented_lagrangian_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        augmented_lagrangian_solver(_sum_of_squares, _sum_constraint, **kwargs)


def test_augmented_lagrangian_rejects_bad_shapes():
    scalar_c = augmented_lagrangian_solver(_sum_of_squares, lambda x, a: jnp.sum(x) - a)
    with pytest.raises(ValueError, match="1-D vector"):
        scalar_c.init(jnp.zeros(2), 1.0)
    vector_f = augmented_lagrangian_solver(lambda x, a: x, _sum_constraint)
    with pytest.raises(ValueError, match="scalar"):
        vector_f.init(jnp.zeros(2), 1.0)


# ---------------------------------------------------------------- soft penalties


def test_penalty_loss_matches_its_closed_form_minimiser():
    law = ConservationLaw.linear("sum", [[1.0, 1.0]], [1.0])
    for w in (1.0, 100.0):
        loss = penalty_loss(_sum_of_squares, law, w)
        # 2x + 2w(2x - 1) = 0 on the symmetric line x = y.
        x_star = jnp.full(2, w / (1 + 2 * w))
        np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(x_star, None)), 0, atol=1e-12)
        expected = 2 * (w / (1 + 2 * w)) ** 2 + w * (2 * w / (1 + 2 * w) - 1) ** 2
        assert float(loss(x_star, None)) == pytest.approx(expected, rel=1e-12)


def test_penalty_loss_with_outputs_fn_and_several_laws():
    laws = [
        ConservationLaw.constraint("zero", lambda u: u[:1]),
        ConservationLaw.linear("sum", [[1.0, 1.0, 1.0]], [0.0]),
    ]
    loss = penalty_loss(
        lambda p, a: 0.0 * jnp.sum(p), laws, [2.0, 0.5], outputs_fn=lambda p, a: a * p
    )
    p = jnp.array([1.0, 2.0, 3.0])
    # outputs 2p = [2, 4, 6]: 2 * 2^2 + 0.5 * 12^2.
    assert float(loss(p, 2.0)) == pytest.approx(8.0 + 72.0)
    with pytest.raises(ValueError, match="one weight per law"):
        penalty_loss(_sum_of_squares, laws, [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        penalty_loss(_sum_of_squares, laws, -1.0)
    with pytest.raises(TypeError, match="ConservationLaw"):
        penalty_loss(_sum_of_squares, [lambda y: y])
    with pytest.raises(ValueError, match="at least one"):
        penalty_loss(_sum_of_squares, [])


# ---------------------------------------------------------------- bad input


def test_linear_rejects_non_finite_entries_by_index():
    A = np.ones((2, 3))
    A[1, 2] = np.nan
    A[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"A must be finite.*\[\(0, 0\), \(1, 2\)\]"):
        ConservationLaw.linear("x", A, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"b must be finite.*\[1\]"):
        ConservationLaw.linear("x", np.eye(2), [0.0, np.nan])


def test_linear_rejects_rank_deficient_and_misshaped_input():
    with pytest.raises(ValueError, match="full row rank m=3, got rank 2"):
        ConservationLaw.linear("x", [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 0.0]], [1, 2, 3])
    with pytest.raises(ValueError, match="more constraints"):
        ConservationLaw.linear("x", np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match=r"b must have shape \(m,\) = \(2,\).*got shape \(3,\)"):
        ConservationLaw.linear("x", np.eye(2, 3), np.ones(3))
    with pytest.raises(ValueError, match="2-D matrix"):
        ConservationLaw.linear("x", np.ones(3), np.ones(1))
    law = ConservationLaw.linear("x", np.eye(2, 3), np.ones(2))
    for method in (law.project, law.violation, law.check):
        with pytest.raises(ValueError, match=r"n=3.*got shape \(2, 4\)"):
            method(np.ones((2, 4)))


@pytest.mark.parametrize("tolerance", [0.0, -1e-3, float("nan"), float("inf"), "1e-3"])
def test_rejects_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance must be a finite float > 0"):
        ConservationLaw.quantity("q", jnp.sum, tolerance=tolerance)


def test_rejects_missing_or_conflicting_forms():
    with pytest.raises(ValueError, match="neither fn nor A/b"):
        ConservationLaw(name="x", kind="linear")
    with pytest.raises(ValueError, match="both fn and A/b"):
        ConservationLaw(name="x", kind="quantity", fn=jnp.sum, A=np.eye(2), b=np.ones(2))
    with pytest.raises(ValueError, match="kind 'quantity' cannot be given A and b"):
        ConservationLaw(name="x", kind="quantity", A=np.eye(2), b=np.ones(2))
    with pytest.raises(ValueError, match="needs both A and b"):
        ConservationLaw(name="x", kind="linear", A=np.eye(2))
    with pytest.raises(ValueError, match="kind must be one of"):
        ConservationLaw(name="x", kind="energy", fn=jnp.sum)
    with pytest.raises(ValueError, match="callable"):
        ConservationLaw.constraint("x", 3.0)
    with pytest.raises(ValueError, match="non-empty string"):
        ConservationLaw.quantity("", jnp.sum)


def test_rejects_bad_trajectories_and_misuse():
    energy = ConservationLaw.quantity("energy", jnp.sum)
    with pytest.raises(ValueError, match="same leading time axis"):
        energy.check({"q": jnp.ones(5), "p": jnp.ones(4)})
    with pytest.raises(ValueError, match="to a scalar"):
        ConservationLaw.quantity("vec", lambda s: s).check(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="project needs a linear law"):
        energy.project(jnp.ones(2))
    with pytest.raises(ValueError, match="projection_layer needs a linear law"):
        energy.projection_layer()
