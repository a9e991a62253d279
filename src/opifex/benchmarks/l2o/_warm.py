"""Part ``warm`` of ``opifex bench l2o``: iterations saved by warm starts on related problems.

Two families of related problems, each solved once per start rule in the same random order
(so the memory of a warm start holds only problems solved earlier in the sequence):

- **Curve fits** (synthetic, 5 parameters): ``y_s(t) = a e^{-k t} + g e^{-((t - c) / w)^2}``
  plus fixed-seed Gaussian noise (sd 0.02) on 60 points of ``[0, 10]``, with
  ``(a, k, g, c, w) = (3 + s, 0.3 + 0.2 sin(pi s), 2 + cos(pi s), 3 + 4 s, 1 + 0.5 s)``, ``s``
  on a uniform grid of ``[0, 1]``. Features: the data ``y`` themselves. Cold start: the
  parameters at ``s = 0.5``. Solvers: our Levenberg-Marquardt (ftol = xtol = gtol = 1e-10),
  our L-BFGS (gtol 1e-6) and a long first-order run, Adam (step 0.02) until its objective is
  within 0.1% of the best Levenberg-Marquardt objective of that problem.
- **DC3 QP** (:func:`opifex.benchmarks.problems.dc3_qp.make_dc3_qp`, 100 variables, 50
  equalities, 50 inequalities) with the right-hand side moving on a segment,
  ``x_s = (1 - s) x_a + s x_b`` (``x_a, x_b`` uniform on ``[-1, 1]^50``). Features: ``x``.
  Solver: OSQP (eps 1e-4, no polishing, fixed rho-update interval 25, termination checked
  every iteration so iteration counts are exact), set up once and updated per instance;
  cold = ``warm_starting=False``, warm = ``warm_start(x=, y=)`` with the proposed primal and
  dual point.

Start rules: cold, ``previous_params``, ``nearest_neighbor``, ``learned`` (ridge predictor);
only converged solutions are recorded. Records: for every solver and rule, the median over
the problems after the first of the per-problem ratio of cold to warm iterations (and of wall
time, proposal included); targets: >= 10 for the first-order run (the SPEC's "10-50x faster
convergence on related problems"), >= 1.5 for OSQP (the issue's), > 1 for the others.
Options: ``warm_problems`` (problems per family; quick 6, full 40), ``warm_adam_steps``
(Adam's step budget; quick 3000, full 30000).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from opifex.benchmarks._harness import Context, Record

RULES = ("cold", "previous_params", "nearest_neighbor", "learned")
TARGETS = {"Levenberg-Marquardt": "> 1", "L-BFGS": "> 1", "Adam": ">= 10", "OSQP": ">= 1.5"}
NOISE, ADAM_STEP = 0.02, 0.02


def _truth(s: float) -> np.ndarray:
    return np.array(
        [3 + s, 0.3 + 0.2 * np.sin(np.pi * s), 2 + np.cos(np.pi * s), 3 + 4 * s, 1 + 0.5 * s]
    )


def _model(p, t):
    import jax.numpy as jnp

    return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.exp(-(((t - p[3]) / p[4]) ** 2))


def _residual(p, args):
    t, y = args[0], args[1]
    return _model(p, t) - y


def _objective(p, args):
    import jax.numpy as jnp

    return 0.5 * jnp.sum(_residual(p, args) ** 2)


class _AdamState(NamedTuple):
    count: object  # int32 [], steps taken
    status: object  # int32 [], Status code
    value: object  # float [], objective at params
    opt_state: object  # optax Adam state


def _adam_to_target():
    """Adam on ``_objective`` until ``value <= target``; ``args = (t, y, target)``."""
    import jax
    import jax.numpy as jnp
    import optax

    from opifex.optimization.core import Solver, Status

    adam = optax.adam(ADAM_STEP)
    value_and_grad = jax.value_and_grad(_objective)

    def status_of(value, target):
        return jnp.where(value <= target, Status.CONVERGED, Status.RUNNING).astype(jnp.int32)

    def init(params, args):
        value = _objective(params, args)
        return _AdamState(jnp.int32(0), status_of(value, args[2]), value, adam.init(params))

    def step(params, state, args):
        _, grad = value_and_grad(params, args)
        updates, opt_state = adam.update(grad, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        value = _objective(params, args)
        return params, _AdamState(state.count + 1, status_of(value, args[2]), value, opt_state)

    return Solver(init, step)


class _Run(NamedTuple):
    iterations: np.ndarray  # (num_problems,) int
    times: np.ndarray  # (num_problems,) s, proposal plus solve
    converged: np.ndarray  # (num_problems,) bool
    values: np.ndarray  # (num_problems,) final objective (nan where unknown)


def _sequence(solve_one: Callable, problems, default, rule: str, capacity: int) -> _Run:
    """Solve ``problems`` (``(features, args)`` pairs) in order from ``rule``'s starts."""
    from opifex.optimization.meta_optimization import WarmStarter

    starter = None if rule == "cold" else WarmStarter(rule, capacity=capacity)
    its, times, ok, values = [], [], [], []
    for features, args in problems:
        t0 = time.perf_counter()
        start = default if starter is None else starter.propose(features, default)
        solution, iterations, converged, value = solve_one(start, args, rule)
        times.append(time.perf_counter() - t0)
        its.append(iterations)
        ok.append(converged)
        values.append(value)
        if starter is not None and converged:
            starter.record(features, solution)
    return _Run(np.array(its), np.array(times), np.array(ok), np.array(values, dtype=float))


def _warm_up_starters(features, solution) -> None:
    """Compile every rule's proposal and record once for these shapes, outside the timings."""
    from opifex.optimization.meta_optimization import WarmStarter

    for rule in RULES[1:]:
        starter = WarmStarter(rule)
        starter.record(features, solution)
        starter.record(features, solution)
        starter.propose(features, solution)


def _curve_family(num: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 10.0, 60)
    order = rng.permutation(np.linspace(0.0, 1.0, num))
    ys = [np.asarray(_model(_truth(s), t)) + NOISE * rng.standard_normal(t.size) for s in order]
    return t, ys


def _curve_runs(
    num: int, adam_steps: int, adam_rtol: float, capacity: int
) -> dict[str, dict[str, _Run]]:
    import jax
    import jax.numpy as jnp

    from opifex.optimization.core import solve
    from opifex.optimization.second_order import (
        LBFGSConfig,
        LevenbergMarquardtConfig,
        create_lbfgs_solver,
        create_levenberg_marquardt_solver,
    )

    t, ys = _curve_family(num)
    default = jnp.asarray(_truth(0.5))
    lm_cfg = LevenbergMarquardtConfig(ftol=1e-10, xtol=1e-10, gtol=1e-10)
    solvers = {
        "Levenberg-Marquardt": (create_levenberg_marquardt_solver(_residual, lm_cfg), None),
        "L-BFGS": (create_lbfgs_solver(_objective, LBFGSConfig(gtol=1e-6)), None),
        "Adam": (_adam_to_target(), adam_steps),
    }
    problems = [(jnp.asarray(y), (jnp.asarray(t), jnp.asarray(y))) for y in ys]
    _warm_up_starters(problems[0][0], default)
    runs: dict[str, dict[str, _Run]] = {}
    best = np.full(num, np.inf)  # best Levenberg-Marquardt objective of each problem
    for name, (solver, max_steps) in solvers.items():
        runs[name] = {}
        for rule in RULES:
            # Adam's args carry its stopping value, adam_rtol above the best LM objective.
            targets = iter(best * (1 + adam_rtol))

            def solve_one(start, args, rule, solver=solver, max_steps=max_steps, targets=targets):
                if max_steps is not None:
                    args = (*args, jnp.asarray(next(targets)))
                sol = jax.block_until_ready(solve(solver, start, args, max_steps=max_steps))
                return sol.params, int(sol.num_steps), bool(sol.converged), float(sol.value)

            if rule == "cold":  # compile outside the timings
                solve_one(default, problems[0][1], rule, targets=iter([0.0]))
            runs[name][rule] = _sequence(solve_one, problems, default, rule, capacity)
        if name == "Levenberg-Marquardt":
            for run in runs[name].values():
                best = np.fmin(best, np.where(run.converged, run.values, np.inf))
    return runs


def _qp_runs(num: int, capacity: int) -> dict[str, dict[str, _Run]]:
    import jax.numpy as jnp
    import osqp
    import scipy.sparse as sp

    from opifex.benchmarks.problems.dc3_qp import make_dc3_qp

    qp = make_dc3_qp()
    rng = np.random.default_rng(1)
    m_eq, m_in = qp.A.shape[0], qp.G.shape[0]
    xa, xb = rng.uniform(-1, 1, m_eq), rng.uniform(-1, 1, m_eq)
    xs = [(1 - s) * xa + s * xb for s in rng.permutation(np.linspace(0.0, 1.0, num))]
    lower = lambda x: np.concatenate([x, np.full(m_in, -np.inf)])  # noqa: E731
    upper = lambda x: np.concatenate([x, qp.h])  # noqa: E731
    n, m = qp.Q.shape[0], m_eq + m_in
    default = jnp.zeros(n + m)
    _warm_up_starters(jnp.asarray(xs[0]), default)
    problems = [(jnp.asarray(x), x) for x in xs]
    runs = {}
    for rule in RULES:
        solver = osqp.OSQP()
        solver.setup(
            sp.csc_matrix(qp.Q),
            qp.p,
            sp.csc_matrix(np.vstack([qp.A, qp.G])),
            lower(xs[0]),
            upper(xs[0]),
            eps_abs=1e-4,
            eps_rel=1e-4,
            polishing=False,
            check_termination=1,
            adaptive_rho_interval=25,
            warm_starting=rule != "cold",
            verbose=False,
        )

        def solve_one(start, x, rule, solver=solver):
            solver.update(l=lower(x), u=upper(x))
            if rule != "cold":
                start = np.asarray(start)
                solver.warm_start(x=start[:n], y=start[n:])
            res = solver.solve()
            ok = res.info.status == "solved"
            solution = jnp.concatenate([jnp.asarray(res.x), jnp.asarray(res.y)])
            return solution, int(res.info.iter), ok, float(res.info.obj_val)

        runs[rule] = _sequence(solve_one, problems, default, rule, capacity)
    return {"OSQP": runs}


def _median_ratio(cold: np.ndarray, warm: np.ndarray, mask: np.ndarray) -> float:
    ratios = [c / max(w, 1e-12) for c, w, m in zip(cold, warm, mask, strict=True) if m]
    return statistics.median(ratios) if ratios else float("nan")


def _records(runs: dict[str, dict[str, _Run]]) -> list[Record]:
    records = []
    for solver, by_rule in runs.items():
        cold = by_rule["cold"]
        later = np.arange(cold.iterations.size) >= 1  # the first problem has no memory yet
        records.append(
            Record(
                f"warm {solver}: median iterations, cold start",
                float(np.median(cold.iterations[later])),
                "iterations",
            )
        )
        for rule in RULES[1:]:
            warm = by_rule[rule]
            both = later & cold.converged & warm.converged
            its = _median_ratio(cold.iterations, np.maximum(warm.iterations, 1), both)
            records.append(
                Record(
                    f"warm {solver} {rule}: median iterations cold/warm",
                    its,
                    "x",
                    target=TARGETS[solver],
                )
            )
            records.append(
                Record(
                    f"warm {solver} {rule}: median wall time cold/warm",
                    _median_ratio(cold.times, warm.times, both),
                    "x",
                )
            )
        failed = sum(int(np.sum(~r.converged)) for r in by_rule.values())
        records.append(Record(f"warm {solver}: solves not converged (all rules)", failed, "solves"))
    return records


def _plot(ctx: Context, runs: dict[str, dict[str, _Run]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    for ax, (solver, by_rule) in zip(axes[0], runs.items(), strict=True):
        for rule, run in by_rule.items():
            its = np.where(run.converged, run.iterations, np.nan)
            ax.plot(np.arange(1, its.size + 1), np.maximum(its, 1), marker=".", label=rule)
        ax.set_yscale("log")
        ax.set_title(solver)
        ax.set_xlabel("problem in the sequence")
        ax.set_ylabel("iterations (converged solves)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure(fig, "warm_iterations")


def run(ctx: Context) -> list[Record]:
    """Cold against warm starts on the two families; see the module docstring."""
    import jax

    jax.config.update("jax_enable_x64", True)
    num = ctx.option("warm_problems", 6 if ctx.quick else 40, int)
    adam_steps = ctx.option("warm_adam_steps", 3000 if ctx.quick else 30000, int)
    adam_rtol = ctx.option("warm_adam_rtol", 1e-3, float)
    if num < 2:
        raise ValueError(f"--option warm_problems must be >= 2, got {num}.")
    capacity = 64
    ctx.console.print(f"[bold]warm starts[/bold]: {num} problems per family, rules {RULES}")
    runs = _curve_runs(num, adam_steps, adam_rtol, capacity)
    runs.update(_qp_runs(num, capacity))
    _plot(ctx, runs)
    return _records(runs)
