"""The published PINN problems: their exact solutions zero every residual term."""

import jax.numpy as jnp
import numpy as np
import pytest

from opifex.benchmarks.problems import pinn


def _exact_field(problem, kind, **kw):
    if kind == "convection":
        return lambda p: jnp.sin(p[:, 0] - kw["beta"] * p[:, 1])
    if kind == "reaction":
        rho = kw["rho"]

        def u(p):
            h = jnp.exp(-0.5 * ((p[:, 0] - jnp.pi) / (jnp.pi / 4)) ** 2)
            e = jnp.exp(rho * p[:, 1])
            return h * e / (h * e + 1.0 - h)

        return u
    beta = kw["beta"]
    return lambda p: (
        jnp.sin(jnp.pi * p[:, 0]) * jnp.cos(2 * jnp.pi * p[:, 1])
        + 0.5 * jnp.sin(beta * jnp.pi * p[:, 0]) * jnp.cos(2 * beta * jnp.pi * p[:, 1])
    )


@pytest.mark.parametrize(
    ("kind", "kw"),
    [("convection", {"beta": 40.0}), ("reaction", {"rho": 5.0}), ("wave", {"beta": 5.0})],
)
def test_exact_solution_zeroes_every_term(kind, kw):
    problem = pinn.PROBLEMS[kind](**kw)
    batch = problem.batch(0)
    u = _exact_field(problem, kind, **kw)
    for term in problem.loss.terms:
        part = batch[term.name]
        r = term.residual(u, part["points"], part["targets"])
        assert float(jnp.max(jnp.abs(r))) < 1e-9, term.name
    # The reference on the test grid is the same closed form.
    np.testing.assert_allclose(problem.reference, u(jnp.asarray(problem.test_points)), atol=1e-12)


def test_rathore_setup_sizes():
    problem = pinn.convection()
    batch = problem.batch(0)
    assert batch["pde"]["points"].shape == (10_000, 2)
    assert batch["ic"]["points"].shape == (257, 2)
    assert batch["bc"]["points"].shape == (202, 2)
    assert problem.test_points.shape == (257 * 101, 2)
    assert problem.sizes == (2, 50, 50, 50, 1)
    # Residual points are interior grid points, drawn without replacement and per seed.
    pts = np.asarray(batch["pde"]["points"])
    assert len(np.unique(pts, axis=0)) == 10_000
    assert pts[:, 0].min() > 0 and pts[:, 0].max() < 2 * np.pi and pts[:, 1].min() > 0
    assert not np.array_equal(pts, np.asarray(problem.batch(1)["pde"]["points"]))


def test_burgers_reference_and_training_points():
    problem = pinn.burgers()
    x = problem.test_points[:, 0]
    t = problem.test_points[:, 1]
    initial = t == 0.0
    np.testing.assert_allclose(problem.reference[initial], -np.sin(np.pi * x[initial]), atol=1e-12)
    walls = np.isclose(np.abs(x), 1.0)
    assert np.max(np.abs(problem.reference[walls])) < 1e-12
    batch = problem.batch(0)
    assert batch["data"]["points"].shape == (100, 2)
    assert batch["pde"]["points"].shape == (10_100, 2)
    assert problem.sizes == (2, *[20] * 8, 1)
    assert problem.published == {"L-BFGS (Raissi et al. 2019)": 6.7e-4}
