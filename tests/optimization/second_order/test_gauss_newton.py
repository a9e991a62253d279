"""Gauss-Newton specifics (shared invariants are crossed with LM in test_levenberg_marquardt.py)."""

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from tests.problems import reverse_only_exponential_residual

from opifex.optimization import Status, solve
from opifex.optimization.second_order._gauss_newton import gauss_newton
from opifex.optimization.second_order.config import GaussNewtonConfig

_T = jnp.linspace(0.0, 1.0, 20)
_NOISY = (_T, 2.0 * jnp.exp(-1.5 * _T) + 0.01 * jnp.sin(7 * _T))


def expfit(p, a):
    t, y = a
    return p[0] * jnp.exp(p[1] * t) - y


def rosenbrock(p, a):
    return jnp.array([10.0 * (p[1] - p[0] ** 2), a - p[0]])


def log_residual(p, a):
    return jnp.log(p) - a  # NaN for p < 0


def _fit(**kw):
    return solve(gauss_newton(expfit, **kw), jnp.array([1.0, -1.0]), _NOISY)


def _values(solver, x0, args, steps):
    state = solver.init(x0, args)
    values, x = [float(state.value)], x0
    for _ in range(steps):
        x, state = solver.step(x, state, args)
        values.append(float(state.value))
    return np.array(values), x, state


def test_full_step_into_nan_gives_nonfinite_with_last_finite_iterate():
    x0 = jnp.array([5.0])
    sol = solve(gauss_newton(log_residual, line_search=False), x0, jnp.array([-3.0]))
    assert int(sol.status) == Status.NONFINITE
    np.testing.assert_array_equal(sol.params, x0)
    # The line search halves back into the domain and converges to exp(-3).
    ok = solve(gauss_newton(log_residual), x0, jnp.array([-3.0]))
    assert int(ok.status) == Status.CONVERGED
    np.testing.assert_allclose(ok.params, [np.exp(-3.0)], rtol=1e-10)


def test_field_line_search():
    with_ls = gauss_newton(rosenbrock, line_search=True)
    without = gauss_newton(rosenbrock, line_search=False)
    v_ls, _, s_ls = _values(with_ls, jnp.array([-1.2, 1.0]), 1.0, 6)
    v_no, _, _ = _values(without, jnp.array([-1.2, 1.0]), 1.0, 2)
    assert np.all(np.diff(v_ls) <= 0)  # Armijo: monotone decrease
    assert v_no[1] > v_no[0]  # the full Gauss-Newton step overshoots
    assert float(s_ls.step_size) <= 1.0


def test_field_max_linesearch_steps():
    # The full step from x = 5 lands at -18 (NaN) and one halving at -6.5 (NaN): a search
    # allowed one halving fails; the default reaches the domain.
    args = jnp.array([-3.0])
    short = solve(gauss_newton(log_residual, max_linesearch_steps=1), jnp.array([5.0]), args)
    assert int(short.status) == Status.LINESEARCH_FAILED
    assert int(short.state.num_fun_evals) == 3  # x0, t = 1, t = 1/2
    default = solve(gauss_newton(log_residual), jnp.array([5.0]), args)
    assert int(default.status) == Status.CONVERGED


def test_field_max_iterations():
    sol = _fit(max_iterations=2)
    assert int(sol.status) == Status.MAX_STEPS and int(sol.num_steps) == 2


def test_field_ftol():
    loose, tight = _fit(ftol=1e-2, xtol=0.0, gtol=0.0), _fit(ftol=1e-14, xtol=0.0, gtol=0.0)
    assert int(loose.status) == int(tight.status) == Status.CONVERGED
    assert int(loose.num_steps) < int(tight.num_steps)


def test_field_xtol():
    loose, tight = _fit(xtol=1e-2, ftol=0.0, gtol=0.0), _fit(xtol=1e-14, ftol=0.0, gtol=0.0)
    assert int(loose.status) == Status.CONVERGED
    assert int(loose.num_steps) < int(tight.num_steps)


def test_field_gtol():
    loose, tight = _fit(gtol=1e-1, ftol=0.0, xtol=0.0), _fit(gtol=1e-13, ftol=0.0, xtol=0.0)
    assert int(loose.status) == Status.CONVERGED
    assert int(loose.num_steps) < int(tight.num_steps)
    assert np.max(np.abs(np.asarray(loose.state.grad))) <= 1e-1


def test_field_linear_solver():
    x0 = jnp.array([1.0, -1.0])
    qr = gauss_newton(expfit, linear_solver="qr").init(x0, _NOISY)
    ch = gauss_newton(expfit, linear_solver="cholesky").init(x0, _NOISY)
    np.testing.assert_allclose(ch.factor, qr.jac.T @ qr.jac, rtol=1e-12)
    np.testing.assert_allclose(qr.factor.T @ qr.factor, ch.factor, rtol=1e-10)
    np.testing.assert_allclose(_fit(linear_solver="cholesky").params, _fit().params, rtol=1e-9)


def test_field_jacobian():
    fn = reverse_only_exponential_residual

    rev = solve(gauss_newton(fn, jacobian="rev"), jnp.array([1.0, -1.0]), _NOISY)
    np.testing.assert_allclose(rev.params, _fit().params, rtol=1e-9)
    with pytest.raises(TypeError):  # a custom_vjp function has no forward mode
        solve(gauss_newton(fn, jacobian="fwd"), jnp.array([1.0, -1.0]), _NOISY)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_iterations": 0},
        {"ftol": -1.0},
        {"xtol": -1.0},
        {"gtol": -1.0},
        {"linear_solver": "lu"},
        {"jacobian": "fd"},
        {"line_search": "yes"},
        {"max_linesearch_steps": 0},
    ],
)
def test_bad_config_raises(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        GaussNewtonConfig(**changes)


def test_config_fields_match_factory():
    fields = {f.name for f in dataclasses.fields(GaussNewtonConfig)}
    params = inspect.signature(gauss_newton).parameters
    assert fields == set(params) - {"residual_fn"}
    defaults = GaussNewtonConfig().to_kwargs()
    assert all(params[k].default == v for k, v in defaults.items())


def test_wrapper_uses_config():
    from opifex.optimization.second_order import create_gauss_newton_solver

    solver = create_gauss_newton_solver(expfit, GaussNewtonConfig(max_iterations=1))
    sol = solve(solver, jnp.array([1.0, -1.0]), _NOISY)
    assert int(sol.status) == Status.MAX_STEPS and int(sol.num_steps) == 1
    with pytest.raises(TypeError, match="GaussNewtonConfig"):
        create_gauss_newton_solver(expfit, {"max_iterations": 1})
