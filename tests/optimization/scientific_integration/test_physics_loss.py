"""Physics-informed objectives: derivatives against closed forms and nested grad, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization.scientific_integration import (
    PhysicsInformedLoss,
    ResidualTerm,
    apply_mlp,
    from_nnx,
    init_mlp,
    partial,
)


def test_partial_matches_closed_form_derivatives():
    pts = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (7, 2)))

    def u(p):
        return jnp.sin(2 * p[:, 0]) * jnp.exp(p[:, 1])

    value, ux, uxx, uxxx = partial(u, pts, 0, 3)
    x, t = pts[:, 0], pts[:, 1]
    np.testing.assert_allclose(value, np.sin(2 * x) * np.exp(t), rtol=1e-13)
    np.testing.assert_allclose(ux, 2 * np.cos(2 * x) * np.exp(t), rtol=1e-13)
    np.testing.assert_allclose(uxx, -4 * np.sin(2 * x) * np.exp(t), rtol=1e-13)
    np.testing.assert_allclose(uxxx, -8 * np.cos(2 * x) * np.exp(t), rtol=1e-13)
    _, ut = partial(u, pts, 1)
    np.testing.assert_allclose(ut, np.sin(2 * x) * np.exp(t), rtol=1e-13)


def test_partial_of_network_equals_nested_grad():
    params = init_mlp(jax.random.PRNGKey(1), (2, 8, 8, 1))
    pts = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)))
    _, ux, uxx = jax.jit(lambda q: partial(lambda p: apply_mlp(params, p), q, 0, 2))(pts)

    def scalar(x):
        return apply_mlp(params, x[None])[0]

    grads = jax.jit(jax.vmap(jax.grad(scalar)))(pts)
    hess = jax.jit(jax.vmap(jax.hessian(scalar)))(pts)
    np.testing.assert_allclose(ux, grads[:, 0], rtol=1e-12)
    np.testing.assert_allclose(uxx, hess[:, 0, 0], rtol=1e-10, atol=1e-14)


def test_partial_rejects_order_zero():
    with pytest.raises(ValueError, match="order must be >= 1"):
        partial(lambda p: p[:, 0], jnp.zeros((2, 1)), 0, 0)


def _poisson_loss():
    pde = lambda u, x, f: partial(u, x, 0, 2)[2] - f  # noqa: E731
    bc = lambda u, x, _: u(x)  # noqa: E731
    return PhysicsInformedLoss(apply_mlp, (ResidualTerm("pde", pde), ResidualTerm("bc", bc, 2.0)))


def _poisson_batch(n=16):
    x = np.linspace(0, 1, n)[:, None]
    return {
        "pde": {"points": x, "targets": -(np.pi**2) * np.sin(np.pi * x[:, 0])},
        "bc": {"points": np.array([[0.0], [1.0]]), "targets": None},
    }


def test_loss_is_weighted_sum_of_term_means_and_residuals_match():
    loss = _poisson_loss()
    batch = loss.check_batch(_poisson_batch())
    params = init_mlp(jax.random.PRNGKey(0), (1, 6, 1))
    terms = loss.term_losses(params, batch)
    u = lambda p: apply_mlp(params, p)  # noqa: E731
    r_pde = partial(u, batch["pde"]["points"], 0, 2)[2] - batch["pde"]["targets"]
    r_bc = u(batch["bc"]["points"])
    np.testing.assert_allclose(terms, [np.mean(r_pde**2), np.mean(r_bc**2)], rtol=1e-12)
    np.testing.assert_allclose(loss(params, batch), terms[0] + 2.0 * terms[1], rtol=1e-12)
    r = loss.residuals(params, batch)
    np.testing.assert_allclose(jnp.sum(r**2), loss(params, batch), rtol=1e-12)


def test_check_batch_names_nonfinite_rows():
    loss = _poisson_loss()
    batch = _poisson_batch()
    batch["pde"]["points"][[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"points of term 'pde'.*2 non-finite.*\[3, 7\]"):
        loss.check_batch(batch)
    batch = _poisson_batch()
    batch["pde"]["targets"][5] = np.inf
    with pytest.raises(ValueError, match=r"targets of term 'pde'.*\[5\]"):
        loss.check_batch(batch)


def test_check_batch_rejects_missing_terms_and_bad_shapes():
    loss = _poisson_loss()
    batch = _poisson_batch()
    del batch["bc"]
    with pytest.raises(ValueError, match="no entry for term 'bc'"):
        loss.check_batch(batch)
    batch = _poisson_batch()
    batch["pde"]["points"] = batch["pde"]["points"][:, 0]
    with pytest.raises(ValueError, match=r"must be \(N, d\)"):
        loss.check_batch(batch)
    batch = _poisson_batch()
    batch["pde"]["targets"] = batch["pde"]["targets"][:3]
    with pytest.raises(ValueError, match="must have 16 rows"):
        loss.check_batch(batch)


def test_residual_of_wrong_shape_is_rejected_before_training():
    wrong = ResidualTerm("pde", lambda u, x, _: jnp.sum(u(x)))
    loss = PhysicsInformedLoss(apply_mlp, (wrong,))
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    batch = {"pde": {"points": np.zeros((5, 1)), "targets": None}}
    with pytest.raises(ValueError, match=r"must return a non-empty vector.*got shape \(\)"):
        loss.check_batch(batch, params)


def test_terms_and_weights_are_validated():
    with pytest.raises(ValueError, match="weight"):
        ResidualTerm("a", lambda u, x, t: u(x), weight=-1.0)
    with pytest.raises(ValueError, match="unique"):
        PhysicsInformedLoss(
            apply_mlp,
            (ResidualTerm("a", lambda u, x, t: u(x)), ResidualTerm("a", lambda u, x, t: u(x))),
        )
    with pytest.raises(TypeError, match="ResidualTerm"):
        PhysicsInformedLoss(apply_mlp, ())


def test_from_nnx_gives_a_pure_apply():
    from flax import nnx

    model = nnx.Sequential(
        nnx.Linear(2, 8, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(8, 1, rngs=nnx.Rngs(1))
    )
    params, apply = from_nnx(model)
    pts = jnp.ones((3, 2))
    np.testing.assert_allclose(apply(params, pts), model(pts)[:, 0], rtol=1e-12)
    _, ux = partial(lambda p: apply(params, p), pts, 0)
    assert ux.shape == (3,)
