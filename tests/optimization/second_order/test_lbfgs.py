"""L-BFGS: the solver on the core protocol and the optax transformation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tests.problems import problems

from opifex.optimization.core import Status, solve
from opifex.optimization.second_order._lbfgs import (
    _inverse_hessian_product,
    _memory_init,
    _push_pair,
    lbfgs_solver,
    lbfgs_transform,
)
from opifex.optimization.second_order.config import LBFGSConfig

# Rosenbrock, Beale and Powell's singular function from the shared list: their minimisers are
# checked for every solver, this one included, in test_reference_problems.py.
rosenbrock = next(p for p in problems() if p.name == "rosenbrock").objective


def quadratic(params, args):
    """0.5 x'Ax - b'x on a dict of params; minimiser A^{-1} b."""
    a, b = args
    x = jnp.concatenate([params["u"], params["v"].ravel()])
    return 0.5 * x @ a @ x - b @ x


def _spd(n, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return jnp.asarray(q @ np.diag(np.logspace(0, 2, n)) @ q.T), jnp.asarray(rng.normal(size=n))


def _split(x):
    return {"u": x[:2], "v": x[2:].reshape(2, 2)}


def test_spd_quadratic_on_a_pytree():
    a, b = _spd(6)
    x0 = _split(jnp.zeros(6))
    sol = solve(lbfgs_solver(quadratic, gtol=1e-10), x0, (a, b))
    assert int(sol.status) == Status.CONVERGED
    expected = _split(jnp.linalg.solve(a, b))
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-9), sol.params, expected)
    assert jax.tree.structure(sol.params) == jax.tree.structure(x0)


def test_compact_two_loop_matches_dense_bfgs_inverse():
    # With every pair in memory the two-loop product equals the dense BFGS inverse update.
    rng = np.random.default_rng(1)
    n, m = 5, 3
    mem = _memory_init(m + 1, jnp.zeros(n), jnp.asarray(0.7))
    pairs = []
    for _ in range(m):
        s = jnp.asarray(rng.normal(size=n))
        y = s + 0.1 * jnp.asarray(rng.normal(size=n))
        mem, ok = _push_pair(s, y, mem, 1e-12, scale_init_precond=False)
        assert bool(ok)
        pairs.append((s, y))
    h = 0.7 * jnp.eye(n)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        v = jnp.eye(n) - rho * jnp.outer(y, s)
        h = v.T @ h @ v + rho * jnp.outer(s, s)
    g = jnp.asarray(rng.normal(size=n))
    np.testing.assert_allclose(_inverse_hessian_product(g, mem), h @ g, rtol=1e-12)


def test_jit_equals_no_jit():
    # The first iterates, memory updates and line searches included; running every eager step
    # to convergence costs seconds of op-by-op dispatch and checks nothing more.
    solver = lbfgs_solver(lambda x, a: jnp.sum((x - 1.0) ** 2 + 0.1 * x**4), gtol=1e-10)
    x = jnp.array([2.0, -1.0])
    sol = solve(solver, x, max_steps=3)
    assert int(sol.status) == Status.MAX_STEPS
    with jax.disable_jit():
        state = solver.init(x, None)
        for _ in range(3):
            x, state = solver.step(x, state, None)
    assert int(state.count) == int(sol.num_steps) == 3
    np.testing.assert_allclose(x, sol.params, rtol=1e-10)
    np.testing.assert_allclose(state.grad, sol.state.grad, rtol=1e-10)


def test_no_retrace_on_second_call():
    traces = []

    def fn(x, a):
        traces.append(1)
        return jnp.sum((x - a) ** 2) + jnp.sum(x**4)

    solver = lbfgs_solver(fn)
    solve(solver, jnp.zeros(3), jnp.array([1.0, 2.0, 3.0]))
    first = len(traces)
    sol = solve(solver, jnp.ones(3), jnp.array([-1.0, 0.5, 2.0]))
    assert first > 0 and len(traces) == first
    assert int(sol.status) == Status.CONVERGED


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_kept(dtype):
    sol = solve(lbfgs_solver(rosenbrock, gtol=1e-4), jnp.array([-1.2, 1.0], dtype), 1.0)
    assert sol.params.dtype == dtype and sol.value.dtype == dtype
    assert sol.state.grad.dtype == dtype and sol.state.memory.s.dtype == dtype
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-2)


def test_vmap_equals_loop():
    solver = lbfgs_solver(rosenbrock)
    x0 = jnp.array([[-1.2, 1.0], [2.0, 2.0], [0.0, 0.0]])
    a = jnp.array([1.0, 1.5, 0.5])
    batched = jax.vmap(lambda x, ai: solve(solver, x, ai).params)(x0, a)
    looped = jnp.stack([solve(solver, x, ai).params for x, ai in zip(x0, a, strict=True)])
    np.testing.assert_allclose(batched, looped, rtol=1e-10)
    np.testing.assert_allclose(batched, jnp.stack([a, a**2], axis=1), atol=1e-6)


def test_grad_through_solve_matches_finite_differences():
    a, b = _spd(4, seed=3)
    solver = lbfgs_solver(lambda x, bb: 0.5 * x @ a @ x - bb @ x + 0.1 * jnp.sum(x**4), gtol=1e-12)

    def loss(bb):
        return jnp.sum(solve(solver, jnp.zeros(4), bb).params ** 2)

    grad = jax.grad(loss)(b)
    # The solve is exact to ~1e-9 (float64 rounding of f), so the difference step is large.
    eps = 1e-3
    fd = [(loss(b.at[i].add(eps)) - loss(b.at[i].add(-eps))) / (2 * eps) for i in range(b.size)]
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)


def test_curvature_skip_on_linear_direction():
    # On a linear objective y = 0, so s'y = 0 and the pair must be skipped.
    solver = lbfgs_solver(lambda x, a: jnp.sum(x), max_linesearch_steps=3)
    x = jnp.zeros(2)
    state = solver.init(x, None)
    _, state = solver.step(x, state, None)
    assert int(state.memory.head) == 0
    np.testing.assert_array_equal(state.memory.rho, 0.0)
    # A curved objective stores its pair.
    solver = lbfgs_solver(lambda x, a: jnp.sum(x**2 + x))
    state = solver.init(x, None)
    _, state = solver.step(x, state, None)
    assert int(state.memory.head) == 1 and float(state.memory.rho[0]) > 0


def test_non_scalar_objective_rejected_with_shape():
    solver = lbfgs_solver(lambda x, a: x**2)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        solver.init(jnp.zeros(3), None)


@pytest.mark.parametrize(
    "bad",
    [
        {"memory_size": 0},
        {"max_iterations": 0},
        {"gtol": -1.0},
        {"ftol": -1.0},
        {"learning_rate": 0.0},
        {"linesearch": "wolfe"},
        {"max_linesearch_steps": 0},
        {"c1": 0.0},
        {"c2": 1e-5},
        {"curvature_eps": -1.0},
        {"scale_init_precond": 1},
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LBFGSConfig(**bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        lbfgs_solver(rosenbrock, **bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        lbfgs_transform(**bad)


def _run(**changes):
    kwargs = LBFGSConfig().replace(**changes).to_kwargs()
    sol = solve(lbfgs_solver(rosenbrock, **kwargs), jnp.array([-1.2, 1.0]), 1.0, max_steps=5000)
    return sol


@pytest.fixture(scope="module")
def baseline():
    return _run()


def _summary(sol):
    return (
        int(sol.status),
        int(sol.num_steps),
        int(sol.state.num_fun_evals),
        float(sol.value),
    )


# Each config field changes the run on Rosenbrock (iterations, evaluations, status or result).
FIELD_CHANGES = {
    "memory_size": 1,
    "max_iterations": 5,
    "gtol": 1e-3,
    "ftol": 1e-6,
    "learning_rate": 0.1,
    "linesearch": "backtracking",
    "max_linesearch_steps": 1,
    "c1": 0.4,
    "c2": 0.1,
    "curvature_eps": 2.0,  # s'y > 2 ||s|| ||y|| never holds: every pair skipped
    "scale_init_precond": False,
}


def test_every_config_field_is_covered():
    assert set(FIELD_CHANGES) == {f.name for f in dataclasses.fields(LBFGSConfig)}


@pytest.mark.parametrize(("field", "value"), FIELD_CHANGES.items())
def test_config_field_changes_behaviour(baseline, field, value):
    changed = _run(**{field: value})
    assert _summary(changed) != _summary(baseline)
    if field == "max_iterations":
        assert int(changed.status) == Status.MAX_STEPS and int(changed.num_steps) == 5
    if field in ("gtol", "ftol"):
        assert int(changed.num_steps) < int(baseline.num_steps)
        assert int(changed.status) == Status.CONVERGED
    if field == "curvature_eps":
        np.testing.assert_array_equal(changed.state.memory.rho, 0.0)


# --- the optax transformation -------------------------------------------------------------


def _optax_loop(opt, fn, x, steps):
    state = opt.init(x)
    value_and_grad = optax.value_and_grad_from_state(fn)

    @jax.jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(x, updates), state

    path = []
    for _ in range(steps):
        x, state = step(x, state)
        path.append(x)
    return x, state, path


def test_transform_reaches_rosenbrock_minimum():
    fn = lambda x: rosenbrock(x, 1.0)  # noqa: E731
    x, state, _ = _optax_loop(lbfgs_transform(), fn, jnp.array([-1.2, 1.0]), 60)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-8)
    assert float(optax.tree.get(state, "value")) < 1e-16


def test_transform_agrees_with_optax_lbfgs_on_quadratic():
    a, b = _spd(5, seed=2)
    fn = lambda x: 0.5 * x @ a @ x - b @ x  # noqa: E731
    x0 = jnp.zeros(5)
    ours = _optax_loop(lbfgs_transform(), fn, x0, 40)[2]
    theirs = _optax_loop(optax.lbfgs(), fn, x0, 40)[2]
    for p, q in zip(ours[:4], theirs[:4], strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours[-1], jnp.linalg.solve(a, b), atol=1e-8)


def test_transform_stops_at_gtol_without_evaluating():
    fn = lambda x: jnp.sum((x - 3.0) ** 2)  # noqa: E731
    x, state, _ = _optax_loop(lbfgs_transform(gtol=1e-6), fn, jnp.zeros(3), 6)
    np.testing.assert_allclose(x, 3.0)
    assert int(optax.tree.get(state, "num_evals")) == 0


def test_transform_in_nnx_optimizer():
    class Linear(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 1)))
            self.b = nnx.Param(jnp.zeros((1,)))

        def __call__(self, x):
            return x @ self.w + self.b

    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(20, 3)))
    ys = xs @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3
    model = Linear(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, lbfgs_transform(), wrt=nnx.Param)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def value_fn(params):
        return jnp.mean((nnx.merge(graphdef, params, rest)(xs) - ys) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        params = nnx.state(model, nnx.Param)
        value, grad = jax.value_and_grad(value_fn)(params)
        optimizer.update(model, grad, value=value, grad=grad, value_fn=value_fn)
        return value

    for _ in range(15):
        train_step(model, optimizer)
    np.testing.assert_allclose(model.w[...].ravel(), [1.0, -2.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(model.b[...], [0.3], atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_transform_keeps_dtype_on_a_pytree(dtype):
    fn = lambda p: jnp.sum((p["a"] - 2.0) ** 2) + jnp.sum((p["b"] + 1.0) ** 4)  # noqa: E731
    x0 = {"a": jnp.zeros(2, dtype), "b": jnp.zeros((2, 2), dtype)}
    x, state, _ = _optax_loop(lbfgs_transform(), fn, x0, 30)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(x))
    assert optax.tree.get(state, "value").dtype == dtype
    np.testing.assert_allclose(x["a"], 2.0, atol=1e-5)
    np.testing.assert_allclose(x["b"], -1.0, atol=2e-2)


def test_linesearch_failure_status_and_tiny_gradient_convergence():
    # A gradient of the wrong sign: no step along -H g decreases f.
    @jax.custom_jvp
    def wrong(x):
        return jnp.sum((x - 1.0) ** 2)

    @wrong.defjvp
    def _wrong_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return wrong(x), -2.0 * jnp.vdot(x - 1.0, t)

    sol = solve(lbfgs_solver(lambda x, a: wrong(x)), jnp.zeros(2))
    assert int(sol.status) == Status.LINESEARCH_FAILED
    np.testing.assert_array_equal(sol.params, 0.0)
    # gtol = 0 cannot be met; the solve ends CONVERGED once f stops decreasing at a gradient
    # as small as float64 allows, not LINESEARCH_FAILED.
    sol = solve(lbfgs_solver(rosenbrock, gtol=0.0), jnp.array([-1.2, 1.0]), 1.0)
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, [1.0, 1.0], atol=1e-8)


def test_transform_rejects_gradient_of_wrong_shape():
    opt = lbfgs_transform()
    x = jnp.zeros(3)
    state = opt.init(x)
    f = lambda x: jnp.sum(x**2)  # noqa: E731
    with pytest.raises(ValueError, match=r"gradient shapes \(4,\) for params shapes \(3,\)"):
        opt.update(jnp.zeros(4), state, x, value=f(x), grad=jnp.zeros(4), value_fn=f)
