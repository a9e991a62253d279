"""The core protocol: solve driver, statuses, NaN guard, implicit diff, vmap, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization import Solution, Solver, SolverError, Status, solve, solve_batch
from opifex.optimization.core._examples import gradient_descent


def quad(x, a):
    # minimiser x* = a, Hessian 2 I
    return jnp.sum((x - a) ** 2)


def test_converges_to_known_minimiser():
    a = jnp.array([1.0, -2.0, 0.5])
    sol = solve(gradient_descent(quad), jnp.zeros(3), a, max_steps=500)
    assert sol.status == Status.CONVERGED
    np.testing.assert_allclose(sol.params, a, atol=1e-8)
    assert float(sol.value) < 1e-16
    # x_k - a = (1 - 2 lr)^k (x_0 - a): the step count follows from the contraction rate.
    expected = int(np.ceil(np.log(1e-8 / (2 * np.linalg.norm(a))) / np.log(0.8)))
    assert abs(int(sol.num_steps) - expected) <= 1


def test_max_steps_status_and_raise():
    sol = solve(gradient_descent(quad), jnp.zeros(2), jnp.ones(2), max_steps=3)
    assert sol.status == Status.MAX_STEPS and int(sol.num_steps) == 3
    # after 3 steps x = a (1 - 0.8^3)
    np.testing.assert_allclose(sol.params, np.full(2, 1 - 0.8**3), rtol=1e-12)
    with pytest.raises(SolverError, match=r"MAX_STEPS.*after 3 steps.*raise `max_steps`"):
        sol.raise_for_status()
    with pytest.raises(SolverError):
        solve(gradient_descent(quad), jnp.zeros(2), jnp.ones(2), max_steps=3, throw=True)


def test_zero_steps_and_already_optimal():
    sol = solve(gradient_descent(quad), jnp.ones(2), jnp.ones(2), max_steps=0)
    assert sol.status == Status.CONVERGED and int(sol.num_steps) == 0
    sol = solve(gradient_descent(quad), jnp.zeros(2), jnp.ones(2), max_steps=0)
    assert sol.status == Status.MAX_STEPS


def test_nonfinite_keeps_last_finite_iterate():
    # f is finite for x < 1.5 only: x0 = 0 -> x1 = 1.2 -> x2 = 1.68 (NaN).
    def f(x, a):
        return jnp.sum(jnp.where(x < 1.5, (x - a) ** 2, jnp.nan))

    sol = solve(gradient_descent(f, learning_rate=0.3), jnp.array([0.0]), 2.0, max_steps=50)
    assert sol.status == Status.NONFINITE and int(sol.num_steps) == 2
    np.testing.assert_allclose(sol.params, [1.2])
    assert np.all(np.isfinite(np.asarray(sol.params))) and np.isfinite(float(sol.value))
    np.testing.assert_allclose(sol.value, f(sol.params, 2.0))
    with pytest.raises(SolverError, match="NONFINITE"):
        sol.raise_for_status()


def test_nonfinite_start():
    sol = solve(gradient_descent(quad), jnp.array([jnp.nan, 0.0]), jnp.ones(2), max_steps=10)
    assert sol.status == Status.NONFINITE and int(sol.num_steps) == 0


def test_jit_equals_nojit_and_no_retrace():
    traces = []

    def f(x, a):
        traces.append(1)
        return jnp.sum((x - a) ** 2) + 0.1 * jnp.sum(x**4)

    solver = gradient_descent(f, learning_rate=0.05)
    a = jnp.array([1.0, 2.0])
    s1 = solve(solver, jnp.zeros(2), a, max_steps=200)
    n = len(traces)
    s2 = solve(solver, jnp.zeros(2), a + 1.0, max_steps=200)
    assert len(traces) == n, "second solve with same shapes must not retrace"
    s3 = jax.jit(lambda x, a: solve(solver, x, a, max_steps=200))(jnp.zeros(2), a)
    np.testing.assert_allclose(s1.params, s3.params, rtol=1e-12)
    assert not np.allclose(s1.params, s2.params)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_kept(dtype):
    sol = solve(gradient_descent(quad, gtol=1e-4), jnp.zeros(3, dtype), jnp.ones(3, dtype))
    assert sol.params.dtype == dtype and sol.value.dtype == dtype
    assert sol.status.dtype == jnp.int32 and sol.num_steps.dtype == jnp.int32
    assert sol.status == Status.CONVERGED


def test_vmap_equals_loop_and_solve_batch():
    solver = gradient_descent(quad)
    a = jnp.array([[1.0, 2.0], [-3.0, 0.5], [0.0, 0.0]])
    x0 = jnp.zeros_like(a)
    batched = jax.vmap(lambda x, a: solve(solver, x, a, max_steps=400))(x0, a)
    for i in range(3):
        single = solve(solver, x0[i], a[i], max_steps=400)
        np.testing.assert_allclose(batched.params[i], single.params, rtol=1e-12)
        assert int(batched.num_steps[i]) == int(single.num_steps)
    # the problem already at its optimum stops at 0 steps while the others keep running
    assert int(batched.num_steps[2]) == 0
    sb = solve_batch(solver, x0, a, max_steps=400)
    np.testing.assert_allclose(sb.params, batched.params)
    assert isinstance(sb, Solution) and sb.converged.all()


def test_solve_batch_rejects_ragged():
    with pytest.raises(ValueError, match="leading batch axis"):
        solve_batch(gradient_descent(quad), jnp.zeros((3, 2)), jnp.zeros((2, 2)))


def test_implicit_grad_matches_finite_differences():
    # argmin_x sum((x - a)^2) + c sum(x^4) depends nonlinearly on a.
    def f(x, args):
        a, c = args
        return jnp.sum((x - a) ** 2) + c * jnp.sum(x**4)

    solver = gradient_descent(f, learning_rate=0.05, gtol=1e-12)

    def loss(a, c):
        x = solve(solver, jnp.zeros(2), (a, c), max_steps=5000).params
        return jnp.sum(x**2 * jnp.array([1.0, 3.0]))

    a, c = jnp.array([1.0, -0.7]), 0.3
    ga, gc = jax.grad(loss, argnums=(0, 1))(a, c)
    eps = 1e-6
    fd_a = [(loss(a.at[i].add(eps), c) - loss(a.at[i].add(-eps), c)) / (2 * eps) for i in range(2)]
    fd_c = (loss(a, c + eps) - loss(a, c - eps)) / (2 * eps)
    np.testing.assert_allclose(ga, fd_a, rtol=1e-6)
    np.testing.assert_allclose(gc, fd_c, rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_steps must be an int >= 0"):
        solve(gradient_descent(quad), jnp.zeros(2), jnp.ones(2), max_steps=-1)
    with pytest.raises(TypeError, match="Solver"):
        solve((lambda p, a: p, None), jnp.zeros(2))

    class BadState(tuple):
        pass

    bad = Solver(lambda p, a: BadState(), lambda p, s, a: (p, s))
    with pytest.raises(TypeError, match="count"):
        solve(bad, jnp.zeros(2))


def test_solver_error_message_names_status():
    err = SolverError(Status.LINESEARCH_FAILED, 7, 1.5)
    assert "LINESEARCH_FAILED" in str(err) and "after 7 steps" in str(err) and "Try:" in str(err)


def test_sharded_batch_equals_single_device(tmp_path):
    # A fresh interpreter: the host device count is fixed when JAX starts.
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        from opifex.optimization import solve_batch
        from opifex.optimization.core._examples import gradient_descent
        assert len(jax.local_devices()) == 4, jax.local_devices()
        f = lambda x, a: jnp.sum((x - a) ** 2) + 0.1 * jnp.sum(x ** 4)
        solver = gradient_descent(f, learning_rate=0.05)
        a = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)))
        x0 = jnp.zeros_like(a)
        multi = solve_batch(solver, x0, a, max_steps=500)
        one = solve_batch(solver, x0, a, max_steps=500, devices=jax.local_devices()[:1])
        assert len(multi.params.sharding.device_set) == 4 or multi.params.shape[0] == 7
        np.testing.assert_allclose(multi.params, one.params, rtol=1e-13)
        np.testing.assert_array_equal(multi.num_steps, one.num_steps)
        print("OK", multi.params.shape)
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK (7, 3)" in out.stdout


def test_solver_budget_used_when_caller_gives_none():
    base = gradient_descent(quad)
    own = base._replace(max_steps=4)
    sol = solve(own, jnp.zeros(2), jnp.ones(2))
    assert sol.status == Status.MAX_STEPS and int(sol.num_steps) == 4
    # an explicit max_steps wins over the solver's own budget
    assert int(solve(own, jnp.zeros(2), jnp.ones(2), max_steps=2).num_steps) == 2
    # no budget anywhere: the documented default
    from opifex.optimization.core._solver import DEFAULT_MAX_STEPS

    slow = gradient_descent(quad, learning_rate=1e-4)
    assert int(solve(slow, jnp.zeros(2), jnp.ones(2)).num_steps) == DEFAULT_MAX_STEPS
