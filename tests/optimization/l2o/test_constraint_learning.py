"""Constraint layers: exactness against closed forms, invariants, gradients, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization.l2o.constraint_learning import (
    ConstraintLayer,
    ConstraintLayerConfig,
    LinearConstraints,
    equality_completion,
    feasibility_report,
    inequality_correction,
    project_equality,
    project_to_interior_ray,
    project_to_interior_ray_bisection,
)

N_VAR, M_EQ, M_IN = 8, 3, 6


@pytest.fixture(scope="module")
def problem():
    # A small DC3-style family: h = sum|G pinv(A)| makes pinv(A) x strictly feasible for |x| < 1.
    rng = np.random.default_rng(0)
    A = rng.normal(size=(M_EQ, N_VAR))
    G = rng.normal(size=(M_IN, N_VAR))
    h = np.abs(G @ np.linalg.pinv(A)).sum(axis=1)
    X = rng.uniform(-0.9, 0.9, size=(16, M_EQ))
    cons = LinearConstraints(jnp.asarray(A), jnp.asarray(G), jnp.asarray(h))
    return cons, jnp.asarray(X), jnp.asarray(X @ np.linalg.pinv(A).T), rng


def _violation(y, cons):
    return jnp.linalg.norm(jnp.maximum(y @ cons.G.T - cons.h, 0.0), axis=-1)


def test_completion_is_exact(problem):
    cons, X, _, rng = problem
    Z = jnp.asarray(3 * rng.normal(size=(16, N_VAR - M_EQ)))
    Y = jax.vmap(equality_completion, in_axes=(0, 0, None))(Z, X, cons.A)
    np.testing.assert_allclose(Y @ cons.A.T, X, atol=1e-12)
    np.testing.assert_array_equal(Y[:, : N_VAR - M_EQ], Z)
    A = np.asarray(cons.A)
    w = np.linalg.solve(A[:, -M_EQ:], np.asarray(X[0] - Z[0] @ A[:, :-M_EQ].T))
    np.testing.assert_allclose(Y[0, -M_EQ:], w, atol=1e-12)


def _safe_step(cons):
    """Half the inverse Lipschitz constant of the correction's gradient (NumPy)."""
    A, G = np.asarray(cons.A), np.asarray(cons.G)
    k = N_VAR - M_EQ
    g_eff = G[:, :k] - G[:, k:] @ np.linalg.solve(A[:, k:], A[:, :k])
    return 0.5 / np.linalg.norm(g_eff, 2) ** 2


def _dc3_correction_numpy(y, x, cons, steps, lr, momentum):
    """DC3's update written out in the free variables with dense NumPy algebra."""
    A, G, h = (np.asarray(a) for a in cons)
    k = N_VAR - M_EQ
    B_inv = np.linalg.inv(A[:, k:])
    g_eff = G[:, :k] - G[:, k:] @ B_inv @ A[:, :k]
    z, v = np.asarray(y[:k]).copy(), np.zeros(k)

    def full(z):
        return np.concatenate([z, B_inv @ (np.asarray(x) - A[:, :k] @ z)])

    for _ in range(steps):
        v = lr * g_eff.T @ np.maximum(G @ full(z) - h, 0) + momentum * v
        z = z - v
    return full(z)


def test_correction_matches_dc3_update_and_keeps_equality(problem):
    cons, X, _, rng = problem
    z = jnp.asarray(4 * rng.normal(size=N_VAR - M_EQ))
    y = equality_completion(z, X[0], cons.A)
    lr = _safe_step(cons)
    out = inequality_correction(y, X[0], cons, steps=25, step_size=lr, momentum=0.5)
    np.testing.assert_allclose(out, _dc3_correction_numpy(y, X[0], cons, 25, lr, 0.5), atol=1e-10)
    np.testing.assert_allclose(cons.A @ out, X[0], atol=1e-12)
    assert float(_violation(y, cons)) > 1.0
    assert float(_violation(out, cons)) < 0.2 * float(_violation(y, cons))


def test_correction_default_step_reduces_violation_over_a_batch(problem):
    cons, X, _, rng = problem
    Z = jnp.asarray(4 * rng.normal(size=(16, N_VAR - M_EQ)))
    Y = jax.vmap(equality_completion, in_axes=(0, 0, None))(Z, X, cons.A)
    fix = jax.jit(jax.vmap(lambda y, x: inequality_correction(y, x, cons, steps=200)))
    out = fix(Y, X)
    np.testing.assert_allclose(out @ cons.A.T, X, atol=1e-12)
    # Plain gradient descent on an ill-conditioned G_eff: steady, not fast.
    before, after = _violation(Y, cons), _violation(out, cons)
    assert bool(jnp.all(after <= before))
    assert float(jnp.mean(after)) < 0.05 * float(jnp.mean(before))


def test_correction_gradient_matches_finite_differences(problem):
    cons, X, _, rng = problem
    y = equality_completion(jnp.asarray(3 * rng.normal(size=N_VAR - M_EQ)), X[1], cons.A)
    weights = jnp.asarray(rng.normal(size=N_VAR))

    lr = _safe_step(cons)

    @jax.jit
    def loss(y, x):
        return weights @ inequality_correction(y, x, cons, steps=6, step_size=lr)

    gy, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(y, X[1])
    eps = 1e-6
    for arg, grad in ((0, gy), (1, gx)):
        base = (y, X[1])[arg]
        for i in range(base.shape[0]):
            e = jnp.zeros_like(base).at[i].set(eps)
            args_p, args_m = [y, X[1]], [y, X[1]]
            args_p[arg], args_m[arg] = base + e, base - e
            fd = (loss(*args_p) - loss(*args_m)) / (2 * eps)
            assert float(grad[i]) == pytest.approx(float(fd), abs=1e-6)


def test_project_equality_closed_form_and_idempotent(problem):
    cons, X, _, rng = problem
    A = np.asarray(cons.A)
    y = jnp.asarray(rng.normal(size=N_VAR))
    out = project_equality(y, X[2], cons.A)
    ref = np.asarray(y) - A.T @ np.linalg.solve(A @ A.T, A @ np.asarray(y) - np.asarray(X[2]))
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(cons.A @ out, X[2], atol=1e-12)
    np.testing.assert_allclose(project_equality(out, X[2], cons.A), out, atol=1e-13)


def test_interior_ray_projection(problem):
    cons, X, Y0, rng = problem
    Z = jnp.asarray(5 * rng.normal(size=(16, N_VAR - M_EQ)))
    Y = jax.vmap(equality_completion, in_axes=(0, 0, None))(Z, X, cons.A)
    # Points on A y = x from just off the interior point to far outside.
    Y = Y0 + jnp.logspace(-3, 0, 16)[:, None] * (Y - Y0)
    project = jax.jit(jax.vmap(lambda y, y0, x: project_to_interior_ray(y, y0, x, cons)))
    P = project(Y, Y0, X)
    worst = jnp.max(P @ cons.G.T - cons.h, axis=1)
    assert float(jnp.max(worst)) <= 1e-12
    infeasible = jnp.max(Y @ cons.G.T - cons.h, axis=1) > 0
    assert bool(infeasible.any()) and bool((~infeasible).any())
    # Infeasible points land on the boundary; feasible ones come back bit for bit.
    np.testing.assert_allclose(worst[infeasible], 0.0, atol=1e-12)
    np.testing.assert_array_equal(P[~infeasible], Y[~infeasible])
    np.testing.assert_allclose(project(P, Y0, X), P, atol=1e-12)
    np.testing.assert_allclose(P @ cons.A.T, X, atol=1e-12)
    # The step fraction is the plain ratio test.
    G, h = np.asarray(cons.G), np.asarray(cons.h)
    i = int(np.argmax(infeasible))
    d = np.asarray(Y[i] - Y0[i])
    rates = G @ d
    t = min(1.0, min((h - G @ np.asarray(Y0[i]))[rates > 0] / rates[rates > 0]))
    np.testing.assert_allclose(P[i], np.asarray(Y0[i]) + t * d, atol=1e-12)


def test_interior_ray_gradient_matches_finite_differences(problem):
    cons, X, Y0, rng = problem
    y = equality_completion(jnp.asarray(5 * rng.normal(size=N_VAR - M_EQ)), X[3], cons.A)
    assert float(jnp.max(cons.G @ y - cons.h)) > 0
    weights = jnp.asarray(rng.normal(size=N_VAR))

    @jax.jit
    def loss(y):
        return weights @ project_to_interior_ray(y, Y0[3], X[3], cons)

    grad = jax.jit(jax.grad(loss))(y)
    eps = 1e-6
    fd = [(loss(y.at[i].add(eps)) - loss(y.at[i].add(-eps))) / (2 * eps) for i in range(N_VAR)]
    np.testing.assert_allclose(grad, jnp.asarray(fd), atol=1e-6)


def test_bisection_agrees_with_ratio_test(problem):
    cons, X, Y0, rng = problem
    Z = jnp.asarray(5 * rng.normal(size=(16, N_VAR - M_EQ)))
    Y = jax.vmap(equality_completion, in_axes=(0, 0, None))(Z, X, cons.A)
    steps = 40
    bisect = jax.jit(
        jax.vmap(lambda y, y0, x: project_to_interior_ray_bisection(y, y0, x, cons, steps=steps))
    )
    ratio = jax.vmap(lambda y, y0, x: project_to_interior_ray(y, y0, x, cons))(Y, Y0, X)
    B = bisect(Y, Y0, X)
    assert float(jnp.max(B @ cons.G.T - cons.h)) <= 0.0
    gap = jnp.linalg.norm(B - ratio, axis=1) / jnp.linalg.norm(Y - Y0, axis=1)
    assert float(jnp.max(gap)) <= 2.0**-steps
    # A general convex set: the unit ball around the origin, from the centre.
    ball = lambda y, x: jnp.sum(y**2) - x[0] ** 2  # noqa: E731
    out = project_to_interior_ray_bisection(
        jnp.array([3.0, 4.0]), jnp.zeros(2), jnp.array([1.0]), ball, steps=45
    )
    np.testing.assert_allclose(out, [0.6, 0.8], atol=1e-12)
    inside = jnp.array([0.1, -0.2])
    np.testing.assert_array_equal(
        project_to_interior_ray_bisection(inside, jnp.zeros(2), jnp.array([1.0]), ball), inside
    )


def test_feasibility_report_hand_computed():
    cons = LinearConstraints(
        A=jnp.array([[1.0, 1.0, 0.0]]),
        G=jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        h=jnp.array([1.0, 0.0]),
    )
    Y = jnp.array([[0.5, 0.5, 0.0], [2.0, 0.0, 0.5], [1.0, 1e-6, -1.0]])
    X = jnp.array([[1.0], [2.0], [1.0]])
    # eq residuals |Ay - x|: 0, 0, 1e-6; ineq violations: (0, 0), (1, 0.5), (0, 0).
    r = {k: float(v) for k, v in feasibility_report(Y, X, cons).items()}
    assert r["eq_max"] == pytest.approx(1e-6) and r["eq_mean"] == pytest.approx(1e-6 / 3)
    assert r["eq_max_mean"] == pytest.approx(1e-6 / 3)
    assert r["ineq_max"] == 1.0 and r["ineq_mean"] == pytest.approx(1.5 / 6)
    assert r["ineq_max_mean"] == pytest.approx(1.0 / 3)
    assert r["eq_fraction"] == pytest.approx(2 / 3) and r["ineq_fraction"] == pytest.approx(2 / 3)
    assert r["feasible_fraction"] == pytest.approx(1 / 3)
    loose = feasibility_report(Y, X, cons, eq_tol=1e-5, ineq_tol=1.0)
    assert float(loose["feasible_fraction"]) == 1.0


def test_constraint_layer_fields_take_effect(problem):
    cons, X, Y0, rng = problem
    z = jnp.asarray(5 * rng.normal(size=N_VAR - M_EQ))
    x, y0 = X[4], Y0[4]
    base = ConstraintLayerConfig()
    layer = ConstraintLayer(cons, base)
    reference = layer(z, x, y0)
    changes = {
        "correction_steps": 3,
        "correction_step_size": 1e-3,
        "correction_momentum": 0.0,
        "projection": "none",
        "bisection_steps": 2,
    }
    for name, value in changes.items():
        config = base.replace(**{name: value})
        if name == "bisection_steps":
            reference = ConstraintLayer(cons, base.replace(projection="bisection"))(z, x, y0)
            config = config.replace(projection="bisection")
        out = ConstraintLayer(cons, config)(z, x, y0)
        assert float(jnp.max(jnp.abs(out - reference))) > 1e-6, name
    # The chain equals the functions composed by hand; jit(vmap) agrees with eager.
    by_hand = project_to_interior_ray(
        inequality_correction(equality_completion(z, x, cons.A), x, cons, steps=10), y0, x, cons
    )
    np.testing.assert_allclose(layer(z, x, y0), by_hand, atol=1e-12)
    assert float(jnp.max(cons.G @ by_hand - cons.h)) <= 1e-12
    Z = jnp.tile(z, (4, 1))
    batched = jax.jit(jax.vmap(lambda lyr, z, x, y0: lyr(z, x, y0), in_axes=(None, 0, 0, 0)))
    np.testing.assert_allclose(batched(layer, Z, X[4:8], Y0[4:8])[0], by_hand, atol=1e-12)


def test_bad_input_is_named(problem):
    cons, X, Y0, _ = problem
    z = jnp.zeros(N_VAR - M_EQ)
    with pytest.raises(ValueError, match=r"z must have shape \(5,\).*got \(4,\)"):
        equality_completion(jnp.zeros(4), X[0], cons.A)
    with pytest.raises(ValueError, match=r"x must have shape \(3,\).*got \(16, 3\).*vmap"):
        equality_completion(z, X, cons.A)
    singular = np.asarray(cons.A).copy()
    singular[:, -1] = singular[:, -2]
    with pytest.raises(ValueError, match="last m_eq=3 columns of A"):
        equality_completion(z, X[0], jnp.asarray(singular))
    with pytest.raises(ValueError, match="full row rank"):
        project_equality(jnp.zeros(N_VAR), jnp.zeros(2), jnp.ones((2, N_VAR)))
    with pytest.raises(ValueError, match=r"G must have shape \(m_in, 8\)"):
        inequality_correction(jnp.zeros(N_VAR), X[0], cons._replace(G=cons.G[:, :4]), steps=1)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        inequality_correction(jnp.zeros(N_VAR), X[0], cons, steps=-1)
    with pytest.raises(ValueError, match="momentum must be a float in"):
        inequality_correction(jnp.zeros(N_VAR), X[0], cons, steps=1, momentum=1.0)
    with pytest.raises(TypeError, match="cons must be a LinearConstraints"):
        project_to_interior_ray(jnp.zeros(N_VAR), Y0[0], X[0], (cons.A, cons.G, cons.h))
    with pytest.raises(ValueError, match=r"y_interior must have shape \(8,\)"):
        project_to_interior_ray(jnp.zeros(N_VAR), Y0, X[0], cons)
    with pytest.raises(TypeError, match="constraint must be LinearConstraints or a function"):
        project_to_interior_ray_bisection(jnp.zeros(2), jnp.zeros(2), X[0], "ball")
    with pytest.raises(ValueError, match=r"Y must have shape \(N, 8\)"):
        feasibility_report(jnp.zeros((2, 7)), jnp.zeros((2, 3)), cons)
    with pytest.raises(ValueError, match="projection must be one of"):
        ConstraintLayerConfig(projection="clip")
    with pytest.raises(ValueError, match="needs y_interior"):
        ConstraintLayer(cons)(z, X[0])
