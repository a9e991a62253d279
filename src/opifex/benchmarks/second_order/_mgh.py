"""MGH minimisation part of ``opifex bench second-order``: our L-BFGS against its peers.

On every Moré-Garbow-Hillstrom problem (float64, standard start point) the same process runs
our :func:`~opifex.optimization.second_order._lbfgs.lbfgs_solver`, scipy's L-BFGS-B, optax's
``lbfgs`` in the loop its documentation gives, and optimistix's ``LBFGS`` and ``BFGS``.

A solve *succeeds* when ``f - f* <= SUCCESS_RTOL * |f*| + SUCCESS_ATOL`` (``f*`` the published
minimum). Iterations and evaluations are each solver's own count (scipy ``nit``/``nfev``;
optimistix reports only its steps, one evaluation each). Post-jit time is the median over
repeats of the compiled solve (``time_jax``; compile time apart); scipy's is host time.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import numpy as np

from opifex.benchmarks._harness import Context, Record, time_host, time_jax

GTOL = 1e-8  # max|g| at which every solver stops (optax's loop uses the same test)
FTOL = 1e-14  # relative reduction test of ours and scipy's (scipy ``ftol``)
MEMORY = 10
MAX_ITERATIONS = 3000
OPTIMISTIX_RTOL = OPTIMISTIX_ATOL = 1e-10  # optimistix stops on small changes of x and f
SUCCESS_RTOL = 1e-6
SUCCESS_ATOL = 1e-10
QUICK_PROBLEMS = ("rosenbrock", "beale", "helical_valley", "wood", "watson6")
SOLVERS = ("opifex", "scipy", "optax", "optx_lbfgs", "optx_bfgs")


def _success(f: float, f_star: float) -> bool:
    return bool(np.isfinite(f) and f - f_star <= SUCCESS_RTOL * abs(f_star) + SUCCESS_ATOL)


def _opifex_fn(problem):
    from opifex.benchmarks.problems.mgh import objective
    from opifex.optimization.core import solve
    from opifex.optimization.second_order._lbfgs import lbfgs_solver

    solver = lbfgs_solver(
        objective(problem), memory_size=MEMORY, max_iterations=MAX_ITERATIONS, gtol=GTOL, ftol=FTOL
    )

    def run(x0, args):
        sol = solve(solver, x0, args, max_steps=MAX_ITERATIONS, implicit_diff=False)
        return sol.value, sol.num_steps, sol.state.num_fun_evals

    return run, solver


def _optax_fn(problem):
    import jax
    import jax.numpy as jnp
    import optax

    from opifex.benchmarks.problems.mgh import objective

    f = objective(problem)
    opt = optax.lbfgs(memory_size=MEMORY)

    def run(x0, args):
        fun = lambda x: f(x, args)  # noqa: E731  (the documented loop takes fun(params))
        value_and_grad = optax.value_and_grad_from_state(fun)

        def step(carry):
            params, state, evals = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
            evals = evals + optax.tree.get(state, "num_linesearch_steps").astype(evals.dtype)
            return optax.apply_updates(params, updates), state, evals

        def keep_going(carry):
            _, state, _ = carry
            count = optax.tree.get(state, "count")
            grad = optax.tree.get(state, "grad")
            err = jnp.max(jnp.abs(grad))
            return (count == 0) | ((count < MAX_ITERATIONS) & (err >= GTOL))

        init = (x0, opt.init(x0), jnp.zeros((), jnp.int32))
        params, state, evals = jax.lax.while_loop(keep_going, step, init)
        return fun(params), optax.tree.get(state, "count"), evals

    return run


def _optimistix_fn(problem, name):
    import optimistix as optx

    from opifex.benchmarks.problems.mgh import objective

    f = objective(problem)
    cls = optx.LBFGS if name == "optx_lbfgs" else optx.BFGS
    solver = cls(rtol=OPTIMISTIX_RTOL, atol=OPTIMISTIX_ATOL)

    def run(x0, args):
        sol = optx.minimise(f, solver, x0, args, max_steps=MAX_ITERATIONS, throw=False)
        steps = sol.stats["num_steps"]
        return f(sol.value, args), steps, steps

    return run


def _scipy_fn(problem):
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize

    from opifex.benchmarks.problems.mgh import objective

    value_and_grad = jax.jit(jax.value_and_grad(objective(problem)))
    args = jax.tree.map(jnp.asarray, problem.args)

    def fun(x):
        v, g = value_and_grad(jnp.asarray(x), args)
        return float(v), np.asarray(g)

    options = {
        "maxcor": MEMORY,
        "gtol": GTOL,
        "ftol": FTOL,
        "maxiter": MAX_ITERATIONS,
        "maxfun": 20 * MAX_ITERATIONS,
    }

    def run():
        return minimize(fun, problem.x0, jac=True, method="L-BFGS-B", options=options)

    fun(problem.x0)  # compile the objective outside the timed region
    return run, options


def _solve_all(problem, repeats: int) -> dict[str, dict[str, Any]]:
    import jax
    import jax.numpy as jnp

    x0 = jnp.asarray(problem.x0)
    args = jax.tree.map(jnp.asarray, problem.args)
    out: dict[str, dict[str, Any]] = {}
    jax_fns = {
        "opifex": _opifex_fn(problem)[0],
        "optax": _optax_fn(problem),
        "optx_lbfgs": _optimistix_fn(problem, "optx_lbfgs"),
        "optx_bfgs": _optimistix_fn(problem, "optx_bfgs"),
    }
    for name, fn in jax_fns.items():
        timing = time_jax(fn, x0, args, repeats=repeats)
        value, iters, evals = (float(v) for v in jax.jit(fn)(x0, args))
        out[name] = {
            "f": value,
            "iterations": int(iters),
            "evaluations": int(evals),
            "time_s": timing.run_s,
            "compile_s": timing.compile_s,
        }
    run, _ = _scipy_fn(problem)
    timing = time_host(run, repeats=repeats)
    res = run()
    out["scipy"] = {
        "f": float(res.fun),
        "iterations": int(res.nit),
        "evaluations": int(res.nfev),
        "time_s": timing.run_s,
        "compile_s": 0.0,
    }
    for r in out.values():
        r["success"] = _success(r["f"], problem.f_star)
    return out


def _rosenbrock_history(problem) -> dict[str, list[float]]:
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize

    from opifex.benchmarks.problems.mgh import objective
    from opifex.optimization.core import Status

    _, solver = _opifex_fn(problem)
    x = jnp.asarray(problem.x0)
    state = jax.jit(solver.init)(x, problem.args)
    step = jax.jit(solver.step)
    ours = [float(state.value)]
    while int(state.status) == Status.RUNNING:
        x, state = step(x, state, problem.args)
        ours.append(float(state.value))
    value_and_grad = jax.jit(jax.value_and_grad(objective(problem)))
    theirs = [ours[0]]  # both start at f(x0)
    _, options = _scipy_fn(problem)
    minimize(
        lambda z: tuple(np.asarray(v) for v in value_and_grad(jnp.asarray(z), problem.args)),
        problem.x0,
        jac=True,
        method="L-BFGS-B",
        options=options,
        callback=lambda intermediate_result: theirs.append(float(intermediate_result.fun)),
    )
    return {"opifex": ours, "scipy": theirs}


def _plot(ctx: Context, names, results, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(SOLVERS)
    pos = np.arange(len(names))
    for k, solver in enumerate(SOLVERS):
        times = [results[n][solver]["time_s"] * 1e3 for n in names]
        ax0.bar(pos + k * width, times, width, label=solver)
    ax0.set_xticks(pos + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=8)
    ax0.set_yscale("log")
    ax0.set_ylabel("post-jit solve time [ms] (scipy: host time)")
    ax0.set_title("MGH problems, float64")
    ax0.legend(fontsize=8)
    for solver, values in history.items():
        ax1.semilogy(np.maximum(np.asarray(values), 1e-300), label=solver)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("f")
    ax1.set_title("Rosenbrock")
    ax1.legend()
    ctx.save_figure(fig, "mgh_lbfgs")


def _table(ctx: Context, names, results):
    from rich.table import Table

    table = Table(title="MGH: iterations / evaluations / post-jit ms (x: not solved)")
    table.add_column("problem")
    for solver in SOLVERS:
        table.add_column(solver, justify="right")
    for n in names:
        cells = []
        for solver in SOLVERS:
            r = results[n][solver]
            mark = "" if r["success"] else " x"
            cells.append(f"{r['iterations']}/{r['evaluations']}/{r['time_s'] * 1e3:.3g}{mark}")
        table.add_row(n, *cells)
    ctx.console.print(table)


def run(ctx: Context) -> list[Record]:
    """Solve the MGH problems with every solver; return the headline records."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from opifex.benchmarks.problems.mgh import problems

    chosen = [p for p in problems() if not ctx.quick or p.name in QUICK_PROBLEMS]
    repeats = 2 if ctx.quick else 5
    ctx.console.print(
        f"[bold]MGH L-BFGS[/bold]: {len(chosen)} problems, float64, {repeats} repeats; "
        f"ours/scipy gtol={GTOL} ftol={FTOL} memory={MEMORY} maxiter={MAX_ITERATIONS}; "
        f"optax lbfgs(memory_size={MEMORY}) loop to max|g| < {GTOL}; optimistix "
        f"rtol=atol={OPTIMISTIX_RTOL}; success: f - f* <= {SUCCESS_RTOL}|f*| + {SUCCESS_ATOL}"
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with ctx.progress() as progress:
        task = progress.add_task("MGH problems", total=len(chosen))
        for p in chosen:
            progress.update(task, description=f"MGH {p.name}")
            results[p.name] = _solve_all(p, repeats)
            progress.advance(task)
    names = list(results)
    _table(ctx, names, results)
    (ctx.out_dir / "mgh_details.json").write_text(json.dumps(results, indent=2) + "\n")

    ours = {n: results[n]["opifex"] for n in names}
    scipy = {n: results[n]["scipy"] for n in names}
    scipy_solved = [n for n in names if scipy[n]["success"]]
    missed = [n for n in scipy_solved if not ours[n]["success"]]
    if missed:
        ctx.console.print(f"[red]solved by scipy, not by opifex: {missed}[/red]")
    both = [n for n in scipy_solved if ours[n]["success"]]
    iter_ratio = (
        statistics.median(ours[n]["iterations"] / max(scipy[n]["iterations"], 1) for n in both)
        if both
        else float("nan")
    )

    def time_ratio(peer):
        common = [n for n in names if ours[n]["success"] and results[n][peer]["success"]]
        if not common:
            return float("nan"), float("nan"), float("nan")
        ratio = statistics.median(ours[n]["time_s"] / results[n][peer]["time_s"] for n in common)
        return (
            ratio,
            statistics.median(ours[n]["time_s"] for n in common),
            statistics.median(results[n][peer]["time_s"] for n in common),
        )

    records = [
        Record(
            "mgh lbfgs: problems solved",
            sum(r["success"] for r in ours.values()),
            "count",
            peer="scipy L-BFGS-B",
            peer_value=len(scipy_solved),
        ),
        Record("mgh lbfgs: scipy-solved problems not solved", len(missed), "count", target="<= 0"),
        Record("mgh lbfgs: median iterations / scipy's", iter_ratio, "ratio", target="<= 1.1"),
    ]
    if "rosenbrock" in ours:
        records.append(
            Record(
                "mgh lbfgs: f on rosenbrock",
                ours["rosenbrock"]["f"],
                "f",
                target="<= 1e-10",
                peer="scipy L-BFGS-B",
                peer_value=scipy["rosenbrock"]["f"],
            )
        )
    for peer, label in (
        ("optax", "optax lbfgs"),
        ("optx_lbfgs", "optimistix LBFGS"),
        ("optx_bfgs", "optimistix BFGS"),
    ):
        ratio, mine, theirs = time_ratio(peer)
        target = "< 1" if peer != "optx_bfgs" else None
        records.append(
            Record(
                f"mgh lbfgs: median post-jit time ratio vs {label}", ratio, "ratio", target=target
            )
        )
        records.append(
            Record(
                f"mgh lbfgs: median post-jit time (solved by both, vs {label})",
                mine * 1e3,
                "ms",
                peer=label,
                peer_value=theirs * 1e3,
            )
        )
    records.append(
        Record(
            "mgh lbfgs: median compile time",
            statistics.median(ours[n]["compile_s"] for n in names),
            "s",
            peer="optax lbfgs",
            peer_value=statistics.median(results[n]["optax"]["compile_s"] for n in names),
        )
    )

    if "rosenbrock" in names:
        from opifex.benchmarks.problems.mgh import get

        history = _rosenbrock_history(get("rosenbrock"))
    else:
        history = {}
    _plot(ctx, names, results, history)
    return records
