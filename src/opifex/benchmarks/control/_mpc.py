"""MPC parts of ``opifex bench control``: LQR against Riccati, cart-pole against IPOPT.

1. Double integrator (dt 0.1, Q = I, R = 1, terminal weight the DARE solution P): the MPC cost
   must equal ``x0' P x0``, its first control ``-K x0`` and its gradient ``2 P x0``.
2. Cart-pole swing-up (:mod:`opifex.benchmarks.problems.cartpole`) against CasADi + IPOPT in
   the same process: open-loop optimum and time, a closed loop of warm-started MPC steps
   (cost, bound violations, time per step, iterations cold against warm).
3. Gradients ``du0/dx0`` and ``dJ/dx0`` at an interior state against central finite
   differences of our solver and of IPOPT, and ``du0/dx0`` at the saturated start.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from opifex.benchmarks._harness import Context, Record

FD_STEP = 1e-5
INTERIOR_STATE = np.array([0.05, 0.1, 0.0, 0.0])


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def lqr_records() -> list[Record]:
    import jax
    import jax.numpy as jnp
    import scipy.linalg

    from opifex.optimization.control import DifferentiableMPC, MPCConfig

    dt = 0.1
    a = np.array([[1.0, dt], [0.0, 1.0]])
    b = np.array([[0.5 * dt**2], [dt]])
    p = scipy.linalg.solve_discrete_are(a, b, np.eye(2), np.eye(1))
    k = np.linalg.solve(1.0 + b.T @ p @ b, b.T @ p @ a)
    x0 = jnp.array([1.0, 0.0])
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    mpc = DifferentiableMPC(
        lambda x, u: aj @ x + bj @ u,
        MPCConfig(horizon=30, state_weight=1.0, input_weight=1.0, terminal_weight=p),
        input_dim=1,
    )
    sol = mpc.solve(x0)

    def control_and_cost(x):
        sol = mpc.solve(x)
        return jnp.concatenate([sol.control, sol.cost[None]])

    # jit around the whole Jacobian: one compilation instead of op-by-op implicit backward passes.
    sens = np.asarray(jax.jit(jax.jacrev(control_and_cost))(x0))
    jac, grad = sens[:1], sens[1]
    riccati = float(x0 @ p @ x0)
    return [
        Record(
            "lqr: cost vs Riccati x0'Px0 (rel. error)",
            _rel(sol.cost, riccati),
            "",
            "<= 1e-8",
            peer="scipy solve_discrete_are",
            peer_value=riccati,
        ),
        Record(
            "lqr: u0 vs -K x0 (rel. error)", _rel(sol.control, -k @ np.asarray(x0)), "", "<= 1e-8"
        ),
        Record(
            "lqr: dJ/dx0 vs 2 P x0 (rel. error)", _rel(grad, 2 * p @ np.asarray(x0)), "", "<= 1e-8"
        ),
        Record("lqr: du0/dx0 vs -K (rel. error)", _rel(jac, -k), "", "<= 1e-8"),
    ]


def _closed_loop(solve_step, plant, x0, steps, stage_cost):
    """Run ``steps`` MPC steps; return states, controls, per-step seconds, iterations, cost."""
    x = np.asarray(x0, float)
    states, controls, seconds, iterations, cost = [x], [], [], [], 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        u, its = solve_step(x)
        seconds.append(time.perf_counter() - t0)
        iterations.append(its)
        cost += stage_cost(x, u)
        x = plant(x, u)
        states.append(x)
        controls.append(u)
    return np.array(states), np.array(controls), seconds, iterations, cost


def cartpole_records(ctx: Context) -> list[Record]:
    import jax
    import jax.numpy as jnp

    from opifex.benchmarks.problems import cartpole as cp
    from opifex.optimization.control import DifferentiableMPC

    steps = ctx.option("closed_loop_steps", 10 if ctx.quick else 100, int)
    repeats = 3 if ctx.quick else 7
    ipopt = cp.CasadiCartPole(tol=1e-10)
    # Real-time tolerances for the closed loop: a normalised step of 1e-6 (8e-5 N at the bound).
    realtime = DifferentiableMPC(
        cp.dynamics_ct,
        cp.mpc_config(max_iterations=500, tolerance=1e-6, cost_tolerance=1e-10),
        input_dim=1,
    )
    # The open-loop optimum to the default tolerances (the quick run reuses the real-time one).
    mpc = (
        realtime
        if ctx.quick
        else DifferentiableMPC(cp.dynamics_ct, cp.mpc_config(max_iterations=500), input_dim=1)
    )
    x0 = jnp.asarray(cp.X0)
    records: list[Record] = []

    # Open loop from rest, cold (zeros) for both.
    t0 = time.perf_counter()
    ours = mpc.solve(x0, initial_controls=np.zeros((cp.HORIZON, 1)))
    jax.block_until_ready(ours)
    first_call = time.perf_counter() - t0
    ours_t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mpc.solve(x0, initial_controls=np.zeros((cp.HORIZON, 1))))
        ours_t.append(time.perf_counter() - t0)
    ipopt_t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ip_cost, ip_u, ip_x, _ = ipopt.solve(cp.X0)
        ipopt_t.append(time.perf_counter() - t0)
    records += [
        Record("cart-pole open loop: cost", float(ours.cost), "", None, "IPOPT", ip_cost),
        Record(
            "cart-pole open loop: |J - J_ipopt| / J_ipopt",
            abs(float(ours.cost) - ip_cost) / ip_cost,
            "",
            "<= 1e-6",
        ),
        Record(
            "cart-pole open loop: solve time (cold)",
            1e3 * statistics.median(ours_t),
            "ms",
            None,
            "IPOPT",
            1e3 * statistics.median(ipopt_t),
        ),
        Record("cart-pole open loop: compile + first solve", first_call, "s"),
        Record("cart-pole open loop: iterations", int(ours.iterations), ""),
    ]

    # Closed loop: both warm-started from their previous solution; the same RK4 plant.
    plant_jit = jax.jit(lambda x, u: realtime.dynamics(x, u, None))

    def plant(x, u):
        return np.asarray(plant_jit(x, np.asarray(u, float).reshape(1)))

    def ours_step(x):
        sol = realtime.solve(x)
        return np.asarray(sol.control), int(sol.iterations)

    ours_loop = _closed_loop(ours_step, plant, cp.X0, steps, cp.stage_cost_np)
    cold_iters = [
        int(realtime.solve(x, initial_controls=np.zeros((cp.HORIZON, 1))).iterations)
        for x in ours_loop[0][:-1]
    ]
    guess = [None]

    def ipopt_step(x):
        _, u, _, w = ipopt.solve(x, guess[0])
        guess[0] = ipopt.shift(w, ipopt.n_x)
        return np.array([u[0]]), 0

    ip_loop = _closed_loop(ipopt_step, plant, cp.X0, steps, cp.stage_cost_np)
    violations = int(np.sum(np.abs(ours_loop[1]) > cp.F_MAX + 1e-9))
    warm_iters = statistics.mean(ours_loop[3][1:]) if steps > 1 else float(ours_loop[3][0])
    cold_mean = statistics.mean(cold_iters[1:]) if steps > 1 else float(cold_iters[0])
    records += [
        Record(
            f"cart-pole closed loop ({steps} steps): cost",
            ours_loop[4],
            "",
            None,
            "IPOPT",
            ip_loop[4],
        ),
        Record(
            "cart-pole closed loop: |J - J_ipopt| / J_ipopt",
            abs(ours_loop[4] - ip_loop[4]) / ip_loop[4],
            "",
            "<= 1e-3",
        ),
        Record("cart-pole closed loop: input-bound violations", violations, "", "<= 0"),
        Record(
            "cart-pole closed loop: median time per MPC step",
            1e3 * statistics.median(ours_loop[2][1:]),
            "ms",
            "<= 1.5",
            "IPOPT",
            1e3 * statistics.median(ip_loop[2][1:]),
        ),
        Record(
            "cart-pole closed loop: mean iterations cold / warm",
            cold_mean / warm_iters,
            "x",
            ">= 2",
        ),
    ]
    if not ctx.quick:  # the unit tests check these gradients; the smoke run skips the compile
        records += _gradient_records(realtime, ipopt, ours.controls)
    _plot(ctx, ours, (ip_u, ip_x), ours_loop, ip_loop)
    return records


def _gradient_records(realtime, ipopt, saturated_controls) -> list[Record]:
    import jax
    import jax.numpy as jnp

    from opifex.benchmarks.problems import cartpole as cp
    from opifex.optimization.control import DifferentiableMPC

    # Tight tolerances so that finite differences of the solution map are accurate.
    del realtime
    config = cp.mpc_config(max_iterations=2000, tolerance=1e-13, cost_tolerance=0.0)
    precise, step = DifferentiableMPC(cp.dynamics_ct, config, input_dim=1), FD_STEP
    x_int = jnp.asarray(INTERIOR_STATE)
    base = precise.solve(x_int, initial_controls=np.zeros((cp.HORIZON, 1)))
    u_star = base.controls
    active = int(np.sum(np.abs(np.asarray(u_star)) >= cp.F_MAX - 1e-9))

    def control_and_cost(x, u_init):
        sol = precise.solve(x, initial_controls=u_init)
        return jnp.concatenate([sol.control, sol.cost[None]])

    # One reverse-mode Jacobian gives du0/dx0 and dJ/dx0 (implicit differentiation).
    sensitivity = jax.jit(jax.jacrev(control_and_cost))
    jac = np.asarray(sensitivity(x_int, u_star))
    du, dj = jac[0], jac[1]
    sat = np.asarray(sensitivity(jnp.asarray(cp.X0), saturated_controls))[0]

    def ours(x):
        return np.asarray(control_and_cost(jnp.asarray(x), u_star))

    fine_ipopt = type(ipopt)(tol=1e-12)
    _, _, _, w_star = fine_ipopt.solve(INTERIOR_STATE)

    def theirs(x):
        cost, u, _, _ = fine_ipopt.solve(x, w_star)
        return np.array([u[0], cost])

    def central(fn):
        cols = []
        for i in range(4):
            e = np.zeros(4)
            e[i] = step
            cols.append((fn(INTERIOR_STATE + e) - fn(INTERIOR_STATE - e)) / (2 * step))
        return np.array(cols).T  # rows: u0, J

    fd_ours, fd_ipopt = central(ours), central(theirs)
    return [
        Record("gradients: active bounds at the interior state", active, "", "<= 0"),
        Record(
            "gradients: du0/dx0 vs central FD of ours (rel.)", _rel(du, fd_ours[0]), "", "<= 1e-4"
        ),
        Record(
            "gradients: du0/dx0 vs central FD of IPOPT (rel.)", _rel(du, fd_ipopt[0]), "", "<= 1e-4"
        ),
        Record(
            "gradients: dJ/dx0 vs central FD of ours (rel.)", _rel(dj, fd_ours[1]), "", "<= 1e-4"
        ),
        Record(
            "gradients: dJ/dx0 vs central FD of IPOPT (rel.)", _rel(dj, fd_ipopt[1]), "", "<= 1e-4"
        ),
        Record(
            "gradients: |du0/dx0| at the saturated start",
            float(np.max(np.abs(sat))),
            "",
            "<= 1e-12",
        ),
    ]


def _plot(ctx: Context, ours, ipopt_open, ours_loop, ip_loop) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from opifex.benchmarks.problems import cartpole as cp

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    t_open = cp.DT * np.arange(cp.HORIZON + 1)
    ip_u, ip_x = ipopt_open
    for col, (label, idx) in enumerate((("cart position p [m]", 0), ("pole angle theta [rad]", 1))):
        ax = axes[0, col]
        ax.plot(t_open, np.asarray(ours.states)[:, idx], label="opifex box-DDP")
        ax.plot(t_open, ip_x[:, idx], "--", label="CasADi + IPOPT")
        ax.set(xlabel="t [s]", ylabel=label, title=f"open loop: {label.split(' [')[0]}")
        ax.legend()
    ax = axes[0, 2]
    ax.step(t_open[:-1], np.asarray(ours.controls)[:, 0], where="post", label="opifex")
    ax.step(t_open[:-1], ip_u, "--", where="post", label="IPOPT")
    ax.axhline(cp.F_MAX, color="gray", lw=0.8)
    ax.axhline(-cp.F_MAX, color="gray", lw=0.8)
    ax.set(xlabel="t [s]", ylabel="F [N]", title="open loop: force")
    ax.legend()
    t_loop = cp.DT * np.arange(len(ours_loop[0]))
    for col, (label, idx) in enumerate((("p [m]", 0), ("theta [rad]", 1))):
        ax = axes[1, col]
        ax.plot(t_loop, ours_loop[0][:, idx], label="opifex MPC")
        ax.plot(t_loop, ip_loop[0][:, idx], "--", label="IPOPT MPC")
        ax.set(xlabel="t [s]", ylabel=label, title=f"closed loop: {label}")
        ax.legend()
    ax = axes[1, 2]
    ax.plot(1e3 * np.asarray(ours_loop[2]), label="opifex")
    ax.plot(1e3 * np.asarray(ip_loop[2]), label="IPOPT")
    ax.set(xlabel="MPC step", ylabel="ms", yscale="log", title="time per MPC step")
    ax.legend()
    ctx.save_figure(fig, "cartpole")
    plt.close(fig)


def run(ctx: Context) -> list[Record]:
    """LQR and cart-pole records."""
    return lqr_records() + cartpole_records(ctx)
