"""System identification: known-answer recovery, metrics by hand, bad input, the documented
example and the contract a controller relies on."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization.control.system_id import (
    ARX,
    FittedModel,
    GreyBox,
    HamiltonianModel,
    LinearStateSpace,
    NeuralStateSpace,
    StableLinear,
    SystemIdConfig,
    SystemIdentifier,
    fit_percent,
    rmse,
)
from opifex.optimization.core import Status
from opifex.optimization.second_order import HybridOptimizerConfig, LBFGSConfig

A_TRUE = np.array([[0.9, 0.2], [-0.1, 0.7]])
B_TRUE = np.array([[0.0], [1.0]])


def simulate(step, x0, u):
    x = np.zeros((len(u), len(x0)))
    x[0] = x0
    for k in range(len(u) - 1):
        x[k + 1] = step(x[k], u[k])
    return x


@pytest.fixture(scope="module")
def linear_data():
    u = np.random.default_rng(0).normal(size=(60, 1))
    x = simulate(lambda x, u: A_TRUE @ x + B_TRUE @ u, np.array([1.0, -1.0]), u)
    return x, u


@pytest.fixture(scope="module")
def documented_identifier():
    """The documented example's identifier; its tests share one compiled solver."""
    return SystemIdentifier(model=LinearStateSpace(state_dim=2, input_dim=1, dt=0.1))


def pendulum(x, u, p):
    return jnp.stack([x[1], -p["g_l"] * jnp.sin(x[0]) - p["c"] * x[1] + u[0]])


@pytest.fixture(scope="module")
def pendulum_case():
    truth = {"g_l": 9.81, "c": 0.5}
    model = GreyBox(pendulum, {"g_l": 5.0, "c": 0.1}, state_dim=2, input_dim=1, dt=0.05)
    u = np.random.default_rng(1).normal(size=(80, 1))
    step = jax.jit(lambda x, u: model.dynamics(x, u, jax.tree.map(jnp.asarray, truth)))
    x = simulate(lambda x, u: np.asarray(step(x, u)), np.array([0.5, 0.0]), u)
    return model, truth, x, u


# ---------------------------------------------------------------- closed forms


def test_linear_state_space_least_squares_recovers_a_b(linear_data):
    x, u = linear_data
    fitted = SystemIdentifier(model=LinearStateSpace(2, 1), loss="one_step").fit(x, u)
    np.testing.assert_allclose(fitted.params["A"], A_TRUE, atol=1e-12)
    np.testing.assert_allclose(fitted.params["B"], B_TRUE, atol=1e-12)
    assert fitted.num_steps == 0 and fitted.status == Status.CONVERGED


def test_linear_least_squares_equals_numpy_on_noisy_data(linear_data):
    x, u = linear_data
    noisy = x + 0.01 * np.random.default_rng(2).normal(size=x.shape)
    fitted = SystemIdentifier(model=LinearStateSpace(2, 1), loss="one_step").fit(noisy, u)
    theta = np.linalg.lstsq(np.hstack([noisy[:-1], u[:-1]]), noisy[1:], rcond=None)[0].T
    np.testing.assert_allclose(fitted.params["A"], theta[:, :2], atol=1e-12)
    np.testing.assert_allclose(fitted.params["B"], theta[:, 2:], atol=1e-12)


def test_arx_least_squares_equals_hand_built_regression():
    rng = np.random.default_rng(3)
    u = rng.normal(size=(100, 1))
    y = 0.1 * rng.normal(size=(100, 1))
    fitted = SystemIdentifier(model=ARX(2, 3, bias=True), loss="one_step").fit(y, u)
    k = np.arange(2, 99)
    phi = np.column_stack([y[k, 0], y[k - 1, 0], u[k, 0], u[k - 1, 0], u[k - 2, 0], np.ones(97)])
    theta = np.linalg.lstsq(phi, y[k + 1, 0], rcond=None)[0]
    np.testing.assert_allclose(fitted.params["theta"][:, 0], theta, atol=1e-12)


def test_polynomial_narx_recovers_true_coefficients_and_predicts_exactly():
    rng = np.random.default_rng(4)
    u = rng.uniform(-1, 1, size=(150, 1))
    y = np.zeros((150, 1))
    for k in range(1, 149):
        y[k + 1] = 1.2 * y[k] - 0.5 * y[k - 1] + u[k] + 0.3 * u[k - 1] - 0.2 * y[k] ** 3
    model = ARX(2, 2, degree=3, nonlinear_lags=1)
    fitted = SystemIdentifier(model=model, loss="one_step").fit(y, u)
    # Features: y_k, y_{k-1}, u_k, u_{k-1}, y_k^2, y_k^3.
    np.testing.assert_allclose(
        fitted.params["theta"][:, 0], [1.2, -0.5, 1.0, 0.3, 0.0, -0.2], atol=1e-10
    )
    pred = fitted.predict(u, initial_outputs=y[:10])
    assert float(rmse(y, pred)) < 1e-8


def test_stable_linear_is_schur_stable_by_construction_and_recovers_a(linear_data):
    model = StableLinear(4, 1)
    rng = np.random.default_rng(10)
    p = model.init_params(jax.random.key(0))
    for _ in range(5):
        p["W"], p["T"] = 50.0 * rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
        assert np.max(np.abs(np.linalg.eigvals(np.asarray(model.matrices(p)[0])))) < 1.0
    x, u = linear_data
    fitted = SystemIdentifier(model=StableLinear(2, 1), loss="one_step", max_iterations=20).fit(
        x, u
    )
    np.testing.assert_allclose(fitted.model.matrices(fitted.params)[0], A_TRUE, atol=1e-8)


def test_stable_linear_start_shrinks_an_unstable_least_squares_fit():
    u = np.random.default_rng(5).normal(size=(40, 1))
    x = simulate(lambda x, u: 1.05 * x + u, np.array([1.0]), u)
    p = StableLinear(1, 1).least_squares(x[None], u[None])
    a = StableLinear(1, 1).matrices(p)[0]
    np.testing.assert_allclose(a, [[0.99]], atol=1e-12)


# ---------------------------------------------------------------- iterative fits


def test_simulation_error_recovers_linear_system(linear_data, documented_identifier):
    x, u = linear_data
    start = {"A": 0.5 * np.eye(2), "B": np.ones((2, 1))}
    fitted = documented_identifier.fit(x, u, params=start)
    np.testing.assert_allclose(fitted.params["A"], A_TRUE, atol=1e-9)
    np.testing.assert_allclose(fitted.params["B"], B_TRUE, atol=1e-9)
    assert fitted.status == Status.CONVERGED
    np.testing.assert_allclose(fitted.initial_states[0], x[0])


def test_multiple_shooting_recovers_linear_system(linear_data):
    x, u = linear_data
    start = {"A": 0.5 * np.eye(2), "B": np.ones((2, 1))}
    ident = SystemIdentifier(
        model=LinearStateSpace(2, 1), loss="multiple_shooting", shooting_horizon=15
    )
    fitted = ident.fit(x, u, params=start)
    np.testing.assert_allclose(fitted.params["A"], A_TRUE, atol=1e-9)
    np.testing.assert_allclose(fitted.initial_states[0], x[0], atol=1e-9)


def test_grey_box_recovers_damped_pendulum(pendulum_case):
    model, truth, x, u = pendulum_case
    fitted = SystemIdentifier(model=model, max_iterations=60).fit(x, u)
    assert fitted.status == Status.CONVERGED
    assert abs(float(fitted.params["g_l"]) - truth["g_l"]) < 1e-7
    assert abs(float(fitted.params["c"]) - truth["c"]) < 1e-7
    np.testing.assert_allclose(fitted.simulate(x[0], u), x, atol=1e-8)


def test_hamiltonian_model_recovers_mass_spring_damper():
    model = HamiltonianModel(1, 1, dt=0.1)
    truth = {
        "log_mass": jnp.log(jnp.array([2.0])),
        "L": jnp.array([[np.sqrt(3.0)]]),
        "G": jnp.array([[1.0]]),
        "damping": jnp.log(jnp.expm1(jnp.array([0.4]))),
    }
    u = np.random.default_rng(6).normal(size=(60, 1))
    step = jax.jit(lambda x, u: model.dynamics(x, u, truth))
    x = simulate(lambda x, u: np.asarray(step(x, u)), np.array([1.0, 0.0]), u)
    fitted = SystemIdentifier(model=model, loss="one_step", max_iterations=60).fit(x, u)
    p = fitted.params
    assert abs(float(jnp.exp(p["log_mass"][0])) - 2.0) < 1e-7
    assert abs(float(p["L"][0, 0] ** 2) - 3.0) < 1e-7
    assert abs(float(jax.nn.softplus(p["damping"][0])) - 0.4) < 1e-7
    assert abs(float(p["G"][0, 0]) - 1.0) < 1e-7


def test_hamiltonian_model_conserves_energy_without_dissipation():
    model = HamiltonianModel(2, 1, dt=0.01, hidden=(8,), dissipation=False)
    params = model.init_params(jax.random.key(0))
    x0 = jnp.array([0.3, -0.2, 0.1, 0.4])

    @jax.jit
    def run(x0, params):
        step = lambda _, x: model.dynamics(x, jnp.zeros(1), params)  # noqa: E731
        x = jax.lax.fori_loop(0, 200, step, x0)
        return x, model.energy(x0, params), model.energy(x, params)

    x, h0, h1 = run(x0, params)
    assert abs(float(h1 - h0)) < 1e-8 * abs(float(h0))
    assert float(jnp.linalg.norm(x - x0)) > 0.1


def test_neural_state_space_beats_linear_fit_on_nonlinear_system():
    rng = np.random.default_rng(7)
    u = rng.uniform(-1, 1, size=(120, 1))
    x = simulate(
        lambda x, u: np.array([0.8 * x[0] + 0.5 * np.tanh(2 * x[0]) * u[0] + u[0]]),
        np.array([0.0]),
        u,
    )
    lin = SystemIdentifier(model=LinearStateSpace(1, 1), loss="one_step").fit(x, u)
    nss = SystemIdentifier(
        model=NeuralStateSpace(1, 1, hidden=(8,)), loss="one_step", max_iterations=60
    ).fit(x, u)

    def one_step(f):
        return rmse(x[1:], jax.vmap(f)(jnp.asarray(x[:-1]), jnp.asarray(u[:-1])))

    assert float(one_step(nss)) < 0.1 * float(one_step(lin))


def test_hybrid_optimizer_fits_a_plain_dynamics_function(linear_data):
    x, u = linear_data
    calls = []

    def dynamics(x, u, p):
        calls.append(1)  # counts traces: the second fit must not retrace
        return p["A"] @ x + p["B"] @ u

    config = SystemIdConfig(
        loss="one_step",
        optimizer="hybrid",
        max_iterations=300,
        hybrid=HybridOptimizerConfig(
            switch_criterion="step", switch_step=5, lbfgs=LBFGSConfig(gtol=1e-12)
        ),
    )
    ident = SystemIdentifier(model=dynamics, config=config)
    start = {"A": np.zeros((2, 2)), "B": np.zeros((2, 1))}
    fitted = ident.fit(x, u, params=start)
    np.testing.assert_allclose(fitted.params["A"], A_TRUE, atol=1e-6)
    traces = len(calls)
    ident.fit(x, u, params=start)
    assert len(calls) == traces
    with pytest.raises(TypeError, match="params=initial_params"):
        ident.fit(x, u)


# ---------------------------------------------------------------- metrics


def test_metrics_match_hand_computations():
    y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0]])
    yhat = np.array([[1.0, 1.0], [2.5, 2.0], [3.0, 3.0]])
    # errors 0, 1, 0.5, 0, 0, 1 -> mean square 2.25 / 6
    assert float(rmse(y, yhat)) == pytest.approx(np.sqrt(2.25 / 6), abs=1e-15)
    # ||y - mean|| = sqrt(1 + 0 + 1 + 4 + 0 + 4) = sqrt(10)
    assert float(fit_percent(y, yhat)) == pytest.approx(100 * (1 - 1.5 / np.sqrt(10)), abs=1e-12)
    assert float(fit_percent(y, y)) == 100.0
    with pytest.raises(ValueError, match="shapes differ"):
        rmse(y, yhat[:2])


def test_score_reports_rmse_and_fit(linear_data):
    x, u = linear_data
    fitted = SystemIdentifier(model=LinearStateSpace(2, 1), loss="one_step").fit(x, u)
    score = fitted.score(x, u, x0=x[0])
    assert score["rmse"] < 1e-10 and score["fit_percent"] == pytest.approx(100.0, abs=1e-8)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("state_data", "input_data", "match"),
    [
        (np.full((10, 2), np.nan), np.zeros((10, 1)), "NaN/inf"),
        (np.zeros((10, 2)), np.r_[np.zeros((9, 1)), [[np.inf]]], r"input_data contains 1 NaN"),
        (np.zeros((10, 2)), np.zeros((9, 1)), "same records and number of samples"),
        (np.zeros((10, 3)), np.zeros((10, 1)), "3 channel"),
        (np.zeros((10, 2)), np.zeros((10, 2)), "input_dim=1"),
        (np.zeros((2, 2, 10, 2)), np.zeros((2, 2, 10, 1)), "must have shape"),
        (np.zeros((1, 2)), np.zeros((1, 1)), "at least 2 samples"),
    ],
)
def test_bad_data_is_rejected_before_compilation(state_data, input_data, match):
    ident = SystemIdentifier(model=LinearStateSpace(2, 1))
    with pytest.raises(ValueError, match=match):
        ident.fit(state_data, input_data)


def test_bad_configuration_and_usage_are_rejected(linear_data):
    x, u = linear_data
    for kwargs, match in [
        ({"loss": "mse"}, "loss must be one of"),
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"max_iterations": 0}, "max_iterations must be an int >= 1"),
        ({"continuity_weight": -1.0}, "continuity_weight"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            SystemIdentifier(model=LinearStateSpace(2, 1), **kwargs)
    with pytest.raises(TypeError, match="model must be"):
        SystemIdentifier(model=3)
    partial = LinearStateSpace(2, 1, output_dim=1)
    with pytest.raises(ValueError, match="one_step"):
        SystemIdentifier(model=partial, loss="one_step").fit(x[:, :1], u)
    with pytest.raises(ValueError, match="at least 101 samples"):
        SystemIdentifier(model=partial, loss="multiple_shooting", shooting_horizon=100).fit(
            x[:, :1], u
        )
    fitted = SystemIdentifier(model=LinearStateSpace(2, 1), loss="one_step").fit(x, u)
    with pytest.raises(ValueError, match="exactly one of x0 and initial_outputs"):
        fitted.predict(u)
    with pytest.raises(ValueError, match=r"x0 must have shape \(2,\)"):
        fitted.simulate(np.zeros(3), u)
    with pytest.raises(ValueError, match="output_fn and output_dim"):
        GreyBox(pendulum, {}, state_dim=2, input_dim=1, output_dim=1)


def test_config_fields_change_the_fit(linear_data):
    x, u = linear_data
    noisy = x * np.array([1.0, 100.0]) + 0.01 * np.random.default_rng(8).normal(size=x.shape)
    fits = {
        n: SystemIdentifier(model=LinearStateSpace(2, 1), loss="one_step", normalize=n)
        for n in (True, False)
    }
    w = {n: np.asarray(f.fit(noisy, u)._weights) for n, f in fits.items()}
    np.testing.assert_allclose(w[False], [1.0, 1.0])
    np.testing.assert_allclose(w[True], 1 / noisy.std(axis=0))
    p0 = NeuralStateSpace(1, 1, hidden=(4,)).init_params(jax.random.key(0))
    p1 = NeuralStateSpace(1, 1, hidden=(4,)).init_params(jax.random.key(1))
    leaves = zip(jax.tree.leaves(p0["net"]), jax.tree.leaves(p1["net"]), strict=True)
    assert any(not np.allclose(a, b) for a, b in leaves)


# ---------------------------------------------------------------- the documented example


def test_documented_example_and_controller_contract(linear_data, documented_identifier):
    state_data, input_data = linear_data
    system_id = documented_identifier
    trained_model = system_id.fit(state_data, input_data)

    assert isinstance(trained_model, FittedModel)
    assert (trained_model.state_dim, trained_model.input_dim, trained_model.dt) == (2, 1, 0.1)
    x, u = jnp.array([0.3, -0.4]), jnp.array([0.7])
    expected = A_TRUE @ np.asarray(x) + B_TRUE @ np.asarray(u)
    np.testing.assert_allclose(
        jax.jit(trained_model.dynamics)(x, u, trained_model.params), expected, atol=1e-10
    )
    np.testing.assert_allclose(trained_model(x, u), expected, atol=1e-10)
    # d x_next / d A[0, 1] = x[1], by jax and by the known linear form.
    grad = jax.grad(lambda p: trained_model.dynamics(x, u, p)[0])(trained_model.params)
    np.testing.assert_allclose(grad["A"], [[0.3, -0.4], [0.0, 0.0]], atol=1e-12)


def test_initial_state_estimate_for_unmeasured_state():
    rng = np.random.default_rng(9)
    u = rng.normal(size=(40, 1))
    x = simulate(lambda x, u: A_TRUE @ x + B_TRUE @ u, np.array([0.7, -0.3]), u)
    model = LinearStateSpace(2, 1, output_dim=1)
    params = {"A": jnp.asarray(A_TRUE), "B": jnp.asarray(B_TRUE), "C": jnp.array([[1.0, 0.0]])}
    fitted = FittedModel(model, params)
    x0 = fitted.initial_state(x[:5, :1], u[:5])
    np.testing.assert_allclose(x0, x[0], atol=1e-9)
    np.testing.assert_allclose(fitted.predict(u, initial_outputs=x[:5, :1]), x[:, :1], atol=1e-8)


def test_monomial_count_of_polynomial_arx():
    model = ARX(3, 2, degree=3, nonlinear_lags=2)
    expected = sum(len(list(itertools.combinations_with_replacement(range(2), d))) for d in (2, 3))
    assert len(model.monomials) == expected == 7
    assert model.state_dim == 3 + 1 and model.num_features == 3 + 2 + 7
