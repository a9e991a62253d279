"""The shared line search: strong Wolfe conditions, reuse of value/gradient, fallbacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization.second_order._linesearch import line_search

C1, C2 = 1e-4, 0.9


def _rosen(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def _quadratic(x):
    h = jnp.diag(jnp.arange(1.0, x.size + 1.0))
    return 0.5 * x @ h @ x - jnp.sum(x)


def _exp_sum(x):
    return jnp.sum(jnp.exp(x) - 2.0 * x)


CASES = [
    # (objective, start point, first trial step): short steps need bracketing (extrapolation),
    # long ones need the zoom.
    (_rosen, [-1.2, 1.0], 1.0),
    (_rosen, [-1.2, 1.0], 1e-5),
    (_rosen, [0.5, 0.9], 1e-2),
    (_quadratic, [1.0, -2.0, 3.0], 1e-3),
    (_quadratic, [1.0, -2.0, 3.0], 10.0),
    (_exp_sum, [2.0, -1.0], 1.0),
    (_exp_sum, [2.0, -1.0], 100.0),
]


@pytest.mark.parametrize(("fn", "x0", "alpha0"), CASES)
def test_zoom_meets_strong_wolfe(fn, x0, alpha0):
    x = jnp.asarray(x0)
    value_and_grad = jax.value_and_grad(fn)
    f0, g0 = value_and_grad(x)
    d = -g0
    res = line_search(value_and_grad, x, f0, g0, d, initial_step=alpha0, c1=C1, c2=C2)
    assert bool(res.success) and bool(res.wolfe)
    a = float(res.stepsize)
    slope0 = float(g0 @ d)
    f_a, g_a = value_and_grad(x + a * d)
    assert float(f_a) <= float(f0) + C1 * a * slope0
    assert abs(float(g_a @ d)) <= C2 * abs(slope0)
    # The value and gradient returned are those at the accepted point (reused by callers).
    np.testing.assert_allclose(res.value, f_a, rtol=1e-10)
    np.testing.assert_allclose(res.grad, g_a, rtol=1e-10, atol=1e-12)


def test_exact_minimiser_of_quadratic_with_tight_c2():
    # With c2 -> 0 the strong Wolfe point approaches the exact line minimiser.
    x = jnp.array([1.0, -2.0, 3.0])
    value_and_grad = jax.value_and_grad(_quadratic)
    f0, g0 = value_and_grad(x)
    d = -g0
    res = line_search(value_and_grad, x, f0, g0, d, initial_step=1e-3, c2=1e-6)
    h = jnp.diag(jnp.arange(1.0, 4.0))
    exact = -(g0 @ d) / (d @ h @ d)
    np.testing.assert_allclose(res.stepsize, exact, rtol=1e-5)


def test_backtracking_meets_armijo():
    x = jnp.array([-1.2, 1.0])
    value_and_grad = jax.value_and_grad(_rosen)
    f0, g0 = value_and_grad(x)
    res = line_search(value_and_grad, x, f0, g0, -g0, initial_step=1.0, method="backtracking")
    a = float(res.stepsize)
    assert bool(res.success) and not bool(res.wolfe)
    assert 0 < a < 1.0
    assert float(_rosen(x - a * g0)) <= float(f0) - C1 * a * float(g0 @ g0)


def test_fallback_when_curvature_never_holds():
    # A lying gradient (always steeply downhill along d) defeats the curvature condition,
    # so the zoom's bracket collapses; the best sufficient-decrease point is returned.
    def value_and_grad(x):
        return jnp.sum((x - 1.0) ** 2), -10.0 * jnp.ones_like(x)

    x = jnp.zeros(1)
    f0, g0 = value_and_grad(x)
    d = jnp.ones(1)
    res = line_search(value_and_grad, x, f0, g0, d, initial_step=0.25, max_steps=30)
    a = float(res.stepsize)
    assert bool(res.success) and not bool(res.wolfe)
    assert float((a - 1.0) ** 2) <= float(f0) + C1 * a * float(g0 @ d)
    assert int(res.num_evals) <= 30


def test_fallback_backtracking_when_zoom_budget_runs_out():
    # The zoom gets one evaluation, which fails sufficient decrease; the backtracking
    # fallback then finds an Armijo step below it.
    value_and_grad = jax.value_and_grad(lambda x: jnp.sum(x**4))
    x = jnp.array([1.0])
    f0, g0 = value_and_grad(x)
    d = -g0
    res = line_search(value_and_grad, x, f0, g0, d, initial_step=1.0, max_steps=1)
    a = float(res.stepsize)
    assert bool(res.success) and not bool(res.wolfe)
    assert int(res.num_evals) >= 2
    assert float((1.0 + a * float(d[0])) ** 4) <= float(f0) + C1 * a * float(g0 @ d)


def test_non_descent_direction_fails_without_evaluating():
    value_and_grad = jax.value_and_grad(_rosen)
    x = jnp.array([-1.2, 1.0])
    f0, g0 = value_and_grad(x)
    res = line_search(value_and_grad, x, f0, g0, g0)
    assert not bool(res.success)
    assert int(res.num_evals) == 0 and float(res.stepsize) == 0.0
    np.testing.assert_array_equal(res.grad, g0)


def test_nan_region_is_backed_out_of():
    # f is NaN beyond x = 0.5: trials there count as failures and the step stays finite.
    def fn(x):
        return jnp.where(x[0] > 0.5, jnp.nan, (x[0] - 2.0) ** 2)

    value_and_grad = jax.value_and_grad(fn)
    x = jnp.zeros(1)
    f0, g0 = value_and_grad(x)
    res = line_search(value_and_grad, x, f0, g0, -g0, initial_step=1.0)
    assert bool(res.success)
    assert np.isfinite(float(res.value)) and float(res.value) < float(f0)
    assert float(res.stepsize) * 4.0 <= 0.5


def test_runs_under_jit_and_vmap():
    value_and_grad = jax.value_and_grad(_rosen)

    def one(x):
        f0, g0 = value_and_grad(x)
        return line_search(value_and_grad, x, f0, g0, -g0, initial_step=1e-3).stepsize

    xs = jnp.array([[-1.2, 1.0], [0.5, 0.9], [2.0, 2.0]])
    batched = jax.jit(jax.vmap(one))(xs)
    looped = jnp.stack([one(x) for x in xs])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_bad_method_raises():
    value_and_grad = jax.value_and_grad(_rosen)
    x = jnp.zeros(2)
    f0, g0 = value_and_grad(x)
    with pytest.raises(ValueError, match="method"):
        line_search(value_and_grad, x, f0, g0, -g0, method="wolfe")
