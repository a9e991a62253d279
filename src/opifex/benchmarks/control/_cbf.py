"""Barrier-function safety filters: adaptive cruise control and a unicycle around an obstacle.

Adaptive cruise control (ACC) is the example of Ames, Grizzle & Tabuada, "Control barrier
function based quadratic programs with application to adaptive cruise control", CDC 2014,
with the parameters of its Table 1: ``m = 1650 kg``, ``g = 9.81 m/s^2``, rolling resistance
``F_r(v) = f0 + f1 v + f2 v^2`` with ``f0 = 0.1 N``, ``f1 = 5 Ns/m``, ``f2 = 0.25 Ns^2/m``,
lead-car speed ``v0 = 13.89 m/s``, desired speed ``vd = 24 m/s``, time headway
``tau_d = 1.8 s`` and wheel-force bounds ``-c_d m g <= u <= c_a m g`` with
``c_a = c_d = 0.3``. State ``(v, z)``: follower speed and gap, ``dv/dt = (u - F_r(v)) / m``,
``dz/dt = v0 - v``. The barrier is the paper's braking-aware one,
``h = z - tau_d v - (v0 - v)^2 / (2 c_d g)``: under full braking ``dh/dt > 0`` for every
``v >= 0``, so the QP with input bounds stays feasible on the whole safe set, and
``h >= 0`` implies the hard headway constraint ``z >= tau_d v``. Initial states: ``v`` uniform
in ``[5, 30]`` m/s and ``h`` uniform in ``[0, 60]`` m (``z`` solved from ``h``), all inside the
safe set. The nominal controller drives to ``vd > v0`` at full force, so unfiltered it
tailgates the lead car.

Unicycle: state ``(p_x, p_y, theta, v)``, inputs acceleration and turn rate, a disc obstacle
of radius 1 at the origin; ``h = |p|^2 - 1`` has relative degree 2 in both inputs, so the
filter is the high-order CBF of Xiao & Belta (2019) (``alpha_1 = 1``, ``alpha_2 = 3``), with
control weight ``W = diag(100, 1)`` so that it steers around rather than brakes to a stop.
The nominal go-to-goal controller steers straight at ``(4, 0)`` through the obstacle. Initial
states start left of the obstacle with ``h >= 0`` and ``psi_1 = dh/dt + h >= 0`` (its safe
set).

Both loops are simulated in continuous time with RK4 on the closed-loop field (the filter is
evaluated at every stage) and a violation is ``h < -1e-6``. Timings: one state, jitted, median
of repeats (target 50 us), and 10^4 states through ``vmap`` (target 10 ms); peers are the same
QP by scipy SLSQP on the host (ACC, one state), and numpy closed forms of the same filters
(vectorised for the batch). Options: ``states`` (1000; quick 16), ``seed`` (0).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from opifex.benchmarks._harness import Context, Record, time_host, time_jax

ACC = {
    "m": 1650.0,
    "g": 9.81,
    "f0": 0.1,
    "f1": 5.0,
    "f2": 0.25,
    "v0": 13.89,
    "vd": 24.0,
    "tau_d": 1.8,
    "c_a": 0.3,
    "c_d": 0.3,
}
ALPHA_ACC = 1.0
GOAL = (4.0, 0.0)
UNI_ALPHA = (1.0, 3.0)
# Braking costs more than turning: with equal weights the filter stops in front of the disc
# (the well-known deadlock of CBF-QPs), with these it steers around.
UNI_WEIGHT = (100.0, 1.0)
TOL = -1e-6
BATCH = 10_000


def _acc_f(x, p):
    v = x[0]
    fr = p["f0"] + p["f1"] * v + p["f2"] * v**2
    return jnp.stack([-fr / p["m"], p["v0"] - v])


def _acc_g(x, p):
    return jnp.array([[1.0 / p["m"]], [0.0]], dtype=x.dtype)


def _acc_h(x, p):
    v, z = x[0], x[1]
    return z - p["tau_d"] * v - 0.5 * (p["v0"] - v) ** 2 / (p["c_d"] * p["g"])


def _acc_bounds(p):
    return np.array([-p["c_d"] * p["m"] * p["g"]]), np.array([p["c_a"] * p["m"] * p["g"]])


def _acc_nominal(x, p):
    lo, hi = _acc_bounds(p)
    return jnp.clip(p["m"] * (p["vd"] - x[:1]), lo, hi)


def _acc_states(rng, count, p):
    v = rng.uniform(5.0, 30.0, count)
    h = rng.uniform(0.0, 60.0, count)
    z = h + p["tau_d"] * v + 0.5 * (p["v0"] - v) ** 2 / (p["c_d"] * p["g"])
    return np.stack([v, z], axis=1)


def _uni_f(x, obstacle):
    return jnp.stack([x[3] * jnp.cos(x[2]), x[3] * jnp.sin(x[2]), 0.0 * x[2], 0.0 * x[3]])


def _uni_g(x, obstacle):
    return jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=x.dtype)


def _uni_h(x, obstacle):
    d = x[:2] - obstacle[:2]
    return d @ d - obstacle[2] ** 2


def _uni_nominal(x, obstacle):
    to_goal = jnp.array(GOAL) - x[:2]
    v_des = jnp.minimum(1.5, jnp.linalg.norm(to_goal))
    turn = jnp.arctan2(to_goal[1], to_goal[0]) - x[2]
    return jnp.stack([2.0 * (v_des - x[3]), 3.0 * jnp.arctan2(jnp.sin(turn), jnp.cos(turn))])


def _uni_states(rng, count):
    out = []
    while len(out) < count:
        x = np.array([rng.uniform(-5, -3), rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), 0.0])
        x[3] = rng.uniform(0.0, 1.0)
        r2 = x[0] ** 2 + x[1] ** 2
        hdot = 2 * x[3] * (x[0] * np.cos(x[2]) + x[1] * np.sin(x[2]))
        if r2 - 1 >= 0 and hdot + UNI_ALPHA[0] * (r2 - 1) >= 0:
            out.append(x)
    return np.array(out)


def _filters():
    from opifex.optimization.control.safety import ControlBarrierFunction, SafetyFilter

    acc = SafetyFilter(
        dynamics=(_acc_f, _acc_g),
        barriers=[ControlBarrierFunction(h=_acc_h, alpha=ALPHA_ACC)],
        input_bounds=_acc_bounds(ACC),
    )
    uni = SafetyFilter(
        dynamics=(_uni_f, _uni_g),
        barriers=[
            ControlBarrierFunction(
                h=_uni_h, alpha=UNI_ALPHA[0], alpha2=UNI_ALPHA[1], relative_degree=2
            )
        ],
        control_weight=np.array(UNI_WEIGHT),
    )
    return acc, uni


def _simulate(f, g, h, policy, x0s, args, dt, steps):
    """RK4 on ``dx/dt = f + g policy(x)`` for every initial state; returns states and ``h``."""

    def field(x):
        return f(x, args) + g(x, args) @ policy(x, args)

    def step(x, _):
        # The stages run in a loop so the filter is compiled once, not four times.
        def stage(i, ks):
            shift = jnp.where(i == 3, 1.0, 0.5) * jnp.where(i == 0, 0.0, 1.0)
            return ks.at[i].set(field(x + shift * dt * ks[jnp.maximum(i - 1, 0)]))

        ks = jax.lax.fori_loop(0, 4, stage, jnp.zeros((4, *x.shape), x.dtype))
        x = x + dt / 6.0 * (ks[0] + 2 * ks[1] + 2 * ks[2] + ks[3])
        return x, (x, h(x, args))

    def one(x0):
        return jax.lax.scan(step, x0, None, length=steps)[1]

    return jax.jit(jax.vmap(one))(jnp.asarray(x0s))


def _acc_numpy(x, p):
    """The ACC filter in closed form with numpy: a scalar input, one row and a box."""
    v, z = x[..., 0], x[..., 1]
    fr = p["f0"] + p["f1"] * v + p["f2"] * v**2
    k = p["tau_d"] + (v - p["v0"]) / (p["c_d"] * p["g"])  # -dh/dv
    h = z - p["tau_d"] * v - 0.5 * (p["v0"] - v) ** 2 / (p["c_d"] * p["g"])
    a = -k / p["m"]
    b = -(k * fr / p["m"] + (p["v0"] - v) + ALPHA_ACC * h)
    lo, hi = _acc_bounds(p)
    un = np.clip(p["m"] * (p["vd"] - v), lo[0], hi[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        edge = b / a
    u = np.where(a > 0, np.maximum(un, edge), np.where(a < 0, np.minimum(un, edge), un))
    return np.clip(u, lo[0], hi[0]), a, b, un


def _acc_scipy(x, p):
    from scipy.optimize import minimize

    _, a, b, un = _acc_numpy(x, p)
    lo, hi = _acc_bounds(p)
    res = minimize(
        lambda u: 0.5 * (u[0] - un) ** 2,
        np.array([un]),
        jac=lambda u: np.array([u[0] - un]),
        bounds=[(lo[0], hi[0])],
        constraints=[{"type": "ineq", "fun": lambda u: np.array([a * u[0] - b])}],
        method="SLSQP",
    )
    return res.x


def _uni_numpy(x):
    """The unicycle HOCBF filter in closed form with numpy (derivatives by hand)."""
    px, py, th, v = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
    c, s = np.cos(th), np.sin(th)
    h = px**2 + py**2 - 1.0
    hdot = 2.0 * v * (px * c + py * s)
    a1, a2 = UNI_ALPHA
    psi = hdot + a1 * h
    lf = 2.0 * v**2 + a1 * hdot  # L_f psi_1 = 2 |dp/dt|^2 + alpha_1 L_f h
    lg = np.stack([2.0 * (px * c + py * s), 2.0 * v * (py * c - px * s)], axis=-1)
    tx, ty = GOAL[0] - px, GOAL[1] - py
    turn = np.arctan2(ty, tx) - th
    un = np.stack(
        [
            2.0 * (np.minimum(1.5, np.hypot(tx, ty)) - v),
            3.0 * np.arctan2(np.sin(turn), np.cos(turn)),
        ],
        axis=-1,
    )
    gap = np.maximum(0.0, -(lf + np.sum(lg * un, axis=-1) + a2 * psi))
    lg_w = lg / np.array(UNI_WEIGHT)
    denom = np.sum(lg * lg_w, axis=-1)
    step = np.where(denom > 0, gap / np.where(denom > 0, denom, 1.0), 0.0)
    return un + step[..., None] * lg_w


def _case(ctx, name, safe, f, g, h, nominal, x0s, args, dt, steps, numpy_filter, host):
    host_label, host_peer = host
    records = []
    t0 = time.perf_counter()
    filtered = lambda x, a: safe.filter(x, nominal(x, a), a)  # noqa: E731
    xs, hs = _simulate(f, g, h, filtered, x0s, args, dt, steps)
    _, hs_nom = _simulate(f, g, h, nominal, x0s, args, dt, steps)
    hs, hs_nom = np.asarray(hs), np.asarray(hs_nom)
    count = len(x0s)
    ctx.console.print(
        f"[dim]{name}: {count} closed loops in {time.perf_counter() - t0:.1f} s[/dim]"
    )
    records.append(
        Record(
            f"{name}: violations h < -1e-6 ({count} states)",
            np.sum(hs.min(1) < TOL),
            "",
            target="<= 0",
        )
    )
    records.append(Record(f"{name}: min h over all trajectories", hs.min(), ""))
    records.append(
        Record(
            f"{name}: share of states the nominal controller drives unsafe",
            np.mean(hs_nom.min(1) < TOL),
            "",
        )
    )
    rng = np.random.default_rng(1)
    # Device arrays: the timings measure the filter, not host-to-device copies.
    batch_np = np.asarray(xs)[rng.integers(0, count, BATCH), rng.integers(0, steps, BATCH)]
    batch_x = jnp.asarray(batch_np)
    one = lambda x: safe.filter(x, nominal(x, args), args)  # noqa: E731
    single = time_jax(one, batch_x[0], repeats=50)
    peer = time_host(host_peer, batch_np[0], repeats=50 if not ctx.quick else 10)
    records.append(
        Record(
            f"{name}: filter time per state (jit, median)",
            single.run_s * 1e6,
            "us",
            target="<= 50",
            peer=host_label,
            peer_value=peer.run_s * 1e6,
        )
    )
    batched_fn = jax.vmap(one)
    ours = np.asarray(jax.jit(batched_fn)(batch_x))  # compiled once: time_jax reuses it
    batched = time_jax(batched_fn, batch_x, repeats=20 if not ctx.quick else 3)
    npy = time_host(numpy_filter, batch_np, repeats=20 if not ctx.quick else 3)
    records.append(
        Record(
            f"{name}: filter time {BATCH} states (vmap, median)",
            batched.run_s * 1e3,
            "ms",
            target="<= 10",
            peer="numpy closed form (vectorised)",
            peer_value=npy.run_s * 1e3,
        )
    )
    diff = np.max(np.abs(ours - np.asarray(numpy_filter(batch_np)).reshape(ours.shape)))
    scale = max(1.0, float(np.max(np.abs(ours))))
    records.append(
        Record(
            f"{name}: max |u - numpy closed form| / max(1, |u|)", diff / scale, "", target="<= 1e-9"
        )
    )
    return records, np.asarray(xs), hs, hs_nom


def run(ctx: Context) -> list[Record]:
    jax.config.update("jax_enable_x64", True)
    count = ctx.option("states", 16 if ctx.quick else 1000, int)
    rng = np.random.default_rng(ctx.option("seed", 0, int))
    acc, uni = _filters()
    p = {k: float(v) for k, v in ACC.items()}
    acc_dt, acc_steps = (0.2, 50) if ctx.quick else (0.05, 600)
    uni_dt, uni_steps = (0.1, 80) if ctx.quick else (0.02, 600)

    def acc_numpy(x):
        return _acc_numpy(x, p)[0]

    acc_host = ("scipy SLSQP on the host, same QP", lambda x: _acc_scipy(x, p))
    uni_host = ("numpy closed form on the host", _uni_numpy)

    records, acc_out = [], None
    r, *acc_out = _case(
        ctx,
        "acc",
        acc,
        _acc_f,
        _acc_g,
        _acc_h,
        _acc_nominal,
        _acc_states(rng, count, p),
        p,
        acc_dt,
        acc_steps,
        acc_numpy,
        acc_host,
    )
    records += r
    obstacle = jnp.array([0.0, 0.0, 1.0])
    r, *uni_out = _case(
        ctx,
        "unicycle",
        uni,
        _uni_f,
        _uni_g,
        _uni_h,
        _uni_nominal,
        _uni_states(rng, count),
        obstacle,
        uni_dt,
        uni_steps,
        _uni_numpy,
        uni_host,
    )
    records += r
    _plot(ctx, acc_out, acc_dt, uni_out, uni_dt)
    return records


def _plot(ctx, acc_out, acc_dt, uni_out, uni_dt, shown=20):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (_, hs, hs_nom), dt, title in (
        (axes[0], acc_out, acc_dt, "ACC (Ames et al. 2014)"),
        (axes[1], uni_out, uni_dt, "unicycle (HOCBF)"),
    ):
        t = dt * np.arange(1, hs.shape[1] + 1)
        for k in range(min(shown, len(hs))):
            ax.plot(t, hs_nom[k], color="tab:red", alpha=0.3, lw=0.8)
            ax.plot(t, hs[k], color="tab:blue", alpha=0.6, lw=0.8)
        ax.axhline(0.0, color="k", lw=1)
        ax.set(xlabel="t [s]", ylabel="h(x(t))", title=f"{title}: filtered (blue), nominal (red)")
        ax.set_ylim(min(-5.0, float(hs_nom[:shown].min())), float(hs[:shown].max()) * 1.05)
    ctx.save_figure(fig, "cbf_barrier_over_time")

    xs, _, _ = uni_out
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.add_patch(plt.Circle((0.0, 0.0), 1.0, color="0.6", alpha=0.6))
    for k in range(min(3 * shown, len(xs))):
        ax.plot(xs[k, :, 0], xs[k, :, 1], color="tab:blue", lw=0.7, alpha=0.7)
    ax.plot(*GOAL, "k*", ms=12)
    ax.set(aspect="equal", xlabel="p_x", ylabel="p_y", title="unicycle paths around the obstacle")
    ctx.save_figure(fig, "cbf_unicycle_paths")
