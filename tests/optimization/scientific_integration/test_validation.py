"""Tests of opifex.optimization.scientific_integration.validation against known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from opifex.optimization.scientific_integration.validation import (
    Finding,
    NumericalValidator,
    hessian_vector_product,
    lanczos_eigenvalues,
    skip_nonfinite,
)

N = 50
EIGENVALUES = np.logspace(-4, 2, N)  # condition number exactly 1e6


@pytest.fixture(scope="module")
def spd_matrix():
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((N, N)))
    a = q @ np.diag(EIGENVALUES) @ q.T
    return (a + a.T) / 2


def quadratic(x, a):
    return 0.5 * x @ a @ x


def sum_of_squares(params, args):
    return jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2)


def test_nan_in_one_leaf_is_named_and_reported_not_raised():
    params = {"w1": jnp.array([1.0, jnp.nan, jnp.nan, jnp.nan]), "w2": jnp.array([1.0, 2.0])}
    result = NumericalValidator().validate(sum_of_squares, params)
    assert not result.ok
    assert np.isnan(result.loss)
    assert result.nonfinite == {"loss": 1, "params['w1']": 3, "grads['w1']": 3}
    messages = [f.message for f in result.findings if f.severity == "error"]
    assert "gradient contains 3 NaN entries in layer 'w1' (params['w1'])" in messages
    assert "parameters contain 3 NaN entries in layer 'w1' (params['w1'])" in messages
    assert not any("w2" in m for m in messages)
    assert "hessian_skipped" in result.codes
    assert result.top_eigenvalues is None and result.condition_estimate is None
    assert str(result).splitlines()[0].startswith("[error] nonfinite_loss: loss is nan")


def test_inf_loss_is_an_error_finding():
    result = NumericalValidator().validate(lambda x, _: 1.0 / x[0], jnp.array([0.0]))
    assert not result.ok
    assert result.loss == np.inf
    assert result.codes[0] == "nonfinite_loss"
    assert result.nonfinite == {"loss": 1, "grads": 1}
    assert "gradient contains 1 Inf entry in layer 'params' (params)" in str(result)


def test_exploding_and_vanishing_gradients():
    validator = NumericalValidator(check_hessian=False)
    big = validator.validate(lambda x, _: 1e6 * jnp.sum(x**2), jnp.array([10.0]))
    assert big.ok  # a warning, not an error
    assert big.grad_norm == pytest.approx(2e7, rel=1e-12)  # d/dx 1e6 x^2 = 2e6 x
    assert big.codes == ("exploding_gradient",)
    assert big.top_eigenvalues is None  # check_hessian=False skips curvature
    small = validator.validate(lambda x, _: 1e-12 * jnp.sum(x**2), jnp.array([1.0]))
    assert small.grad_norm == pytest.approx(2e-12, rel=1e-12)
    assert small.codes == ("vanishing_gradient",)
    raised = NumericalValidator(check_hessian=False, exploding_grad_threshold=1e8)
    assert raised.validate(lambda x, _: 1e6 * jnp.sum(x**2), jnp.array([10.0])).codes == ()


def test_lanczos_top_k_matches_eigvalsh(spd_matrix):
    a = jnp.asarray(spd_matrix)
    top = lanczos_eigenvalues(lambda v: a @ v, N, num_iterations=30, k=5)
    expected = np.linalg.eigvalsh(spd_matrix)[::-1][:5]
    np.testing.assert_allclose(np.asarray(top), expected, rtol=1e-8)


def test_lanczos_under_jit_with_a_key(spd_matrix):
    jitted = jax.jit(
        lambda m, key: lanczos_eigenvalues(lambda v: m @ v, N, num_iterations=30, k=5, key=key)
    )
    expected = np.linalg.eigvalsh(spd_matrix)[::-1][:5]
    top = jitted(jnp.asarray(spd_matrix), jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(top), expected, rtol=1e-8)


def test_lanczos_on_repeated_eigenvalues_restarts_after_breakdown():
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps; the restart
    # must recover the multiplicities instead of producing spurious values.
    d = jnp.array([1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 5.0])
    largest, smallest = lanczos_eigenvalues(
        lambda v: d * v, jnp.zeros(8), num_iterations=8, k=4, which="both"
    )
    np.testing.assert_allclose(np.asarray(largest), [5, 5, 5, 2], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(smallest), [1, 1, 1, 2], rtol=1e-12)


def test_condition_estimate_of_quadratic_is_flagged(spd_matrix):
    validator = NumericalValidator(lanczos_iterations=N, condition_threshold=1e5)
    result = validator.validate(quadratic, jnp.ones(N), jnp.asarray(spd_matrix))
    assert result.condition_estimate == pytest.approx(1e6, rel=0.1)
    assert result.min_eigenvalue_estimate == pytest.approx(1e-4, rel=1e-3)
    np.testing.assert_allclose(result.top_eigenvalues, EIGENVALUES[::-1][:3], rtol=1e-8)
    assert "ill_conditioned" in result.codes
    warning = next(f for f in result.findings if f.code == "ill_conditioned")
    assert warning.message.startswith("Hessian condition estimate 1.0e+06: ill-conditioned")
    assert (
        "ill_conditioned"
        not in validator.validate(quadratic, jnp.ones(N), jnp.asarray(2 * np.eye(N))).codes
    )


def test_condition_estimate_with_few_steps_is_a_lower_bound(spd_matrix):
    # Fewer steps than parameters: Ritz values interlace the eigenvalues.
    short = NumericalValidator(lanczos_iterations=10, num_eigenvalues=2, check_hessian=True)
    partial = short.validate(quadratic, jnp.ones(N), jnp.asarray(spd_matrix))
    assert partial.top_eigenvalues.shape == (2,)
    assert partial.condition_estimate <= 1e6 * (1 + 1e-8)
    assert partial.min_eigenvalue_estimate >= 1e-4 * (1 - 1e-8)
    assert (
        "ill_conditioned"
        not in NumericalValidator(lanczos_iterations=N)
        .validate(quadratic, jnp.ones(N), jnp.asarray(2 * np.eye(N)))
        .codes
    )


def test_hvp_equals_matrix_vector_product(spd_matrix):
    a = jnp.asarray(spd_matrix)
    v = jnp.asarray(np.random.default_rng(1).standard_normal(N))
    hvp = hessian_vector_product(quadratic, jnp.ones(N), a)
    np.testing.assert_allclose(np.asarray(hvp(v)), spd_matrix @ np.asarray(v), rtol=1e-12)


def test_hvp_on_pytree_matches_dense_hessian():
    def fn(p, c):
        return jnp.sum(p["a"] ** 2 * p["b"][0]) + c * jnp.sin(p["b"][1])

    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([0.5, 0.3])}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = jax.jit(jax.hessian(lambda x: fn(unravel(x), 3.0)))(flat)
    v = jnp.array([0.1, -0.2, 0.3, 0.4])
    np.testing.assert_allclose(hessian_vector_product(fn, params, 3.0)(v), dense @ v, rtol=1e-12)


def test_negative_curvature_is_reported():
    saddle = lambda x, _: x[0] ** 2 - x[1] ** 2  # noqa: E731
    result = NumericalValidator().validate(saddle, jnp.array([0.0, 0.0]))
    assert result.min_eigenvalue_estimate == pytest.approx(-2.0, rel=1e-10)
    assert result.condition_estimate == pytest.approx(1.0, rel=1e-10)
    assert "negative_curvature" in result.codes
    assert "vanishing_gradient" in result.codes  # stationary point: gradient is 0


def test_per_term_gradient_norms_match_hand_values():
    def terms(x, _):
        return jnp.stack([x[0] ** 2 + x[1] ** 2, 3.0 * x[0]])

    validator = NumericalValidator(check_hessian=False)
    x = jnp.array([1.0, 2.0])
    result = validator.validate(
        lambda p, a: jnp.sum(terms(p, a)), x, term_losses_fn=terms, term_names=("pde", "bc")
    )
    # grad pde = (2 x0, 2 x1) = (2, 4); grad bc = (3, 0)
    assert result.term_grad_norms == pytest.approx({"pde": np.sqrt(20.0), "bc": 3.0})
    assert "term_imbalance" not in result.codes

    def lopsided(x, _):
        return jnp.stack([1e4 * x[0], 1e-1 * x[1]])

    result = validator.validate(lambda p, a: jnp.sum(lopsided(p, a)), x, term_losses_fn=lopsided)
    assert result.term_grad_norms == pytest.approx({"term0": 1e4, "term1": 1e-1})
    finding = next(f for f in result.findings if f.code == "term_imbalance")
    assert "'term0' 1.0e+04 vs 'term1' 1.0e-01 (ratio 1.0e+05)" in finding.message
    tolerant = NumericalValidator(check_hessian=False, term_imbalance_threshold=1e6)
    assert (
        "term_imbalance"
        not in tolerant.validate(
            lambda p, a: jnp.sum(lopsided(p, a)), x, term_losses_fn=lopsided
        ).codes
    )


def test_structural_errors_raise():
    validator = NumericalValidator(check_hessian=False)
    with pytest.raises(ValueError, match="must return a scalar"):
        validator.validate(lambda x, _: x**2, jnp.ones(3))
    with pytest.raises(ValueError, match="one name per term"):
        validator.validate(
            lambda x, _: jnp.sum(x),
            jnp.ones(2),
            term_losses_fn=lambda x, _: x,
            term_names=("only_one",),
        )
    with pytest.raises(ValueError, match="lanczos_iterations"):
        NumericalValidator(lanczos_iterations=0)
    with pytest.raises(ValueError, match="vanishing_grad_threshold must be <"):
        NumericalValidator(vanishing_grad_threshold=1.0, exploding_grad_threshold=0.5)
    with pytest.raises(ValueError, match="severity"):
        Finding("fatal", "x", "y")
    with pytest.raises(ValueError, match="k must be <="):
        lanczos_eigenvalues(lambda v: v, 3, num_iterations=2, k=3)


def test_seed_changes_the_lanczos_start():
    a = jnp.asarray(np.diag(EIGENVALUES))
    runs = [
        NumericalValidator(lanczos_iterations=3, seed=s).validate(quadratic, jnp.ones(N), a)
        for s in (0, 1)
    ]
    assert runs[0].top_eigenvalues[0] != runs[1].top_eigenvalues[0]
    assert all(r.top_eigenvalues[0] <= 100.0 * (1 + 1e-12) for r in runs)


def test_skip_nonfinite_in_chain_under_jit():
    opt = optax.chain(optax.clip_by_global_norm(10.0), skip_nonfinite(optax.adam(0.1)))

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jnp.array([1.0, -2.0])
    state = opt.init(params)
    params1, state = step(params, state, jnp.array([jnp.nan, 1.0]))
    np.testing.assert_array_equal(params1, params)
    skip_state = state[1]
    assert int(skip_state.skipped) == 1 and int(skip_state.consecutive) == 1
    assert int(skip_state.inner_state[0].count) == 0  # Adam's moments were not touched
    params2, state = step(params1, state, jnp.array([0.5, -4.0]))
    # First Adam step: m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps).
    g = np.array([0.5, -4.0])
    np.testing.assert_allclose(params2, np.asarray(params) - 0.1 * g / (np.abs(g) + 1e-8))
    assert int(state[1].skipped) == 1 and int(state[1].consecutive) == 0


def test_skip_nonfinite_catches_inner_overflow_and_gives_up_after_max_consecutive():
    overflow = skip_nonfinite(optax.scale(1e308))
    params = jnp.array([1.0])
    state = overflow.init(params)
    updates, state = overflow.update(jnp.array([10.0]), state, params)  # 1e309 = inf
    assert float(updates[0]) == 0.0 and int(state.skipped) == 1

    opt = skip_nonfinite(optax.sgd(1.0), max_consecutive=1)
    state = opt.init(params)
    nan = jnp.array([jnp.nan])
    first, state = opt.update(nan, state, params)
    second, state = opt.update(nan, state, params)
    assert float(first[0]) == 0.0 and np.isnan(float(second[0]))
    assert int(state.skipped) == 1 and int(state.consecutive) == 2
    with pytest.raises(ValueError, match="max_consecutive"):
        skip_nonfinite(optax.sgd(1.0), max_consecutive=-1)
