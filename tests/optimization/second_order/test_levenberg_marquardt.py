"""Levenberg-Marquardt (and, crossed, Gauss-Newton) on least-squares problems with known answers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares
from tests.problems import reverse_only_exponential_residual

from opifex.optimization import Status, solve
from opifex.optimization.second_order import _least_squares as lsq
from opifex.optimization.second_order._gauss_newton import gauss_newton
from opifex.optimization.second_order._levenberg_marquardt import levenberg_marquardt
from opifex.optimization.second_order.config import LevenbergMarquardtConfig

# ---------------------------------------------------------------- reference problems


def linear(p, a):
    mat, b = a
    return mat @ p - b


def expfit(p, a):
    t, y = a
    return p[0] * jnp.exp(p[1] * t) - y


def rosenbrock(p, a):
    return jnp.array([10.0 * (p[1] - p[0] ** 2), a - p[0]])


def beale(p, a):
    x, y = p[0], p[1]
    return jnp.array([1.5 - x * (1 - y), 2.25 - x * (1 - y**2), 2.625 - x * (1 - y**3)]) * a


def helical_valley(p, a):
    x1, x2, x3 = p[0], p[1], p[2]
    theta = jnp.arctan2(x2, x1) / (2 * jnp.pi)
    return jnp.array([10 * (x3 - 10 * theta), 10 * (jnp.sqrt(x1**2 + x2**2) - 1), x3]) * a


def box3d(p, a):
    t = 0.1 * jnp.arange(1.0, 11.0)
    return (jnp.exp(-t * p[0]) - jnp.exp(-t * p[1]) - p[2] * (jnp.exp(-t) - jnp.exp(-10 * t))) * a


def _linear_data(seed=0, m=12, n=4):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(m, n))), jnp.asarray(rng.normal(size=m))


_T = jnp.linspace(0.0, 1.0, 20)
_Y = 2.0 * jnp.exp(-1.5 * _T)

# name -> (residual, x0, args, truth); truths are closed forms or textbook minimisers (MGH).
PROBLEMS = {
    "linear": (
        linear,
        jnp.zeros(4),
        _linear_data(),
        np.linalg.lstsq(*map(np.asarray, _linear_data()), rcond=None)[0],
    ),
    "expfit": (expfit, jnp.array([1.0, -1.0]), (_T, _Y), np.array([2.0, -1.5])),
    "rosenbrock": (rosenbrock, jnp.array([-1.2, 1.0]), 1.0, np.array([1.0, 1.0])),
    "beale": (beale, jnp.array([1.0, 0.5]), 1.0, np.array([3.0, 0.5])),
    "helical_valley": (helical_valley, jnp.array([-1.0, 0.0, 0.0]), 1.0, np.array([1.0, 0, 0])),
    "box3d": (box3d, jnp.array([0.0, 10.0, 20.0]), 1.0, np.array([1.0, 10.0, 1.0])),
}

SOLVERS = {"lm": levenberg_marquardt, "gn": gauss_newton}


@pytest.mark.parametrize("solver_name", SOLVERS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_reference_problems(solver_name, problem):
    fn, x0, args, truth = PROBLEMS[problem]
    sol = solve(SOLVERS[solver_name](fn), x0, args, max_steps=500)
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, truth, atol=1e-7, rtol=1e-7)


def test_linear_matches_lstsq_in_one_step():
    mat, b = _linear_data(3, 30, 5)
    sol = solve(gauss_newton(linear), jnp.zeros(5), (mat, b))
    expected = np.linalg.lstsq(np.asarray(mat), np.asarray(b), rcond=None)[0]
    np.testing.assert_allclose(sol.params, expected, rtol=1e-12, atol=1e-12)
    assert int(sol.state.num_jac_evals) <= 3


# ------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_jit_equals_no_jit(factory):
    solver = factory(expfit)
    x0 = jnp.array([1.0, -1.0])
    # The first iterates (with their damping updates); the eager run is op-by-op and slow.
    jitted = solve(solver, x0, (_T, _Y), max_steps=4)
    with jax.disable_jit():
        eager = solve(solver, x0, (_T, _Y), max_steps=4)
    np.testing.assert_allclose(jitted.params, eager.params, rtol=1e-12)
    assert int(jitted.num_steps) == int(eager.num_steps)
    assert not np.allclose(jitted.params, x0)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_no_retrace_on_second_solve(factory):
    traces = []

    def counted(p, a):
        traces.append(1)
        return expfit(p, a)

    solver = factory(counted)
    solve(solver, jnp.array([1.0, -1.0]), (_T, _Y))
    first = len(traces)
    sol = solve(solver, jnp.array([1.5, -1.2]), (_T, 3.0 * _Y))
    assert len(traces) == first
    np.testing.assert_allclose(sol.params, [6.0, -1.5], rtol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_dtype_kept(factory, dtype):
    x0 = jnp.array([1.0, -1.0], dtype)
    sol = solve(factory(expfit), x0, (_T.astype(dtype), _Y.astype(dtype)))
    assert sol.params.dtype == dtype
    assert sol.value.dtype == dtype
    assert int(sol.status) == Status.CONVERGED
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(sol.params, [2.0, -1.5], rtol=tol)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_vmap_equals_loop(factory):
    solver = factory(expfit)
    scales = jnp.array([1.0, 2.0, 0.5])
    ys = scales[:, None] * _Y[None, :]
    batched = jax.vmap(lambda y: solve(solver, jnp.array([1.0, -1.0]), (_T, y)).params)(ys)
    looped = [solve(solver, jnp.array([1.0, -1.0]), (_T, y)).params for y in ys]
    np.testing.assert_allclose(batched, np.stack(looped), rtol=1e-10)
    np.testing.assert_allclose(batched[:, 0], 2.0 * scales, rtol=1e-8)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_grad_through_solve_linear_closed_form(factory):
    mat, b = _linear_data(1, 10, 3)
    w = jnp.array([1.0, -2.0, 0.5])

    def loss(b):
        return w @ solve(factory(linear), jnp.zeros(3), (mat, b)).params

    grad = jax.grad(loss)(b)
    expected = np.linalg.pinv(np.asarray(mat)).T @ np.asarray(w)
    np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_grad_through_solve_nonlinear_finite_differences(factory):
    y = _Y + 0.01 * jnp.sin(7 * _T)  # a non-zero-residual fit
    solver = factory(expfit, ftol=0.0, xtol=1e-15, gtol=1e-15)

    @jax.jit
    def loss(y):
        p = solve(solver, jnp.array([1.0, -1.0]), (_T, y)).params
        return p[0] + 3.0 * p[1]

    grad = jax.grad(loss)(y)
    eps = 1e-3  # central differences: O(eps^2) truncation, well above the solver's noise
    for i in (0, 7, 19):
        e = jnp.zeros_like(y).at[i].set(eps)
        fd = (loss(y + e) - loss(y - e)) / (2 * eps)
        np.testing.assert_allclose(grad[i], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_nan_residual_gives_nonfinite_and_keeps_x0(factory):
    y = _Y.at[3].set(jnp.nan)
    x0 = jnp.array([1.0, -1.0])
    sol = solve(factory(expfit), x0, (_T, y))
    assert int(sol.status) == Status.NONFINITE
    np.testing.assert_array_equal(sol.params, x0)


def test_lm_rejects_nonfinite_trials_and_still_converges():
    # log(p) is NaN for p < 0; the undamped first step overshoots there.
    def fn(p, a):
        return jnp.log(p) - a

    sol = solve(levenberg_marquardt(fn, initial_damping=1e-12), jnp.array([5.0]), jnp.array([-3.0]))
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.params, [np.exp(-3.0)], rtol=1e-10)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_tiny_max_steps(factory):
    sol = solve(factory(rosenbrock), jnp.array([-1.2, 1.0]), 1.0, max_steps=2)
    assert int(sol.status) == Status.MAX_STEPS
    assert int(sol.num_steps) == 2


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_pytree_params(factory):
    def fn(p, a):
        t, y = a
        return p["amp"] * jnp.exp(p["rate"][0] * t) - y

    x0 = {"amp": jnp.asarray(1.0), "rate": jnp.array([-1.0])}
    sol = solve(factory(fn), x0, (_T, _Y))
    assert set(sol.params) == {"amp", "rate"} and sol.params["rate"].shape == (1,)
    np.testing.assert_allclose(sol.params["amp"], 2.0, rtol=1e-10)
    np.testing.assert_allclose(sol.params["rate"], [-1.5], rtol=1e-10)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_forward_and_reverse_jacobians_agree(factory):
    fwd = solve(factory(box3d, jacobian="fwd"), jnp.array([0.0, 10.0, 20.0]), 1.0)
    rev = solve(factory(box3d, jacobian="rev"), jnp.array([0.0, 10.0, 20.0]), 1.0)
    np.testing.assert_allclose(fwd.params, rev.params, rtol=1e-10, atol=1e-12)
    assert int(fwd.num_steps) == int(rev.num_steps)


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_qr_and_cholesky_agree_on_well_conditioned(factory):
    qr = solve(factory(expfit, linear_solver="qr"), jnp.array([1.0, -1.0]), (_T, _Y))
    ch = solve(factory(expfit, linear_solver="cholesky"), jnp.array([1.0, -1.0]), (_T, _Y))
    np.testing.assert_allclose(qr.params, ch.params, rtol=1e-10)


def test_cholesky_falls_back_to_qr_on_rank_deficient():
    # Two identical columns: J'J + lam D'D is singular in floating point for a tiny lam, so
    # its Cholesky factor is not finite; the QR of [J; sqrt(lam) D] is still full rank.
    rng = np.random.default_rng(5)
    u, v = rng.normal(size=30), rng.normal(size=30)
    mat = jnp.asarray(np.stack([u, u, v], axis=1))
    b = jnp.asarray(rng.normal(size=30))
    lam, diag = jnp.asarray(1e-20), lsq.column_norms(mat)
    factor, rhs = lsq.factorize(mat, -b, "cholesky")
    assert not bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(factor + lam * jnp.diag(diag**2)))))
    by_chol = lsq.damped_step(factor, rhs, mat, -b, diag, lam, "cholesky")
    r_mat, qtr = lsq.factorize(mat, -b, "qr")
    by_qr = lsq.damped_step(r_mat, qtr, mat, -b, diag, lam, "qr")
    np.testing.assert_allclose(by_chol, by_qr, rtol=1e-12)
    fit = np.asarray(mat) @ np.linalg.lstsq(np.asarray(mat), np.asarray(b), rcond=None)[0]
    np.testing.assert_allclose(mat @ by_chol, fit, rtol=1e-6, atol=1e-8)
    sol = solve(levenberg_marquardt(linear, linear_solver="cholesky"), jnp.zeros(3), (mat, b))
    np.testing.assert_allclose(mat @ sol.params, fit, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------- bounds


def test_bounds_match_scipy_trf():
    y = 2.0 * jnp.exp(-1.5 * _T) + 0.02 * jnp.cos(9 * _T)
    lower, upper = jnp.array([0.0, -1.0]), jnp.array([1.8, 0.0])
    lm = levenberg_marquardt(expfit, bounds=(lower, upper))
    sol = solve(lm, jnp.array([1.0, -0.5]), (_T, y))
    ref = least_squares(
        lambda p: np.asarray(expfit(p, (_T, y))),
        np.array([1.0, -0.5]),
        bounds=(np.asarray(lower), np.asarray(upper)),
        method="trf",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert int(sol.status) == Status.CONVERGED
    assert np.all(sol.params >= lower) and np.all(sol.params <= upper)
    np.testing.assert_allclose(sol.params, ref.x, rtol=1e-7, atol=1e-9)
    assert sol.params[1] == -1.0  # the decay-rate bound is active


def test_bounds_inactive_and_partly_active():
    y = 2.0 * jnp.exp(-1.5 * _T)
    free = solve(levenberg_marquardt(expfit, bounds=(-10.0, 10.0)), jnp.array([1.0, -1.0]), (_T, y))
    np.testing.assert_allclose(free.params, [2.0, -1.5], rtol=1e-10)
    # Only the amplitude is capped; start on the bound.
    lm = levenberg_marquardt(
        expfit, bounds=(jnp.array([-jnp.inf, -jnp.inf]), jnp.array([1.5, jnp.inf]))
    )
    sol = solve(lm, jnp.array([1.5, -1.0]), (_T, y))
    ref = least_squares(
        lambda p: np.asarray(expfit(p, (_T, y))),
        np.array([1.5, -1.0]),
        bounds=([-np.inf, -np.inf], [1.5, np.inf]),
        method="trf",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert sol.params[0] == 1.5
    np.testing.assert_allclose(sol.params, ref.x, rtol=1e-7)


def test_bounds_grad_is_zero_on_active_entries():
    y = 2.0 * jnp.exp(-1.5 * _T)
    lm = levenberg_marquardt(expfit, bounds=(jnp.array([-5.0, -5.0]), jnp.array([1.5, 5.0])))
    grad = jax.grad(lambda y: solve(lm, jnp.array([1.0, -1.0]), (_T, y)).params[0])(y)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)


def test_bad_bounds_raise():
    with pytest.raises(ValueError, match="lower <= upper"):
        levenberg_marquardt(expfit, bounds=(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="pair"):
        levenberg_marquardt(expfit, bounds=jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="pytree like params"):
        lm = levenberg_marquardt(expfit, bounds=(jnp.zeros(3), jnp.ones(3)))
        solve(lm, jnp.array([1.0, -1.0]), (_T, _Y))


# -------------------------------------------------------------------- shape checks


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_non_vector_residual_rejected(factory):
    def matrix_residual(p, a):
        return jnp.outer(p, p) - a

    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        factory(matrix_residual).init(jnp.ones(2), jnp.eye(2))


@pytest.mark.parametrize("factory", SOLVERS.values(), ids=SOLVERS)
def test_integer_params_rejected(factory):
    with pytest.raises(TypeError, match="int"):
        factory(expfit).init(jnp.array([1, 2]), (_T, _Y))


# --------------------------------------------------------- config: one test per field


_NOISY = (_T, _Y + 0.01 * jnp.sin(7 * _T))  # a non-zero-residual exponential fit


def _lm(**kw):
    return levenberg_marquardt(rosenbrock, **kw)


def _run(solver, x0=(-1.2, 1.0), max_steps=1000):
    return solve(solver, jnp.array(x0), 1.0, max_steps=max_steps)


def _fit(**kw):
    return solve(levenberg_marquardt(expfit, **kw), jnp.array([1.0, 1.0]), _NOISY)


def test_field_max_iterations():
    sol = _run(_lm(max_iterations=3))
    assert int(sol.status) == Status.MAX_STEPS and int(sol.num_steps) == 3
    assert int(_run(_lm()).status) == Status.CONVERGED


def test_field_ftol():
    loose = _fit(ftol=1e-3, xtol=0.0, gtol=0.0)
    tight = _fit(ftol=1e-20, xtol=0.0, gtol=0.0)
    assert int(loose.status) == Status.CONVERGED
    assert int(loose.num_steps) < int(tight.num_steps)
    assert float(loose.value) > float(tight.value)


def test_field_xtol():
    loose = _fit(xtol=1e-2, ftol=0.0, gtol=0.0)
    tight = _fit(xtol=1e-15, ftol=0.0, gtol=0.0)
    assert int(loose.status) == Status.CONVERGED
    assert int(loose.num_steps) < int(tight.num_steps)


def test_field_gtol():
    loose = _fit(gtol=1e-1, ftol=0.0, xtol=0.0)
    tight = _fit(gtol=1e-15, ftol=0.0, xtol=0.0)
    assert int(loose.status) == Status.CONVERGED
    assert int(loose.num_steps) < int(tight.num_steps)


def test_field_initial_damping():
    x0 = jnp.array([-1.2, 1.0])
    small, large = _lm(initial_damping=1e-6).init(x0, 1.0), _lm(initial_damping=1e3).init(x0, 1.0)
    np.testing.assert_allclose(float(large.damping) / float(small.damping), 1e9, rtol=1e-9)

    def trial_step(s):
        return lsq.damped_step(s.factor, s.rhs, s.jac, s.residual, s.diag, s.damping, "qr")

    assert np.linalg.norm(trial_step(large)) < 1e-2 * np.linalg.norm(trial_step(small))


def _first_rejection(**kw):
    # A zero-damping Gauss-Newton step on Rosenbrock from (-1.2, 1) overshoots: rejected.
    lm = _lm(initial_damping=1e-12, **kw)
    x0 = jnp.array([-1.2, 1.0])
    s0 = lm.init(x0, 1.0)
    _, s1 = lm.step(x0, s0, 1.0)
    return s0, s1


def test_field_damping_increase():
    s0, s1 = _first_rejection(damping_increase=5.0)
    assert float(s1.ratio) < 1e-4  # rejected
    np.testing.assert_allclose(float(s1.damping), 5.0 * float(s0.damping), rtol=1e-12)
    np.testing.assert_allclose(float(s1.increase), 10.0)


def test_field_min_damping():
    sol = _run(_lm(min_damping=1e-2))
    assert float(sol.state.damping) >= 1e-2
    default = _run(_lm())
    assert float(default.state.damping) < 1e-2
    assert int(sol.num_steps) > int(default.num_steps)
    np.testing.assert_allclose(sol.params, [1.0, 1.0], rtol=1e-6)


def test_field_max_damping():
    # Every trial of this residual is NaN, so every step is rejected.
    def fn(p, a):
        return jnp.where(jnp.all(p == a), p - a, jnp.nan) + 1.0

    lm = levenberg_marquardt(fn, max_damping=1e3)
    sol = solve(lm, jnp.array([0.0, 0.0]), jnp.zeros(2), max_steps=100)
    assert int(sol.status) == Status.STAGNATED and int(sol.num_steps) < 20
    wide = solve(
        levenberg_marquardt(fn, max_damping=1e300), jnp.zeros(2), jnp.zeros(2), max_steps=15
    )
    assert int(wide.status) == Status.MAX_STEPS


def test_field_scale_diag():
    # Brown badly scaled (MGH 4): solution (1e6, 2e-6), variables 12 orders apart.
    def brown(p, a):
        return jnp.array([p[0] - 1e6, p[1] - 2e-6, p[0] * p[1] - a])

    x0 = jnp.array([1.0, 1.0])
    scaled = solve(levenberg_marquardt(brown, scale_diag=True), x0, 2.0, max_steps=500)
    plain = solve(levenberg_marquardt(brown, scale_diag=False), x0, 2.0, max_steps=500)
    np.testing.assert_allclose(scaled.params, [1e6, 2e-6], rtol=1e-9)
    assert not np.allclose(np.asarray(scaled.state.diag), 1.0)
    np.testing.assert_array_equal(plain.state.diag, 1.0)
    assert int(scaled.num_steps) != int(plain.num_steps)


def test_field_linear_solver():
    x0 = jnp.array([1.0, -1.0])
    qr = levenberg_marquardt(expfit, linear_solver="qr").init(x0, (_T, _Y))
    ch = levenberg_marquardt(expfit, linear_solver="cholesky").init(x0, (_T, _Y))
    np.testing.assert_allclose(ch.factor, qr.jac.T @ qr.jac, rtol=1e-12)
    np.testing.assert_allclose(qr.factor.T @ qr.factor, ch.factor, rtol=1e-10)
    assert np.allclose(np.tril(qr.factor, -1), 0.0)


def test_field_jacobian():
    fn = reverse_only_exponential_residual

    sol = solve(levenberg_marquardt(fn, jacobian="rev"), jnp.array([1.0, -1.0]), (_T, _Y))
    np.testing.assert_allclose(sol.params, [2.0, -1.5], rtol=1e-10)
    with pytest.raises(TypeError):  # custom_vjp functions have no forward mode
        solve(levenberg_marquardt(fn, jacobian="fwd"), jnp.array([1.0, -1.0]), (_T, _Y))


@pytest.mark.parametrize(
    "changes",
    [
        {"max_iterations": 0},
        {"ftol": -1.0},
        {"xtol": -1.0},
        {"gtol": -1.0},
        {"initial_damping": 0.0},
        {"damping_increase": 1.0},
        {"min_damping": 0.0},
        {"max_damping": 1e-40},
        {"scale_diag": 1},
        {"linear_solver": "svd"},
        {"jacobian": "central"},
    ],
)
def test_bad_config_raises(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        LevenbergMarquardtConfig(**changes)


def test_config_fields_match_factory():
    import inspect

    fields = {f.name for f in dataclasses.fields(LevenbergMarquardtConfig)}
    params = set(inspect.signature(levenberg_marquardt).parameters) - {"residual_fn", "bounds"}
    assert fields == params
    defaults = LevenbergMarquardtConfig().to_kwargs()
    for name, p in inspect.signature(levenberg_marquardt).parameters.items():
        if name in defaults:
            assert p.default == defaults[name], name


def test_factory_rejects_unknown_choices():
    with pytest.raises(ValueError, match="linear_solver"):
        levenberg_marquardt(expfit, linear_solver="lu")
    with pytest.raises(ValueError, match="jacobian"):
        levenberg_marquardt(expfit, jacobian="fd")


def test_counts_reuse_accepted_jacobian():
    sol = solve(levenberg_marquardt(rosenbrock), jnp.array([-1.2, 1.0]), 1.0)
    fun, jac = int(sol.state.num_fun_evals), int(sol.state.num_jac_evals)
    assert fun == int(sol.num_steps) + 1  # one residual per step plus x0
    assert jac <= fun  # Jacobians only at x0 and accepted points
