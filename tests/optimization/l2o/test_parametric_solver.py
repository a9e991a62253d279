"""Parametric solvers: trained from scratch on small fixed-seed families, checked against scipy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from opifex.optimization.l2o._parametric_core import TRACES
from opifex.optimization.l2o.parametric_solver import (
    DualQPConfig,
    DualQPSolver,
    ParametricSolver,
    ParametricSolverConfig,
    dc3_solver,
    dual_function,
    reduce_qp,
    solver_refinement,
)
from opifex.optimization.second_order import create_gauss_newton_solver

N_VAR, N_EQ, N_IN = 10, 4, 5
TINY = ParametricSolverConfig(hidden_sizes=(32,), train_steps=100, learning_rate=3e-3)


def _family(seed=3, num=300):
    """A DC3-style QP family: ``pinv(A) x`` is strictly feasible for ``|x| < 1``."""
    rng = np.random.default_rng(seed)
    Q = np.diag(rng.uniform(0.2, 1.0, N_VAR))
    p = rng.uniform(0, 1, N_VAR)
    A = rng.normal(size=(N_EQ, N_VAR))
    G = rng.normal(size=(N_IN, N_VAR))
    h = np.abs(G @ np.linalg.pinv(A)).sum(1)
    X = rng.uniform(-1, 1, (num, N_EQ))
    return Q, p, A, G, h, X


def _scipy_optimum(Q, p, A, G, h, x):
    cons = [
        {"type": "eq", "fun": lambda y: A @ y - x, "jac": lambda y: A},
        {"type": "ineq", "fun": lambda y: h - G @ y, "jac": lambda y: -G},
    ]
    res = scipy.optimize.minimize(
        lambda y: 0.5 * y @ Q @ y + p @ y,
        np.linalg.pinv(A) @ x,
        jac=lambda y: Q @ y + p,
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success
    return res.fun


@pytest.fixture(scope="module")
def family():
    Q, p, A, G, h, X = _family()
    X_test = X[-12:]
    f_ref = np.array([_scipy_optimum(Q, p, A, G, h, x) for x in X_test])
    return Q, p, A, G, h, X[:-12], X_test, f_ref


@pytest.fixture(scope="module")
def trained(family):
    Q, p, A, G, h, X_train, _, _ = family
    solver = DualQPSolver(Q, p, A, G, h, config=DualQPConfig(network=TINY, refine_steps=0))
    history = solver.fit(X_train)
    return solver, history


def _with(solver, **changes):
    """A solver with a changed DualQPConfig sharing the trained network weights."""
    Q, p, A, G, h = solver._data
    other = DualQPSolver(Q, p, A, G, h, config=solver.config.replace(**changes))
    other.network.params = solver.network.params
    return other


def test_dual_pipeline_is_exactly_feasible_and_certified(family, trained):
    Q, p, A, G, h, _, X_test, f_ref = family
    solver = _with(trained[0], refine_steps=10)
    sol = solver.solve(X_test)
    Y = np.asarray(sol.y)
    assert np.abs(Y @ A.T - X_test).max() <= 1e-10
    assert (Y @ G.T - h).max() <= 1e-12
    f = 0.5 * np.einsum("bi,ij,bj->b", Y, Q, Y) + Y @ p
    np.testing.assert_allclose(np.asarray(sol.objective), f, rtol=1e-12, atol=1e-12)
    bound = np.asarray(sol.bound)
    assert np.all(bound <= f_ref + 1e-9)  # weak duality: a certificate, never above f*
    assert np.all(f >= f_ref - 1e-9)  # feasible, so never below f*
    assert np.all(np.asarray(sol.dual) >= 0)
    # Ten ADMM steps from the trained network: near-optimal and certified so.
    assert np.max(np.abs(f - f_ref) / np.abs(f_ref)) < 1e-2
    assert np.max((f - bound) / np.abs(bound)) < 1e-2


def test_trained_network_beats_untrained_baseline(family, trained):
    Q, p, A, G, h, _, X_test, f_ref = family
    solver, history = trained
    assert history.loss.shape == (TINY.train_steps,)
    assert history.loss[-10:].mean() < 0.5 * history.loss[:10].mean()
    untrained = DualQPSolver(Q, p, A, G, h, config=solver.config)

    def gaps(s):
        sol = s.solve(X_test)
        f, b = np.asarray(sol.objective), np.asarray(sol.bound)
        return np.mean((f - f_ref) / np.abs(f_ref)), np.mean((f_ref - b) / np.abs(f_ref))

    # Network alone: its dual bound is far tighter than the untrained network's.
    assert gaps(solver)[1] < 0.1 * gaps(untrained)[1]
    # Network + 10 ADMM steps: within 1% of scipy's optimum, 10x closer than ADMM from the
    # untrained network's guess with the same steps.
    primal_gap, _ = gaps(_with(solver, refine_steps=10))
    assert primal_gap < 0.01 and primal_gap < 0.1 * gaps(_with(untrained, refine_steps=10))[0]


def test_dual_function_matches_lagrangian_minimum(family):
    Q, p, A, G, h, X, _, _ = family
    qp = reduce_qp(Q, p, A, G, h)
    rng = np.random.default_rng(0)
    lam, x = rng.uniform(0, 1, N_IN), X[0]
    # min over {A y = x} of 1/2 y'Qy + p'y + lam'(G y - h): a KKT linear system.
    kkt = np.block([[Q, A.T], [A, np.zeros((N_EQ, N_EQ))]])
    y = np.linalg.solve(kkt, np.concatenate([-(p + G.T @ lam), x]))[:N_VAR]
    expected = 0.5 * y @ Q @ y + p @ y + lam @ (G @ y - h)
    np.testing.assert_allclose(float(dual_function(jnp.asarray(lam), x, qp)), expected, rtol=1e-12)


def test_wrong_size_x_is_rejected_with_both_sizes(trained):
    solver = trained[0]
    with pytest.raises(ValueError, match=r"must have 4 entries.*got 5"):
        solver.solve(np.zeros(5))
    with pytest.raises(ValueError, match=r"must have 4 entries.*got 2"):
        solver.solve(np.zeros((5, 2)))


def test_solve_compiles_once_per_shape(trained):
    net = trained[0].network
    X = np.random.default_rng(1).uniform(-1, 1, (7, N_EQ))
    net.solve(X)
    count = TRACES["solve_batch"]
    net.solve(X + 0.1)
    net.solve(X[0])  # a single x is a batch of one: one more shape
    net.solve(X[1])
    assert TRACES["solve_batch"] == count + 1
    np.testing.assert_allclose(net.solve(X[2]), net.solve(X)[2], rtol=1e-6, atol=1e-9)


def _square_loss(y, x, data):
    return jnp.sum((y - x) ** 2)


def _positive_part(y, x, data):
    return jax.nn.relu(y)


def _tiny(config):
    return ParametricSolver(
        _square_loss, num_params=2, num_outputs=2, config=config, violation_fn=_positive_part
    )


def test_every_parametric_config_field_takes_effect():
    base = ParametricSolverConfig(hidden_sizes=(8,), train_steps=10, batch_size=16)
    X = np.random.default_rng(0).uniform(-1, 1, (64, 2))
    # The network's shape and initialisation show in its parameters, its activation in its
    # output, all before any training...
    shapes = lambda c: [a.shape for a in jax.tree.leaves(_tiny(c).params)]  # noqa: E731
    assert shapes(base.replace(hidden_sizes=(9,))) != shapes(base)
    flat = lambda c: np.concatenate([np.ravel(a) for a in jax.tree.leaves(_tiny(c).params)])  # noqa: E731
    assert not np.allclose(flat(base.replace(seed=1)), flat(base))
    untrained = np.asarray(_tiny(base).predict(X))
    assert not np.allclose(_tiny(base.replace(activation="tanh")).predict(X), untrained)
    # ...the training settings in what fit does.
    loss0 = _tiny(base).fit(X).loss
    training = {"learning_rate": 0.1, "train_steps": 11, "batch_size": 17, "penalty_weight": 0.0}
    for name, value in training.items():
        loss = _tiny(base.replace(**{name: value})).fit(X).loss
        assert loss.shape != loss0.shape or not np.allclose(loss, loss0), name
    tested = {"hidden_sizes", "activation", "seed", *training}
    assert tested == {f.name for f in dataclasses.fields(ParametricSolverConfig)}


def test_every_dual_config_field_takes_effect(family, trained):
    _, _, _, _, _, _, X_test, _ = family
    solver = trained[0]
    # Configurations the other tests compile too, but for project=False.
    base_config = {"refine_steps": 10, "project": True}
    base = _with(solver, **base_config).solve(X_test)
    changes = {"refine_steps": 0, "rho": 1.0, "project": False}
    for name, value in changes.items():
        other = _with(solver, **{**base_config, name: value}).solve(X_test)
        assert not np.allclose(other.y, base.y), name
    retrained = DualQPSolver(
        *solver._data, config=solver.config.replace(network=TINY.replace(seed=5))
    )
    assert not np.allclose(retrained.solve(X_test).y, solver.solve(X_test).y)
    assert {f.name for f in dataclasses.fields(DualQPConfig)} == {*changes, "network"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_sizes", (0,)),
        ("hidden_sizes", [8]),
        ("activation", "softmax"),
        ("learning_rate", 0.0),
        ("train_steps", 0),
        ("batch_size", 1.5),
        ("penalty_weight", -1.0),
        ("seed", "0"),
    ],
)
def test_bad_parametric_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        ParametricSolverConfig(**{field: value})


def test_bad_dual_config_and_problem_raise(family):
    Q, p, A, G, h, *_ = family
    for field, value in (("refine_steps", -1), ("rho", 0.0), ("project", 1)):
        with pytest.raises(ValueError, match=field):
            DualQPConfig(**{field: value})
    with pytest.raises(ValueError, match="full row rank"):
        reduce_qp(Q, p, np.vstack([A, A[:1]]), G, h)
    with pytest.raises(ValueError, match=r"h must have shape \(5,\)"):
        reduce_qp(Q, p, A, G, h[:-1])


def test_solver_refinement_finishes_the_network_guess():
    # Per coordinate y + y^3 = x (one real root): a residual for Gauss-Newton, and
    # 1/2 ||residual||^2 the self-supervised training objective.
    def residual(y, args):
        return y + y**3 - args[0]

    objective = lambda y, x, data: 0.5 * jnp.sum(residual(y, (x, data)) ** 2)  # noqa: E731
    refine = solver_refinement(create_gauss_newton_solver(residual), max_steps=8)
    cfg = ParametricSolverConfig(hidden_sizes=(16,), seed=3)
    solver = ParametricSolver(objective, num_params=3, num_outputs=3, config=cfg, refine=refine)
    X_test = np.random.default_rng(0).uniform(-2, 2, (8, 3))
    exact = np.array([[np.roots([1, 0, 1, -v])[-1].real for v in x] for x in X_test])
    net_err = np.abs(np.asarray(solver.predict(X_test)) - exact).max()
    refined_err = np.abs(np.asarray(solver.solve(X_test)) - exact).max()
    assert refined_err < 1e-9 < 1e-3 < net_err
    with pytest.raises(ValueError, match="max_steps"):
        solver_refinement(create_gauss_newton_solver(residual), max_steps=0)


def test_dc3_solver_completes_equalities_and_corrects(family):
    Q, p, A, G, h, _, X_test, _ = family
    cfg = ParametricSolverConfig(hidden_sizes=(8,), seed=2)
    solver = dc3_solver(
        Q, p, A, G, h, config=cfg, correction_train_steps=0, correction_test_steps=50
    )
    completed = np.asarray(solver.predict(X_test))  # completion only
    corrected = np.asarray(solver.solve(X_test))  # then 50 correction steps
    for Y in (completed, corrected):
        assert np.abs(Y @ A.T - X_test).max() <= 1e-10
    # The untrained network's completion violates G y <= h; the correction repairs most of it.
    violation = lambda Y: np.maximum(Y @ G.T - h, 0).sum(1)  # noqa: E731
    assert violation(completed).mean() > 0.1
    assert violation(corrected).mean() < 0.1 * violation(completed).mean()
    with pytest.raises(ValueError, match="correction_train_steps"):
        dc3_solver(Q, p, A, G, h, correction_train_steps=5, correction_test_steps=2)
