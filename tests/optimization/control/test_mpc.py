"""DifferentiableMPC: known answers (Riccati, scipy), implicit gradients against finite
differences, warm start, batching, real-time mode, state constraints and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

from opifex.optimization.control import DifferentiableMPC, MPCConfig
from opifex.optimization.control._boxqp import box_qp
from opifex.optimization.core import Status

DT = 0.1
A = np.array([[1.0, DT], [0.0, 1.0]])
B = np.array([[0.5 * DT**2], [DT]])
P = scipy.linalg.solve_discrete_are(A, B, np.eye(2), np.eye(1))
K = np.linalg.solve(1.0 + B.T @ P @ B, B.T @ P @ A)


def double_integrator(x, u, p):
    a, b = p
    return a @ x + b @ u


PARAMS = (jnp.asarray(A), jnp.asarray(B))


def pendulum(x, u, p):
    """Damped pendulum dx/dt, angle 0 hanging down; p = (gravity/length, damping)."""
    return jnp.stack([x[1], -p[0] * jnp.sin(x[0]) - p[1] * x[1] + u[0]])


@pytest.fixture(scope="module")
def lqr():
    return DifferentiableMPC(
        double_integrator,
        MPCConfig(horizon=30, terminal_weight=P),
        model_params=PARAMS,
        input_dim=1,
    )


SWING_UP = MPCConfig(
    horizon=25,
    input_lower=-0.6,
    input_upper=0.6,
    dt=0.1,
    continuous_time=True,
    state_weight=[10.0, 1.0],
    input_weight=0.1,
    terminal_weight=[50.0, 5.0],
)


@pytest.fixture(scope="module")
def boxed():
    """Solved to the feed-forward floor, for finite differences of the solution map."""
    config = SWING_UP.replace(tolerance=1e-12, cost_tolerance=0.0, max_iterations=300)
    return DifferentiableMPC(pendulum, config, model_params=jnp.array([9.81, 0.3]), input_dim=1)


def single_shooting_cost(mpc, x0, ref, params):
    """The same objective written out independently, with its jitted gradient for scipy."""
    w = mpc._cost_params(jnp.asarray(x0), None)

    def cost(u_flat):
        def stage(x, u):
            return mpc.dynamics(x, u, params), (x - ref) @ w["Q"] @ (x - ref) + u @ w["R"] @ u

        x_n, costs = jax.lax.scan(stage, jnp.asarray(x0), u_flat.reshape(-1, mpc.input_dim))
        return jnp.sum(costs) + (x_n - ref) @ w["Q_N"] @ (x_n - ref)

    value_and_grad = jax.jit(jax.value_and_grad(cost))
    return lambda u: tuple(np.asarray(v, float) for v in value_and_grad(jnp.asarray(u)))


def _control_and_cost(sol):
    return jnp.concatenate([sol.control, sol.cost[None]])


def test_lqr_equals_riccati(lqr):
    x0 = jnp.array([1.0, -0.5])
    sol = lqr.solve(x0)
    assert sol.converged
    np.testing.assert_allclose(float(sol.cost), float(x0 @ P @ x0), rtol=1e-10)
    np.testing.assert_allclose(sol.control, -K @ np.asarray(x0), rtol=1e-9)
    # Closed-loop states under u = -K x are the predicted ones.
    np.testing.assert_allclose(sol.states[1], (A - B @ K) @ np.asarray(x0), rtol=1e-9)


def test_lqr_gradients_are_riccati(lqr):
    x0 = jnp.array([1.0, 0.0])
    sol = jax.jit(jax.jacrev(lambda x: _control_and_cost(lqr.solve(x))))(x0)
    np.testing.assert_allclose(sol[1], 2 * P @ np.asarray(x0), rtol=1e-9)
    np.testing.assert_allclose(sol[:1], -K, rtol=1e-9)


def test_box_constrained_optimum_matches_scipy(boxed):
    x0, ref = np.array([0.0, 0.0]), np.array([np.pi, 0.0])
    sol = boxed.solve(x0, ref, initial_controls=np.zeros((25, 1)))
    assert sol.converged
    assert np.all(np.abs(np.asarray(sol.controls)) <= 0.6 + 1e-12)
    cost = single_shooting_cost(boxed, x0, ref, jnp.array([9.81, 0.3]))
    ref_sol = scipy.optimize.minimize(
        cost,
        np.asarray(sol.controls).ravel() * 0.9,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-0.6, 0.6)] * 25,
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000},
    )
    assert float(sol.cost) <= ref_sol.fun * (1 + 1e-9)
    np.testing.assert_allclose(ref_sol.x, np.asarray(sol.controls).ravel(), atol=1e-4)
    np.testing.assert_allclose(float(sol.cost), cost(sol.controls.ravel())[0], rtol=1e-10)
    assert np.sum(np.abs(np.asarray(sol.controls)) >= 0.6 - 1e-9) >= 3  # bounds are active


def _central(fn, x, h=1e-3):
    # Solutions are accurate to ~1e-8, so a step of 1e-3 keeps that error and the O(h^2)
    # truncation error both well below the tolerances (measured: 5e-6 relative at 1e-3).
    cols = []
    for i in range(x.shape[0]):
        e = np.zeros_like(x)
        e[i] = h
        cols.append((fn(x + e) - fn(x - e)) / (2 * h))
    return np.stack(cols, axis=-1)


def test_gradients_match_finite_differences_including_saturation(boxed):
    ref = np.array([np.pi, 0.0])
    x0 = np.array([0.3, 0.1])
    base = boxed.solve(x0, ref, initial_controls=np.zeros((25, 1)))
    u_star = base.controls
    margin = 0.6 - np.abs(np.asarray(u_star[:, 0]))
    saturated = margin <= 1e-9
    assert saturated[0]  # the first control is at its bound here
    # Strict complementarity: free controls clear of the bound by more than the FD step moves them.
    assert np.all(margin[~saturated] > 1e-3), margin

    def solve(x):
        return boxed.solve(jnp.asarray(x), ref, initial_controls=u_star)

    sens = jax.jit(jax.jacrev(lambda x: jnp.append(solve(x).controls[:, 0], solve(x).cost)))
    jac = np.asarray(sens(jnp.asarray(x0)))
    jac_u, grad_j = jac[:-1], jac[-1]
    fd_u = _central(lambda x: np.asarray(solve(x).controls[:, 0]), x0)
    fd_j = _central(lambda x: float(solve(x).cost), x0)
    np.testing.assert_array_equal(jac_u[saturated], 0.0)
    np.testing.assert_allclose(jac_u, fd_u, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_j, fd_j, rtol=1e-5)


def test_gradients_wrt_cost_and_dynamics_parameters(lqr):
    x0 = jnp.array([1.0, 0.5])
    weights = lqr._cost_params(x0, None)

    def cost_of(r_scale, b_scale):
        c = dict(weights, R=weights["R"] * r_scale)
        p = (PARAMS[0], PARAMS[1] * b_scale)
        return lqr.solve(x0, cost_params=c, model_params=p).control[0]

    g = jax.jit(jax.grad(cost_of, argnums=(0, 1)))(1.0, 1.0)
    fd_r = (cost_of(1 + 1e-3, 1.0) - cost_of(1 - 1e-3, 1.0)) / 2e-3
    fd_b = (cost_of(1.0, 1 + 1e-3) - cost_of(1.0, 1 - 1e-3)) / 2e-3
    np.testing.assert_allclose(g, (fd_r, fd_b), rtol=1e-4)
    assert abs(float(g[0])) > 1e-3 and abs(float(g[1])) > 1e-3


def test_warm_start_same_optimum_fewer_iterations():
    config = SWING_UP.replace(input_lower=-3.0, input_upper=3.0)
    mpc = DifferentiableMPC(pendulum, config, model_params=jnp.array([9.81, 0.3]), input_dim=1)
    ref = np.array([np.pi, 0.0])
    x0 = np.array([np.pi - 0.5, 0.0])
    first = mpc.solve(x0, ref)
    x1 = x0 + np.array([0.01, -0.01])  # a disturbed re-solve: the old plan is nearly optimal
    warm = mpc.solve(x1, ref, initial_controls=first.controls)
    cold = mpc.solve(x1, ref, initial_controls=np.zeros((25, 1)))
    mpc.reset()
    first = mpc.solve(np.array([0.0, 0.0]), ref)
    by_default = mpc.solve(np.asarray(first.states[1]), ref)  # warm_start: the shifted plan
    explicit = mpc.solve(
        np.asarray(first.states[1]), ref, initial_controls=first.shifted_controls()
    )
    np.testing.assert_array_equal(by_default.controls, explicit.controls)
    assert int(by_default.iterations) == int(explicit.iterations)
    assert warm.converged and cold.converged
    np.testing.assert_allclose(float(warm.cost), float(cold.cost), rtol=1e-8)
    # Cost-based stopping pins the controls down to about sqrt(cost_tolerance) here.
    np.testing.assert_allclose(warm.controls, cold.controls, atol=1e-4)
    assert int(warm.iterations) * 2 <= int(cold.iterations), (warm.iterations, cold.iterations)
    # second_order=False (plain iLQR) converges only linearly on this saturated problem.
    ilqr = DifferentiableMPC(
        pendulum,
        config.replace(second_order=False),
        model_params=jnp.array([9.81, 0.3]),
        input_dim=1,
    )
    slow = ilqr.solve(x1, ref, initial_controls=np.zeros((25, 1)))
    np.testing.assert_allclose(float(slow.cost), float(cold.cost), rtol=1e-8)
    assert int(slow.iterations) >= 2 * int(cold.iterations), (slow.iterations, cold.iterations)


def test_vmap_over_states_equals_loop(boxed):
    ref = np.array([np.pi, 0.0])
    states = np.array([[0.0, 0.0], [0.5, -0.2], [-0.3, 0.4]])
    batch = boxed.solve_batch(states, ref)
    for i, x in enumerate(states):
        one = boxed.solve(x, ref, initial_controls=np.zeros((25, 1)))
        np.testing.assert_allclose(batch.controls[i], one.controls, rtol=1e-10, atol=1e-12)
        assert int(batch.iterations[i]) == int(one.iterations)


def test_real_time_mode_stops_with_a_feasible_improving_control():
    config = SWING_UP.replace(input_lower=-3.0, input_upper=3.0, real_time_iterations=2)
    mpc = DifferentiableMPC(pendulum, config, model_params=jnp.array([9.81, 0.3]), input_dim=1)
    ref = np.array([np.pi, 0.0])
    sol = mpc.solve(np.zeros(2), ref, initial_controls=np.zeros((25, 1)))
    assert int(sol.status) == Status.MAX_STEPS and int(sol.iterations) == 2
    assert np.all(np.abs(np.asarray(sol.controls)) <= 3.0)
    zero_cost = single_shooting_cost(mpc, np.zeros(2), ref, jnp.array([9.81, 0.3]))(np.zeros(25))[0]
    assert float(sol.cost) < zero_cost


def test_state_constraints_match_scipy_and_differentiate():
    config = MPCConfig(horizon=15, input_lower=-1.0, input_upper=1.0, input_weight=0.1)
    mpc = DifferentiableMPC(
        double_integrator,
        config,
        model_params=PARAMS,
        input_dim=1,
        state_constraints=lambda x: jnp.array([-x[1] - 0.3]),  # velocity >= -0.3
    )
    x0 = np.array([1.0, 0.0])
    sol = mpc.solve(x0, initial_controls=np.zeros((15, 1)))
    assert sol.converged and float(sol.constraint_violation) <= 1e-6
    assert float(jnp.min(sol.states[:, 1])) <= -0.3 + 1e-5  # the constraint is active

    cost = single_shooting_cost(mpc, x0, np.zeros(2), PARAMS)

    def velocities(u):
        x, out = x0, []
        for ui in u:
            x = A @ x + B[:, 0] * ui
            out.append(x[1])
        return np.array(out)

    ref = scipy.optimize.minimize(
        cost,
        np.zeros(15),
        jac=True,
        method="SLSQP",
        bounds=[(-1, 1)] * 15,
        constraints=[{"type": "ineq", "fun": lambda u: velocities(u) + 0.3}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    np.testing.assert_allclose(float(sol.cost), ref.fun, rtol=1e-6)

    u_star = sol.controls
    grad = jax.jit(jax.grad(lambda x: mpc.solve(x, initial_controls=u_star).cost))(jnp.asarray(x0))
    fd = _central(lambda x: float(mpc.solve(x, initial_controls=u_star).cost), x0)
    np.testing.assert_allclose(grad, fd, rtol=1e-4)


def test_nonfinite_model_returns_best_feasible_control_not_nan():
    # The model blows up (NaN) for |u| > 0.5: the line search must refuse those steps.
    def fragile(x, u):
        return x + 0.1 * u + jnp.where(jnp.abs(u) > 0.5, jnp.nan, 0.0)

    mpc = DifferentiableMPC(fragile, MPCConfig(horizon=5, input_weight=1e-3), input_dim=1)
    sol = mpc.solve(np.array([10.0]))
    assert np.all(np.isfinite(np.asarray(sol.controls))) and np.isfinite(float(sol.cost))
    assert np.all(np.abs(np.asarray(sol.controls)) <= 0.5)
    assert int(sol.status) != Status.NONFINITE or float(sol.cost) < 500.0


def test_box_qp_matches_scipy_on_random_instances():
    rng = np.random.default_rng(0)
    solve_qp = jax.jit(box_qp)
    for _ in range(5):
        m = rng.normal(size=(3, 3))
        h = m @ m.T + 0.5 * np.eye(3)
        g = rng.normal(size=3) * 3
        lo, hi = -np.ones(3), np.ones(3)
        res = solve_qp(
            jnp.asarray(h), jnp.asarray(g), jnp.asarray(lo), jnp.asarray(hi), jnp.zeros(3)
        )
        ref = scipy.optimize.minimize(
            lambda x, h=h, g=g: (0.5 * x @ h @ x + g @ x, h @ x + g),
            np.zeros(3),
            jac=True,
            method="L-BFGS-B",
            bounds=list(zip(lo, hi, strict=True)),
            options={"gtol": 1e-12},
        )
        np.testing.assert_allclose(res.x, ref.x, atol=1e-6)


class _Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, u):
        self.calls += 1
        return x + u


@pytest.mark.parametrize(
    ("state", "reference", "match"),
    [
        (np.zeros(3), None, "dimension 3 but the model's state has 2|reference"),
        (np.zeros(2), np.zeros((4, 2)), "horizon \\+ 1 = 6"),
        (np.array([np.nan, 0.0]), None, "NaN"),
        (np.zeros((2, 2)), None, "1-D state"),
    ],
)
def test_bad_calls_fail_before_compiling(state, reference, match):
    model = _Counting()
    mpc = DifferentiableMPC(model, MPCConfig(horizon=5), input_dim=2)
    mpc.state_dim = 2
    with pytest.raises(ValueError, match=match):
        mpc.solve(state, reference)
    assert model.calls == 0


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="input_lower > input_upper"):
        MPCConfig(input_lower=[0.0, 1.0], input_upper=[1.0, 0.5])
    with pytest.raises(ValueError, match="horizon"):
        MPCConfig(horizon=0)
    with pytest.raises(ValueError, match="dt"):
        MPCConfig(continuous_time=True)
    with pytest.raises(ValueError, match="positive semi-definite"):
        MPCConfig(state_weight=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="input_dim"):
        DifferentiableMPC(lambda x, u: x, MPCConfig())
    with pytest.raises(ValueError, match="positive definite"):
        DifferentiableMPC(lambda x, u: x, MPCConfig(input_weight=0.0), input_dim=1)
    with pytest.raises(ValueError, match="2 inputs"):
        DifferentiableMPC(lambda x, u: x, MPCConfig(input_lower=[0.0, 0.0, 0.0]), input_dim=2)


def test_discrete_barrier_inside_mpc_keeps_the_decay_condition():
    from opifex.optimization.control import discrete_cbf_constraint

    # Position x[0] must stay below 0.5, approached no faster than h decays by 1 - gamma.
    cbf = discrete_cbf_constraint(lambda x, args: 0.5 - x[0], gamma=0.3)
    mpc = DifferentiableMPC(
        double_integrator,
        MPCConfig(horizon=20, input_lower=-2.0, input_upper=2.0, input_weight=0.01),
        model_params=PARAMS,
        input_dim=1,
        state_constraints=lambda x, x_next: -jnp.atleast_1d(cbf(x, x_next)),
    )
    target = np.array([2.0, 0.0])  # beyond the barrier: the constraint must bind
    sol = mpc.solve(np.zeros(2), target, initial_controls=np.zeros((20, 1)))
    assert sol.converged
    xs = np.asarray(sol.states)
    h = 0.5 - xs[:, 0]
    assert np.all(h[1:] - 0.7 * h[:-1] >= -1e-6)
    assert np.max(xs[:, 0]) > 0.45  # it goes as close as allowed


def test_documented_example_runs_with_an_identified_model():
    """SPEC "Control System" example, as written, on data from a known linear system."""
    from opifex.optimization.control import LinearStateSpace, SystemIdentifier

    rng = np.random.default_rng(0)
    input_data = rng.normal(size=(200, 1))
    state_data = np.zeros((200, 2))
    for t in range(199):
        state_data[t + 1] = A @ state_data[t] + B @ input_data[t]
    dynamics_model = LinearStateSpace(state_dim=2, input_dim=1, dt=DT)
    mpc_config = MPCConfig(horizon=30, terminal_weight=P)
    current_state = np.array([1.0, 0.0])
    reference_trajectory = np.zeros((31, 2))

    system_id = SystemIdentifier(model=dynamics_model)
    trained_model = system_id.fit(state_data, input_data)

    mpc = DifferentiableMPC(system_model=trained_model, config=mpc_config)
    control_action = mpc.solve(current_state, reference_trajectory)

    # The identified model is the true one, so MPC with the DARE terminal cost is LQR.
    np.testing.assert_allclose(control_action.control, -K @ current_state, rtol=1e-8)
    np.testing.assert_allclose(
        float(control_action.cost), current_state @ P @ current_state, rtol=1e-8
    )


def test_general_cost_equals_the_same_quadratic_and_differentiates_its_parameters(lqr):
    def stage(x, u, r, c):
        return c["q"] * jnp.sum((x - r) ** 2) + c["r"] * jnp.sum(u**2)

    def terminal(x, r, c):
        return (x - r) @ c["P"] @ (x - r)

    general = DifferentiableMPC(
        double_integrator,
        MPCConfig(horizon=30),
        model_params=PARAMS,
        input_dim=1,
        stage_cost=stage,
        terminal_cost=terminal,
        cost_params={"q": 1.0, "r": 1.0, "P": jnp.asarray(P)},
    )
    x0 = jnp.array([0.7, -0.2])
    a, b = general.solve(x0), lqr.solve(x0)
    np.testing.assert_allclose(a.controls, b.controls, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(a.cost), float(x0 @ P @ x0), rtol=1e-10)

    def u0(r_weight):
        c = {"q": 1.0, "r": r_weight, "P": jnp.asarray(P)}
        return general.solve(x0, cost_params=c).control[0]

    g = jax.jit(jax.grad(u0))(1.0)
    fd = (u0(1.0 + 1e-3) - u0(1.0 - 1e-3)) / 2e-3
    np.testing.assert_allclose(g, fd, rtol=1e-4)
