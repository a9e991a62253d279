"""Part ``warm`` of ``opifex bench l2o``: iterations saved by warm starts on related problems.

Three families of related problems, each solved once per start rule and per order:

- **Curve fits** (synthetic, 5 parameters): ``y_s(t) = a e^{-k t} + g e^{-((t - c) / w)^2}``
  plus fixed-seed Gaussian noise (sd 0.02) on 60 points of ``[0, 10]``, with
  ``(a, k, g, c, w) = (3 + s, 0.3 + 0.2 sin(pi s), 2 + cos(pi s), 3 + 4 s, 1 + 0.5 s)``, ``s``
  on a uniform grid of ``[0, 1]``. Features: the data ``y``. Cold start: the parameters at
  ``s = 0.5``. Solvers: our Levenberg-Marquardt (ftol = xtol = gtol = 1e-10) and L-BFGS
  (gtol 1e-6).
- **Streaming logistic regression** (the long first-order run that tests the SPEC's
  "10-50x faster convergence on related problems"): a stream of ``(x_i, label_i)`` with
  ``x_i = z_i * c`` (``z_i`` standard normal in 20 dimensions, column scales ``c``
  geometric from 1 to 0.01, as unstandardized features are) and
  ``P(label_i = 1) = sigmoid(x_i . w(tau_i))``, the true weights turning slowly (a quarter
  turn over the stream) with the stream position ``tau_i``. Problem ``k`` refits on the
  window of 200 samples starting at ``5 k`` (consecutive windows share 97.5% of their
  data): mean logistic loss plus ``1e-4 / 2 ||w||^2`` (Hessian condition number about
  2e3). Features: ``X' label / 200``. Cold start: ``w = 0``. Solver: gradient descent with
  step ``1 / L`` (``L = ||X||_2^2 / (4 * 200) + 1e-4``) until the objective gap
  ``f(w) - f*`` is at most ``rtol (f(0) - f*)``, ``rtol = 1e-6`` (``f*`` from Newton's
  method in NumPy, outside the timings). For a linearly convergent method the steps
  saved are ``log(cold gap / warm gap) / log(1 / contraction)``, and data changes move
  the solution mostly along the Hessian's small eigenvectors, where gradient descent is
  slowest; this family measures how much that leaves.
- **DC3 QP** (:func:`opifex.benchmarks.problems.dc3_qp.make_dc3_qp`, 100 variables, 50
  equalities, 50 inequalities) with the right-hand side moving on a segment,
  ``x_s = (1 - s) x_a + s x_b`` (``x_a, x_b`` uniform on ``[-1, 1]^50``). Features: ``x``.
  Solver: OSQP (eps 1e-4, no polishing, fixed rho-update interval 25, termination checked
  every iteration so iteration counts are exact), set up once and updated per instance;
  cold = ``warm_starting=False``, warm = ``warm_start(x=, y=)`` with the proposed primal and
  dual point.

Orders: ``sequential`` (problems arrive in the order of their drift, as in streaming refits
and receding horizons: the case ``previous_params`` is made for) and ``shuffled`` (a
fixed-seed permutation). Start rules: cold, ``previous_params``, ``nearest_neighbor``,
``learned`` (ridge predictor), each with :class:`~opifex.optimization.meta_optimization.
WarmStarter`; only converged solutions are recorded. Records, per solver, order and rule:
the median over the problems after the first of the per-problem ratio of cold to warm
iterations (targets: >= 10 for gradient descent, >= 1.5 for OSQP, > 1 otherwise) and of
wall time (warm: proposal plus solve); per solver and rule, the median proposal and
record (memory update) times against the cold solve. Options: ``warm_problems`` (problems
per family and order; quick 4, full 40), ``warm_gd_rtol`` (quick 1e-3, full 1e-6).
``--quick`` skips L-BFGS (its compilation alone is seconds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from opifex.benchmarks._harness import Context, Record

RULES = ("cold", "previous_params", "nearest_neighbor", "learned")
ORDERS = ("sequential", "shuffled")
TARGETS = {
    "Levenberg-Marquardt": "> 1",
    "L-BFGS": "> 1",
    "gradient descent": ">= 10",
    "OSQP": ">= 1.5",
}
NOISE = 0.02
GD_DIM, GD_WINDOW, GD_SHIFT, GD_RIDGE, GD_MIN_SCALE, GD_MAX_STEPS = 20, 200, 5, 1e-4, 0.01, 200_000


class _Run(NamedTuple):
    iterations: np.ndarray  # (num_problems,) int
    propose_s: np.ndarray  # (num_problems,) s, proposal (0 for cold)
    solve_s: np.ndarray  # (num_problems,) s, solve
    record_s: np.ndarray  # (num_problems,) s, memory update (0 for cold)
    converged: np.ndarray  # (num_problems,) bool


def _sequence(solve_one: Callable, problems, default, rule: str) -> _Run:
    """Solve ``problems`` (``(features, args)`` pairs) in order from ``rule``'s starts."""
    from opifex.optimization.meta_optimization import WarmStarter

    starter = None if rule == "cold" else WarmStarter(rule, capacity=64)
    out = {k: [] for k in _Run._fields}
    for features, args in problems:
        t0 = time.perf_counter()
        start = default if starter is None else starter.propose(features, default)
        t1 = time.perf_counter()
        solution, iterations, converged = solve_one(start, args)
        t2 = time.perf_counter()
        if starter is not None and converged:
            starter.record(features, solution)
        t3 = time.perf_counter()
        for key, value in zip(
            _Run._fields, (iterations, t1 - t0, t2 - t1, t3 - t2, converged), strict=True
        ):
            out[key].append(value)
    return _Run(*(np.array(out[k]) for k in _Run._fields))


def _orders(num: int, seed: int) -> dict[str, np.ndarray]:
    return {"sequential": np.arange(num), "shuffled": np.random.default_rng(seed).permutation(num)}


def _all_runs(solve_one, problems, default, orders) -> dict[str, dict[str, _Run]]:
    """``{order: {rule: run}}``; the first cold solve compiles outside the timings."""
    solve_one(default, problems[0][1])
    return {
        order: {
            rule: _sequence(solve_one, [problems[i] for i in idx], default, rule) for rule in RULES
        }
        for order, idx in orders.items()
    }


# Curve fits ----------------------------------------------------------------------------------


def _truth(s: float) -> np.ndarray:
    return np.array(
        [3 + s, 0.3 + 0.2 * np.sin(np.pi * s), 2 + np.cos(np.pi * s), 3 + 4 * s, 1 + 0.5 * s]
    )


def _model(p, t, xp):
    return p[0] * xp.exp(-p[1] * t) + p[2] * xp.exp(-(((t - p[3]) / p[4]) ** 2))


def _residual(p, args):
    import jax.numpy as jnp

    return _model(p, args[0], jnp) - args[1]


def _objective(p, args):
    import jax.numpy as jnp

    return 0.5 * jnp.sum(_residual(p, args) ** 2)


def _curve_runs(num: int, solvers: tuple[str, ...]) -> dict:
    import jax

    from opifex.optimization.core import solve
    from opifex.optimization.second_order import (
        LBFGSConfig,
        LevenbergMarquardtConfig,
        create_lbfgs_solver,
        create_levenberg_marquardt_solver,
    )

    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 10.0, 60)
    # Data in NumPy: JAX would compile each eager operation once (seconds of --quick).
    ys = [
        _model(_truth(s), t, np) + NOISE * rng.standard_normal(t.size)
        for s in np.linspace(0.0, 1.0, num)
    ]
    problems = [(y, (t, y)) for y in ys]
    lm_cfg = LevenbergMarquardtConfig(ftol=1e-10, xtol=1e-10, gtol=1e-10)
    made = {
        "Levenberg-Marquardt": lambda: create_levenberg_marquardt_solver(_residual, lm_cfg),
        "L-BFGS": lambda: create_lbfgs_solver(_objective, LBFGSConfig(gtol=1e-6)),
    }
    runs = {}
    for name in solvers:
        solver = made[name]()

        def solve_one(start, args, solver=solver):
            sol = jax.block_until_ready(solve(solver, start, args, implicit_diff=False))
            return np.asarray(sol.params), int(sol.num_steps), bool(sol.converged)

        runs[name] = _all_runs(solve_one, problems, _truth(0.5), _orders(num, 1))
    return runs


# Streaming logistic regression, gradient descent ---------------------------------------------


class _GDState(NamedTuple):
    count: object  # int32 [], steps taken
    status: object  # int32 [], Status code
    value: object  # float [], objective at params


def _logistic(w, args):
    import jax

    x, label, _, _ = args
    return jax.numpy.mean(jax.nn.softplus(-label * (x @ w))) + 0.5 * GD_RIDGE * w @ w


def _gradient_descent():
    """Gradient descent with a fixed step on ``_logistic``; ``args = (X, label, step, target)``.

    ``w <- w - step * grad f(w)``; a step from a ``w`` whose objective is at most ``target``
    (= f* + the allowed gap) ends the run with status CONVERGED (one objective and gradient
    evaluation per step; the extra descent step keeps the objective below ``target``).
    """
    import jax
    import jax.numpy as jnp

    from opifex.optimization.core import Solver, Status

    value_and_grad = jax.value_and_grad(_logistic)

    def init(w, args):
        value = _logistic(w, args)
        return _GDState(jnp.int32(0), jnp.int32(Status.RUNNING), value)

    def step(w, state, args):
        value, grad = value_and_grad(w, args)
        status = jnp.where(value <= args[3], Status.CONVERGED, Status.RUNNING)
        return w - args[2] * grad, _GDState(state.count + 1, status.astype(jnp.int32), value)

    return Solver(init, step)


def _newton_logistic(x: np.ndarray, label: np.ndarray) -> float:
    """The minimum of ``_logistic`` by Newton's method (quadratic convergence; d = 20)."""
    n, d = x.shape
    w = np.zeros(d)
    for _ in range(50):
        margin = label * (x @ w)
        sig = 0.5 * (1.0 + np.tanh(-0.5 * margin))  # sigmoid(-margin), overflow-free
        grad = -(x.T @ (label * sig)) / n + GD_RIDGE * w
        hess = (x.T * (sig * (1 - sig))) @ x / n + GD_RIDGE * np.eye(d)
        w = w - np.linalg.solve(hess, grad)
        if np.linalg.norm(grad) < 1e-15:
            break
    return float(np.mean(np.logaddexp(0.0, -label * (x @ w))) + 0.5 * GD_RIDGE * w @ w)


def _logistic_family(num: int, rtol: float):
    rng = np.random.default_rng(2)
    length = GD_WINDOW + (num - 1) * GD_SHIFT
    scales = np.geomspace(1.0, GD_MIN_SCALE, GD_DIM)
    x = rng.standard_normal((length, GD_DIM)) * scales
    u, v = rng.standard_normal((2, GD_DIM)) * 3.0 / np.sqrt(GD_DIM)
    tau = 0.5 * np.pi * np.arange(length) / length
    w_true = np.cos(tau)[:, None] * u + np.sin(tau)[:, None] * v
    prob = 1.0 / (1.0 + np.exp(-np.sum(x * w_true, axis=1)))
    label = np.where(rng.random(length) < prob, 1.0, -1.0)
    problems = []
    for k in range(num):
        xs, ls = (
            x[k * GD_SHIFT : k * GD_SHIFT + GD_WINDOW],
            label[k * GD_SHIFT : k * GD_SHIFT + GD_WINDOW],
        )
        step = 1.0 / (np.linalg.norm(xs, 2) ** 2 / (4 * GD_WINDOW) + GD_RIDGE)
        best = _newton_logistic(xs, ls)
        target = best + rtol * (np.log(2.0) - best)
        problems.append((xs.T @ ls / GD_WINDOW, (xs, ls, step, target)))
    return problems


def _logistic_runs(num: int, rtol: float) -> dict:
    import jax

    from opifex.optimization.core import solve

    solver = _gradient_descent()

    def solve_one(start, args):
        sol = jax.block_until_ready(solve(solver, start, args, max_steps=GD_MAX_STEPS))
        return np.asarray(sol.params), int(sol.num_steps), bool(sol.converged)

    problems = _logistic_family(num, rtol)
    return {"gradient descent": _all_runs(solve_one, problems, np.zeros(GD_DIM), _orders(num, 3))}


# DC3 QP, OSQP --------------------------------------------------------------------------------


def _qp_runs(num: int) -> dict:
    import osqp
    import scipy.sparse as sp

    from opifex.benchmarks.problems.dc3_qp import make_dc3_qp

    qp = make_dc3_qp()
    rng = np.random.default_rng(1)
    m_eq, m_in = qp.A.shape[0], qp.G.shape[0]
    xa, xb = rng.uniform(-1, 1, m_eq), rng.uniform(-1, 1, m_eq)
    xs = [(1 - s) * xa + s * xb for s in np.linspace(0.0, 1.0, num)]
    n = qp.Q.shape[0]
    lower_in = np.full(m_in, -np.inf)
    runs: dict[str, dict[str, _Run]] = {}
    for order, idx in _orders(num, 4).items():
        runs[order] = {}
        for rule in RULES:
            solver = osqp.OSQP()
            solver.setup(
                sp.csc_matrix(qp.Q),
                qp.p,
                sp.csc_matrix(np.vstack([qp.A, qp.G])),
                np.concatenate([xs[0], lower_in]),
                np.concatenate([xs[0], qp.h]),
                eps_abs=1e-4,
                eps_rel=1e-4,
                polishing=False,
                check_termination=1,
                adaptive_rho_interval=25,
                warm_starting=rule != "cold",
                verbose=False,
            )

            def solve_one(start, x, solver=solver, warm=rule != "cold"):
                solver.update(l=np.concatenate([x, lower_in]), u=np.concatenate([x, qp.h]))
                if warm:
                    solver.warm_start(x=start[:n], y=start[n:])
                res = solver.solve(raise_error=False)
                ok = res.info.status == "solved"
                return np.concatenate([res.x, res.y]), int(res.info.iter), ok

            problems = [(xs[i], xs[i]) for i in idx]
            runs[order][rule] = _sequence(solve_one, problems, np.zeros(n + m_in + m_eq), rule)
    return {"OSQP": runs}


# Records and plot ----------------------------------------------------------------------------


def _median_ratio(cold: np.ndarray, warm: np.ndarray, mask: np.ndarray) -> float:
    ratios = [c / max(w, 1e-12) for c, w, m in zip(cold, warm, mask, strict=True) if m]
    return statistics.median(ratios) if ratios else float("nan")


def _records(runs: dict) -> list[Record]:
    records = []
    for solver, by_order in runs.items():
        for order, by_rule in by_order.items():
            cold = by_rule["cold"]
            later = np.arange(cold.iterations.size) >= 1  # the first problem has no memory yet
            records.append(
                Record(
                    f"warm {solver} {order}: median iterations, cold start",
                    float(np.median(cold.iterations[later])),
                    "iterations",
                )
            )
            for rule in RULES[1:]:
                warm = by_rule[rule]
                both = later & cold.converged & warm.converged
                its = _median_ratio(cold.iterations, np.maximum(warm.iterations, 1), both)
                name = f"warm {solver} {rule} {order}"
                records.append(
                    Record(f"{name}: median iterations cold/warm", its, "x", TARGETS[solver])
                )
                wall = _median_ratio(cold.solve_s, warm.propose_s + warm.solve_s, both)
                records.append(Record(f"{name}: median wall time cold/warm", wall, "x"))
        cold_us = 1e6 * np.median(np.concatenate([r["cold"].solve_s for r in by_order.values()]))
        for rule in RULES[1:]:
            for what, field in (("proposal", "propose_s"), ("record", "record_s")):
                times = np.concatenate([getattr(r[rule], field)[1:] for r in by_order.values()])
                records.append(
                    Record(
                        f"warm {solver} {rule}: median {what} time",
                        1e6 * float(np.median(times)),
                        "us",
                        peer="cold solve",
                        peer_value=cold_us,
                    )
                )
        failed = sum(
            int(np.sum(~r.converged)) for rules in by_order.values() for r in rules.values()
        )
        records.append(Record(f"warm {solver}: solves not converged (all rules)", failed, "solves"))
    return records


def _plot(ctx: Context, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per solver, both orders in it: half the panels to draw (the quick run's
    # budget is seconds).
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.2), squeeze=False)
    fig.subplots_adjust(wspace=0.35, bottom=0.16, top=0.88)
    for ax, (solver, by_order) in zip(axes[0], runs.items(), strict=True):
        for order, style in zip(ORDERS, ("-", ":"), strict=True):
            for color, (rule, run) in enumerate(by_order[order].items()):
                its = np.where(run.converged, np.maximum(run.iterations, 1), np.nan)
                label = f"{rule}, {order}"
                ax.plot(its, style, color=f"C{color}", marker=".", label=label)
        ax.set_yscale("log")
        ax.set_title(solver, fontsize=9)
        ax.set_xlabel("problem in the sequence")
    axes[0][0].set_ylabel("iterations (converged solves)")
    axes[0][0].legend(fontsize=6)
    ctx.save_figure(fig, "warm_iterations")


def run(ctx: Context) -> list[Record]:
    """Cold against warm starts on the three families; see the module docstring."""
    import jax

    jax.config.update("jax_enable_x64", True)
    num = ctx.option("warm_problems", 4 if ctx.quick else 40, int)
    rtol = ctx.option("warm_gd_rtol", 1e-3 if ctx.quick else 1e-6, float)
    if num < 2:
        raise ValueError(f"--option warm_problems must be >= 2, got {num}.")
    if not 0 < rtol < 1:
        raise ValueError(f"--option warm_gd_rtol must be in (0, 1), got {rtol}.")
    curve_solvers = ("Levenberg-Marquardt",) if ctx.quick else ("Levenberg-Marquardt", "L-BFGS")
    ctx.console.print(
        f"[bold]warm starts[/bold]: {num} problems per family and order, rules {RULES}"
    )
    runs = _curve_runs(num, curve_solvers)
    runs.update(_logistic_runs(num, rtol))
    runs.update(_qp_runs(num))
    _plot(ctx, runs)
    return _records(runs)
