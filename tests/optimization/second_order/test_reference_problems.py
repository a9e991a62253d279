"""Every shared reference problem crossed with every second-order solver."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests.problems import problems

from opifex.optimization import Status, solve
from opifex.optimization.second_order import (
    BFGSConfig,
    HybridOptimizer,
    HybridOptimizerConfig,
    LBFGSConfig,
    NysNewtonCGConfig,
    create_bfgs_solver,
    create_gauss_newton_solver,
    create_lbfgs_optimizer,
    create_lbfgs_solver,
    create_levenberg_marquardt_solver,
    create_nys_newton_cg_solver,
)

PROBLEMS = {p.name: p for p in problems()}


def _as_jax(p):
    return jnp.asarray(p.x0), jax.tree.map(jnp.asarray, p.args)


def _lbfgs_solver(p):
    x0, args = _as_jax(p)
    sol = solve(create_lbfgs_solver(p.objective, LBFGSConfig(gtol=1e-10)), x0, args)
    assert sol.status in (Status.CONVERGED, Status.LINESEARCH_FAILED)
    # The minimum value too: Powell's singular minimiser is only approached linearly.
    f_star = float(p.objective(jnp.asarray(p.x_star), args))
    assert float(sol.value) - f_star <= (1e-12 if p.name == "powell_singular" else 1e-14)
    return sol.params


def _lbfgs_transform(p):
    x0, args = _as_jax(p)
    opt = create_lbfgs_optimizer(LBFGSConfig(gtol=1e-10))
    fn = lambda x: p.objective(x, args)  # noqa: E731
    value_and_grad = optax.value_and_grad_from_state(fn)

    @jax.jit
    def run(x):
        def body(_, carry):
            x, state = carry
            value, grad = value_and_grad(x, state=state)
            updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fn)
            return optax.apply_updates(x, updates), state

        return jax.lax.fori_loop(0, 300, body, (x, opt.init(x)))[0]

    return run(x0)


def _hybrid(p):
    x0, args = _as_jax(p)
    cfg = HybridOptimizerConfig(
        adam_learning_rate=1e-2,
        switch_criterion="step",
        switch_step=20,
        lbfgs=LBFGSConfig(gtol=1e-10),
    )
    return HybridOptimizer(cfg).optimize(p.objective, x0, args, num_steps=400).params


def _gauss_newton(p):
    x0, args = _as_jax(p)
    return solve(create_gauss_newton_solver(p.residual), x0, args).params


def _levenberg_marquardt(p):
    x0, args = _as_jax(p)
    sol = solve(create_levenberg_marquardt_solver(p.residual), x0, args)
    assert sol.status == Status.CONVERGED
    return sol.params


def _bfgs(p):
    x0, args = _as_jax(p)
    sol = solve(create_bfgs_solver(p.objective, BFGSConfig(gtol=1e-10)), x0, args)
    assert sol.status == Status.CONVERGED
    return sol.params


def _nys_newton_cg(p):
    # Rank = n (the problems are tiny); Powell's singular Hessian leaves it at MAX_STEPS,
    # linearly close to the minimiser (the problem's atol allows for that).
    x0, args = _as_jax(p)
    config = NysNewtonCGConfig(rank=x0.size)
    sol = solve(create_nys_newton_cg_solver(p.objective, config), x0, args)
    assert sol.status in (Status.CONVERGED, Status.MAX_STEPS)
    return sol.params


SOLVERS = {
    "lbfgs_solver": _lbfgs_solver,
    "lbfgs_transform": _lbfgs_transform,
    "hybrid": _hybrid,
    "gauss_newton": _gauss_newton,
    "levenberg_marquardt": _levenberg_marquardt,
    "bfgs": _bfgs,
    "nys_newton_cg": _nys_newton_cg,
}


# test_bfgs.py solves these with the same configuration to tighter tolerances (x, f, gradient).
CHECKED_ELSEWHERE = {("bfgs", "rosenbrock"), ("bfgs", "beale"), ("bfgs", "spd_quadratic")}


@pytest.mark.parametrize(
    ("solver", "name"),
    [(s, n) for n in sorted(PROBLEMS) for s in sorted(SOLVERS) if (s, n) not in CHECKED_ELSEWHERE],
)
def test_reaches_known_minimiser(solver, name):
    p = PROBLEMS[name]
    x = np.asarray(SOLVERS[solver](p))
    np.testing.assert_allclose(x, p.x_star, atol=p.atol, rtol=0)


SCALAR_SOLVERS = {
    "lbfgs": create_lbfgs_solver,
    "bfgs": create_bfgs_solver,
    "nys_newton_cg": lambda fn: create_nys_newton_cg_solver(fn, NysNewtonCGConfig(rank=2)),
}


@pytest.mark.parametrize("name", sorted(SCALAR_SOLVERS))
def test_nan_objective_is_nonfinite_with_last_finite_iterate(name):
    x0 = jnp.array([0.3, -0.2])
    sol = solve(SCALAR_SOLVERS[name](lambda x, a: jnp.nan * jnp.sum(x**2)), x0)
    assert int(sol.status) == Status.NONFINITE
    np.testing.assert_array_equal(sol.params, x0)


@pytest.mark.parametrize("name", sorted(SCALAR_SOLVERS))
def test_small_max_steps_gives_max_steps(name):
    rosen = PROBLEMS["rosenbrock"]
    x0, args = _as_jax(rosen)
    sol = solve(SCALAR_SOLVERS[name](rosen.objective), x0, args, max_steps=3)
    assert int(sol.status) == Status.MAX_STEPS and int(sol.num_steps) == 3
