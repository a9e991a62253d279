"""``opifex demo``: NIST certified fits by Levenberg-Marquardt and an L-BFGS race with peers.

Everything shown is computed live: digits are measured against NIST's certified values, the
race runs every solver in this process on the same problem from the same start.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from opifex.benchmarks._harness import Context


def _nist_fits(ctx: Context, names: list[str]) -> None:
    from scipy.optimize import least_squares

    from opifex.benchmarks.problems.nist import SOURCE, load_nist, log_relative_error
    from opifex.optimization import solve
    from opifex.optimization.second_order import create_levenberg_marquardt_solver

    ctx.console.rule("[bold]1. NIST StRD certified fits (Levenberg-Marquardt, float64)")
    ctx.console.print(f"[dim]data: {SOURCE}[/dim]")
    table = Table()
    for col in (
        "problem",
        "start",
        "digits (opifex)",
        "digits (scipy lm)",
        "evals (opifex)",
        "evals (scipy lm)",
        "status",
    ):
        table.add_column(col, justify="left" if col in ("problem", "status") else "right")
    fits = []
    with ctx.progress() as progress:
        task = progress.add_task("fitting", total=2 * len(names))
        for name in names:
            problem = load_nist(name)
            solver = create_levenberg_marquardt_solver(problem.residual)
            args = jax.tree.map(jnp.asarray, problem.args)
            jac = jax.jit(jax.jacfwd(problem.residual))
            res = jax.jit(problem.residual)
            for k, start in enumerate(problem.starts):
                sol = solve(solver, jnp.asarray(start), args, max_steps=1000)
                ours = log_relative_error(sol.params, problem.certified).min()
                peer = least_squares(
                    lambda b, res=res, args=args: np.asarray(res(jnp.asarray(b), args)),
                    start,
                    jac=lambda b, jac=jac, args=args: np.asarray(jac(jnp.asarray(b), args)),
                    method="lm",
                    xtol=1e-15,
                    ftol=1e-15,
                    gtol=1e-15,
                )
                theirs = log_relative_error(peer.x, problem.certified).min()
                evals = int(sol.state.num_fun_evals) + int(sol.state.num_jac_evals)
                peer_evals = int(peer.nfev) + int(peer.njev or 0)
                status = sol.status.item()
                table.add_row(
                    name,
                    str(k + 1),
                    f"{ours:.1f}",
                    f"{theirs:.1f}",
                    str(evals),
                    str(peer_evals),
                    [
                        "RUNNING",
                        "CONVERGED",
                        "MAX_STEPS",
                        "NONFINITE",
                        "LINESEARCH_FAILED",
                        "STAGNATED",
                    ][status],
                )
                if k == 0:
                    fits.append((problem, np.asarray(sol.params)))
                progress.advance(task)
    ctx.console.print(table)
    _plot_fits(ctx, fits)


def _plot_fits(ctx: Context, fits) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(p, b) for p, b in fits if np.ndim(p.x) == 1][:6]
    cols = 3
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (problem, b) in zip(axes.ravel(), shown, strict=False):
        order = np.argsort(problem.x)
        x = problem.x[order]
        fitted = np.asarray(problem.residual(jnp.asarray(b), (x, np.zeros_like(x))))
        ax.plot(problem.x, problem.y, ".", ms=3, label="data")
        ax.plot(x, fitted, "-", lw=1.5, label="opifex LM fit")
        ax.set_title(problem.name)
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    axes.ravel()[0].legend()
    fig.suptitle("NIST StRD fits from start point 1")
    ctx.save_figure(fig, "nist_fits")


def _lbfgs_race(ctx: Context, n: int) -> None:
    import optax
    import optimistix as optx
    from scipy.optimize import minimize

    from opifex.optimization import solve
    from opifex.optimization.second_order import LBFGSConfig, create_lbfgs_solver

    ctx.console.rule(f"[bold]2. L-BFGS race: extended Rosenbrock, n = {n} (float64)")

    def rosen(x, a):
        return jnp.sum(100.0 * (x[1::2] - x[::2] ** 2) ** 2 + (a - x[::2]) ** 2)

    x0 = jnp.tile(jnp.array([-1.2, 1.0]), n // 2)
    a = jnp.asarray(1.0)
    gtol, steps = 1e-8, 2000
    config = LBFGSConfig(memory_size=10, gtol=gtol, max_iterations=steps)
    solver = create_lbfgs_solver(rosen, config)

    # our iterates, driven by hand through init/step so the curve shows every iteration
    init, step = jax.jit(solver.init), jax.jit(solver.step)
    x, state = x0, init(x0, a)
    ours_curve = [float(state.value)]
    while int(state.status) == 0 and int(state.count) < steps:
        x, state = step(x, state, a)
        ours_curve.append(float(state.value))

    fun = jax.jit(lambda x: rosen(x, a))
    vg = jax.jit(jax.value_and_grad(lambda x: rosen(x, a)))
    scipy_curve = [float(fun(x0))]
    minimize(
        lambda x: tuple(map(np.asarray, vg(jnp.asarray(x)))),
        np.asarray(x0),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 0.0, "maxiter": steps, "maxcor": 10},
        callback=lambda xk: scipy_curve.append(float(fun(jnp.asarray(xk)))),
    )

    opt = optax.lbfgs(memory_size=10)
    value_and_grad = optax.value_and_grad_from_state(lambda x: rosen(x, a))

    @jax.jit
    def optax_step(x, s):
        v, g = value_and_grad(x, state=s)
        u, s = opt.update(g, s, x, value=v, grad=g, value_fn=lambda x: rosen(x, a))
        return optax.apply_updates(x, u), s, v, g

    x, s = x0, opt.init(x0)
    optax_curve = []
    for _ in range(steps):
        x, s, v, g = optax_step(x, s)
        optax_curve.append(float(v))
        if float(jnp.max(jnp.abs(g))) < gtol:
            break

    # wall time of each full solve, compiled once, median of 5
    def timed(run):
        run()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    ours_run = jax.jit(lambda x0: solve(solver, x0, a, max_steps=steps).value)
    optx_solver = optx.LBFGS(rtol=1e-10, atol=gtol)
    optx_run = jax.jit(
        lambda x0: optx.minimise(rosen, optx_solver, x0, a, max_steps=steps, throw=False).value
    )
    scipy_run = lambda: minimize(  # noqa: E731
        lambda x: tuple(map(np.asarray, vg(jnp.asarray(x)))),
        np.asarray(x0),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 0.0, "maxiter": steps, "maxcor": 10},
    )

    @jax.jit
    def optax_run(x0):
        def cond(c):
            _, s = c
            g = optax.tree.get(s, "grad")
            return (optax.tree.get(s, "count") == 0) | (
                (optax.tree.get(s, "count") < steps) & (jnp.max(jnp.abs(g)) >= gtol)
            )

        def body(c):
            x, s = c
            x, s, _, _ = optax_step(x, s)
            return x, s

        return jax.lax.while_loop(cond, body, (x0, opt.init(x0)))[0]

    with ctx.progress() as progress:
        task = progress.add_task("timing", total=4)
        times = {}
        for label, run in (
            ("opifex", lambda: ours_run(x0)),
            ("scipy L-BFGS-B", scipy_run),
            ("optax lbfgs", lambda: optax_run(x0)),
            ("optimistix LBFGS", lambda: optx_run(x0)),
        ):
            times[label] = timed(run)
            progress.advance(task)

    table = Table()
    for col in ("solver", "iterations", "final f", "time per solve [ms]", "vs opifex"):
        table.add_column(col, justify="left" if col == "solver" else "right")
    finals = {"opifex": ours_curve, "scipy L-BFGS-B": scipy_curve, "optax lbfgs": optax_curve}
    for label, t in times.items():
        curve = finals.get(label)
        its = str(len(curve) - 1) if curve else "-"
        fin = f"{curve[-1]:.2e}" if curve else "-"
        table.add_row(label, its, fin, f"{1e3 * t:.2f}", f"{t / times['opifex']:.2f}x")
    ctx.console.print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in finals.items():
        ax1.semilogy(np.maximum(np.asarray(curve), 1e-300), label=label)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("f(x)")
    ax1.set_title(f"extended Rosenbrock, n = {n}")
    ax1.legend()
    ms = [1e3 * t for t in times.values()]
    ax2.barh(list(times), ms, color=["tab:blue", "tab:orange", "tab:green", "tab:red"])
    for i, v in enumerate(ms):
        ax2.text(v, i, f" {v:.2f} ms", va="center")
    ax2.set_xscale("log")
    ax2.set_xlim(min(ms) / 2, max(ms) * 8)
    ax2.set_xlabel("post-jit time per solve [ms], median of 5 (log scale)")
    ax2.set_title("wall time to gtol, compiled once")
    ctx.save_figure(fig, "lbfgs_race")


def run_demo(quick: bool = False, out_root: str | Path = "results") -> None:
    """Run the showcase; plots go to ``<out_root>/demo/``."""
    jax.config.update("jax_enable_x64", True)
    console = Console()
    out_dir = Path(out_root) / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(suite="demo", quick=quick, out_dir=out_dir, console=console)
    from opifex.benchmarks.problems.nist import NIST_PROBLEMS

    names = (
        ["Misra1a", "Chwirut2", "DanWood", "MGH17", "Lanczos3", "Gauss3"]
        if quick
        else list(NIST_PROBLEMS)
    )
    _nist_fits(ctx, [n for n in names if n in NIST_PROBLEMS])
    _lbfgs_race(ctx, n=20 if quick else 100)
    console.print(f"[bold green]done[/bold green]: plots in {out_dir}/")
