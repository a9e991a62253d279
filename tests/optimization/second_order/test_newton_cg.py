"""NysNewton-CG: the randomized Nyström sketch, the preconditioned CG solve and the solver."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.problems import problems

from opifex.optimization.core import Status, solve
from opifex.optimization.second_order import NysNewtonCGConfig, create_nys_newton_cg_solver
from opifex.optimization.second_order._newton_cg import (
    _pcg,
    nys_newton_cg_solver,
    nystrom_sketch,
)

rosenbrock = next(p for p in problems() if p.name == "rosenbrock").objective


def extended_rosenbrock(x, args):
    # Moré, Garbow & Hillstrom (1981) problem 21: independent Rosenbrock pairs, f* = 0 at 1.
    odd, even = x[::2], x[1::2]
    return jnp.sum(100.0 * (even - odd**2) ** 2 + (1.0 - odd) ** 2)


def quadratic(x, data):
    a, b = data
    return 0.5 * x @ a @ x - b @ x


def _matrix(eigenvalues, seed=0):
    """Symmetric matrix with the given eigenvalues and a random orthonormal eigenbasis."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    a = q @ np.diag(eigenvalues) @ q.T
    return 0.5 * (a + a.T)


def _sketch(a, rank, seed=0):
    a = jnp.asarray(a)
    return nystrom_sketch(lambda v: a @ v, a.shape[0], rank, jax.random.PRNGKey(seed), a.dtype)


# --- the Nyström sketch --------------------------------------------------------------------


def test_sketch_recovers_top_eigenvalues_of_fast_decaying_spectrum():
    # lambda_i = 10^(2 - i): the rank-12 sketch's error is of the order of the tail
    # lambda_13 = 1e-10, so the top six eigenvalues agree with eigvalsh to 1e-6 relative.
    a = _matrix(10.0 ** (2.0 - np.arange(60)))
    u, lam = _sketch(a, rank=12)
    exact = np.linalg.eigvalsh(a)[::-1]
    np.testing.assert_allclose(lam[:6], exact[:6], rtol=1e-6)
    assert np.all(np.diff(np.asarray(lam)) <= 0) and np.all(np.asarray(lam) >= 0)
    np.testing.assert_allclose(u.T @ u, np.eye(12), atol=1e-12)
    # The Nyström approximation is below A in the Loewner order: A - U diag(lam) U' >= 0,
    # and its error is the tail (2-norm ~ 1e-10 here).
    residual = a - (u * lam) @ u.T
    assert np.linalg.eigvalsh(0.5 * (residual + residual.T))[0] >= -1e-10
    assert np.linalg.norm(residual, 2) < 1e-8


def test_full_rank_sketch_is_exact():
    # With rank = n the sketch is A itself (Q is square), so lam = eigvalsh(A).
    eigenvalues = np.array([50.0, 10.0, 3.0, 1.0, 0.5, 0.2, 0.05, 0.01])
    _, lam = _sketch(_matrix(eigenvalues), rank=8, seed=3)
    np.testing.assert_allclose(lam, eigenvalues, rtol=1e-10)


def test_sketch_of_indefinite_matrix_is_nonnegative_and_finite():
    eigenvalues = np.array([100.0, 20.0, 3.0, 0.5, -0.1, -1.0, -4.0, -30.0])
    a = _matrix(eigenvalues, seed=1)
    # Full rank: the shifted sketch is A + shift I exactly, so lam = max(eig(A), 0).
    _, lam = _sketch(a, rank=8, seed=1)
    np.testing.assert_allclose(lam, np.maximum(eigenvalues, 0.0), atol=1e-9)
    # Low rank: no NaN, every eigenvalue >= 0 and U orthonormal. (The Nyström sketch of an
    # indefinite matrix is not bounded by it: lam[0] exceeds lambda_max(A) = 100 here.)
    for seed in range(3):
        u, lam = _sketch(a, rank=3, seed=seed)
        assert np.all(np.isfinite(np.asarray(lam))) and np.all(np.isfinite(np.asarray(u)))
        assert np.all(np.asarray(lam) >= 0.0)
        np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-12)


# --- preconditioned CG ---------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("rank",))
def _sketch_and_pcg(a, b, x0, mu, tol, *, rank):
    """Sketch ``a`` at ``rank`` and solve ``(a + mu I) x = b`` by PCG from ``x0``."""

    def hvp(v):
        return a @ v

    u, lam = nystrom_sketch(hvp, a.shape[0], rank, jax.random.PRNGKey(5), a.dtype)
    return _pcg(hvp, b, x0, mu, u, lam, tol, 5000)


# lambda_i = 10^(4 - i/5) with mu = 1e-4: 40 eigenvalues above mu, effective dimension
# d_eff = sum lambda / (lambda + mu) = 40.5, condition number of A + mu I ~ 1e8.
_N = 200
_ILL = 10.0 ** (4.0 - np.arange(_N) / 5.0)


def _relative_residual(a, mu, x, b):
    return np.linalg.norm(a @ x + mu * x - b) / np.linalg.norm(b)


def test_pcg_solves_damped_system_to_tolerance():
    mu, tol = 0.1, 1e-12
    a = _matrix(np.linspace(1.0, 100.0, _N), seed=2)
    b = np.random.default_rng(2).normal(size=_N)
    x, iterations = _sketch_and_pcg(a, b, np.zeros(_N), mu, tol, rank=50)
    # The loop tests the recursively updated residual, which drifts from the true one by
    # rounding (~eps cond(A + mu I) ~ 2e-14 here).
    assert _relative_residual(a, mu, np.asarray(x), b) <= 10 * tol
    exact = np.linalg.solve(a + mu * np.eye(_N), b)
    np.testing.assert_allclose(x, exact, rtol=1e-10)
    assert 0 < int(iterations) <= _N  # a flat spectrum: the sketch helps little here
    # Warm-started at the solution, PCG takes no iteration and returns it.
    x, iterations = _sketch_and_pcg(a, b, exact, mu, 1e-8, rank=50)
    assert int(iterations) == 0
    np.testing.assert_array_equal(x, exact)


def test_nystrom_preconditioner_cuts_cg_iterations():
    # Rank 1 removes only the top eigenvalue, so CG faces cond ~ 1e8 over many distinct
    # eigenvalues; rank 50 >= d_eff maps the spectrum into ~[1, (lambda_50 + mu) / mu] =
    # [1, 1.01]. Stated ratio: at least 20x fewer iterations.
    mu, tol = 1e-4, 1e-6
    assert np.sum(_ILL / (_ILL + mu)) < 50
    a = _matrix(_ILL, seed=4)
    b = np.random.default_rng(4).normal(size=_N)
    iterations = {}
    for rank in (1, 50):
        x, its = _sketch_and_pcg(a, b, np.zeros(_N), mu, tol, rank=rank)
        assert _relative_residual(a, mu, np.asarray(x), b) <= tol
        iterations[rank] = int(its)
    assert iterations[50] <= 10
    assert iterations[1] >= 20 * iterations[50]


# --- the solver ----------------------------------------------------------------------------


def test_damped_newton_step_on_quadratic_and_convergence_in_few_steps():
    # On 0.5 x'Ax - b'x an exactly solved damped step with unit length gives the closed form
    # x1 - x* = mu (A + mu I)^-1 (x0 - x*) (Armijo with c1 = 0.1 accepts the full step).
    n, mu = 5, 0.5
    a = _matrix(np.linspace(1.0, 10.0, n), seed=6)
    b = np.random.default_rng(6).normal(size=n)
    x_star = np.linalg.solve(a, b)
    args = (jnp.asarray(a), jnp.asarray(b))
    one = nys_newton_cg_solver(quadratic, rank=n, mu=mu, cg_tol=1e-13)
    sol = solve(one, jnp.zeros(n), args, max_steps=1)
    expected = x_star + mu * np.linalg.solve(a + mu * np.eye(n), -x_star)
    np.testing.assert_allclose(sol.params, expected, rtol=1e-10)
    assert float(sol.state.stepsize) == 1.0
    # Products: rank n for the first sketch, one for PCG's initial residual, one per iteration.
    assert int(sol.state.num_hvps) == n + 1 + int(sol.state.cg_iterations)

    # Nearly undamped, a pytree of params, and a rank-3 sketch of the 5-D Hessian: one
    # Newton step (and at most one more) reaches the minimiser.
    def fn(p, data):
        return quadratic(jnp.concatenate([p["u"], p["v"]]), data)

    config = NysNewtonCGConfig(rank=3, mu=1e-12, cg_tol=1e-13, gtol=1e-9)
    x0 = {"u": jnp.zeros(2), "v": jnp.zeros(3)}
    sol = solve(create_nys_newton_cg_solver(fn, config), x0, args)
    assert int(sol.status) == Status.CONVERGED and int(sol.num_steps) <= 2
    np.testing.assert_allclose(sol.params["u"], x_star[:2], atol=1e-10)
    np.testing.assert_allclose(sol.params["v"], x_star[2:], atol=1e-10)


def test_rosenbrock_minimised():
    sol = solve(nys_newton_cg_solver(rosenbrock, rank=2), jnp.array([-1.2, 1.0]), 1.0)
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-6, rtol=0)
    assert float(sol.value) < 1e-12


def test_negative_curvature_start_reaches_a_minimiser():
    # f = -x0^2 + x0^4 + x1^2 has a saddle at 0 and minimisers (+-1/sqrt 2, 0), f* = -1/4.
    # At x0 = 0.1 the Hessian diag(-1.88, 2) is indefinite: PCG meets negative curvature and
    # the step falls back to a descent direction. gtol = 1e-7: with f* != 0, Armijo cannot
    # see a decrease once |g| is below ~sqrt(eps |f*|) ~ 1e-8.
    def fn(x, a):
        return -(x[0] ** 2) + x[0] ** 4 + x[1] ** 2

    sol = solve(nys_newton_cg_solver(fn, rank=2, gtol=1e-7), jnp.array([0.1, 1.0]))
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, [1.0 / np.sqrt(2.0), 0.0], atol=1e-7)
    np.testing.assert_allclose(sol.value, -0.25, rtol=1e-14)


def test_rank_above_dimension_raises():
    solver = nys_newton_cg_solver(rosenbrock, rank=3)
    with pytest.raises(ValueError, match=r"rank must be <= the number of parameters 2, got 3"):
        solver.init(jnp.zeros(2), 1.0)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        nys_newton_cg_solver(lambda x, a: x**2, rank=1).init(jnp.zeros(3), None)


def test_float32_kept_and_converges():
    solver = nys_newton_cg_solver(rosenbrock, rank=2, gtol=1e-3)
    sol = solve(solver, jnp.array([-1.2, 1.0], jnp.float32), 1.0)
    assert int(sol.status) == Status.CONVERGED
    assert sol.params.dtype == jnp.float32 and sol.value.dtype == jnp.float32
    assert sol.state.eigvecs.dtype == jnp.float32 and sol.state.eigvals.dtype == jnp.float32
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=2e-3)


# --- the config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_iterations": 0},
        {"rank": 0},
        {"mu": 0.0},
        {"precond_update_freq": 0},
        {"cg_tol": -1.0},
        {"cg_max_iterations": 0},
        {"learning_rate": 0.0},
        {"gtol": -1.0},
        {"seed": -1},
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        NysNewtonCGConfig(**bad)


_X0 = jnp.array([-1.2, 1.0, -1.0, 1.2, 0.5, -0.5])


def _run(**changes):
    config = NysNewtonCGConfig(rank=3, max_iterations=200).replace(**changes)
    return solve(create_nys_newton_cg_solver(extended_rosenbrock, config), _X0)


@pytest.fixture(scope="module")
def baseline():
    return _run()


def _summary(sol):
    return (
        int(sol.status),
        int(sol.num_steps),
        int(sol.state.num_hvps),
        float(sol.value),
        float(jnp.sum(sol.state.eigvals)),
    )


# Each config field changes the run on the 6-D extended Rosenbrock function (steps,
# Hessian-vector products, status, result or the sketch).
FIELD_CHANGES = {
    "max_iterations": 5,
    "rank": 6,
    "mu": 1.0,
    "precond_update_freq": 1,
    "cg_tol": 1e-2,
    "cg_max_iterations": 2,
    "learning_rate": 0.5,
    "gtol": 1e-4,
    "seed": 1,
}


def test_every_config_field_is_covered():
    assert set(FIELD_CHANGES) == {f.name for f in dataclasses.fields(NysNewtonCGConfig)}


@pytest.mark.parametrize(("field", "value"), FIELD_CHANGES.items())
def test_config_field_changes_behaviour(baseline, field, value):
    # max_iterations = 5 also covers MAX_STEPS: solve's budget is the config's by default.
    assert int(baseline.status) == Status.CONVERGED
    np.testing.assert_allclose(baseline.params, 1.0, atol=1e-9)
    changed = _run(**{field: value})
    assert _summary(changed) != _summary(baseline)
    if field == "max_iterations":
        assert int(changed.status) == Status.MAX_STEPS and int(changed.num_steps) == 5
    if field == "gtol":
        assert int(changed.num_steps) < int(baseline.num_steps)
        assert int(changed.status) == Status.CONVERGED
    if field == "precond_update_freq":
        # A sketch (rank 3 products) every step instead of every 20.
        assert int(changed.state.num_hvps) > int(baseline.state.num_hvps)
