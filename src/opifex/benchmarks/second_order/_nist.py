"""NIST StRD nonlinear regression: our Levenberg-Marquardt and Gauss-Newton against peers.

For each problem and both NIST start points (float64) we run, in the same process:

- ours: ``levenberg_marquardt`` and ``gauss_newton`` with their config defaults;
- scipy ``least_squares`` with ``method="lm"`` (MINPACK) and ``method="trf"``,
  ``xtol = ftol = gtol = 1e-15`` and the analytic Jacobian from JAX (``jax.jacfwd``, jitted);
- optimistix ``LevenbergMarquardt`` and ``GaussNewton`` with ``rtol = atol = 1e-12``.

Accuracy is NIST's LRE (correct significant digits vs the certified values, capped at 15),
the minimum over the parameters. Evaluations are residual + Jacobian evaluations (scipy's
``nfev + njev``; optimistix reports steps, one residual and one linearisation each).
"""

from __future__ import annotations

import json
import statistics

import numpy as np

from opifex.benchmarks._harness import Context, Record, time_host, time_jax
from opifex.benchmarks.problems.nist import NIST_PROBLEMS, SOURCE, load_nist, log_relative_error

_QUICK = ("Misra1a", "DanWood", "Misra1b", "Roszman1")
_MAX_STEPS = 1000
_SOLVED = 6.0  # digits a case needs to count as solved
_SOLVERS = ("ours LM", "ours GN", "scipy lm", "scipy trf", "optx LM", "optx GN")


def _ours(factory, residual, repeats):
    import jax

    from opifex.optimization import Status, solve

    solver = factory(residual)

    def run(b, args):
        return solve(solver, b, args, max_steps=_MAX_STEPS, implicit_diff=False)

    def measure(b0, args):
        timing = time_jax(run, b0, args, repeats=repeats)
        sol = jax.jit(run)(b0, args)
        evals = int(sol.state.num_fun_evals) + int(sol.state.num_jac_evals)
        status = Status(int(sol.status)).name
        return np.asarray(sol.params), evals, timing, status

    return measure


def _scipy(method, residual, repeats):
    import jax
    from scipy.optimize import least_squares

    fun = jax.jit(residual)
    jac = jax.jit(jax.jacfwd(residual))

    def measure(b0, args):
        def run():
            return least_squares(
                lambda b: np.asarray(fun(b, args)),
                np.asarray(b0),
                jac=lambda b: np.asarray(jac(b, args)),
                method=method,
                xtol=1e-15,
                ftol=1e-15,
                gtol=1e-15,
                max_nfev=100 * _MAX_STEPS,
            )

        res = run()
        timing = time_host(run, repeats=repeats)
        evals = int(res.nfev) + int(res.njev or 0)
        status = "CONVERGED" if res.status > 0 else f"FAILED({res.status})"
        return res.x, evals, timing, status

    return measure


def _optimistix(kind, residual, repeats):
    import jax
    import optimistix as optx

    solver = getattr(optx, kind)(rtol=1e-12, atol=1e-12)

    def run(b, args):
        sol = optx.least_squares(residual, solver, b, args, max_steps=_MAX_STEPS, throw=False)
        return sol.value, sol.result == optx.RESULTS.successful, sol.stats["num_steps"]

    def measure(b0, args):
        timing = time_jax(run, b0, args, repeats=repeats)
        x, ok, steps = jax.jit(run)(b0, args)
        status = "CONVERGED" if bool(ok) else "FAILED"
        return np.asarray(x), int(steps), timing, status

    return measure


def _plots(ctx: Context, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r["case"] for r in rows]
    pos = np.arange(len(cases))
    markers = dict(zip(_SOLVERS, "os^vDx", strict=True))
    for key, name, ylabel, log in (
        ("digits", "nist_digits", "min correct digits (LRE)", False),
        ("time_s", "nist_time", "post-jit time per solve [s]", True),
    ):
        fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(cases)), 4.5))
        for solver in _SOLVERS:
            ys = [r[solver][key] for r in rows]
            ax.plot(pos, ys, markers[solver], label=solver, alpha=0.8)
        if key == "digits":
            ax.axhline(_SOLVED, color="k", lw=0.8, ls="--")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(pos, cases, rotation=90, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"NIST StRD: {ylabel}")
        ax.legend(fontsize=7, ncol=3)
        ctx.save_figure(fig, name)


def _table(ctx: Context, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="NIST StRD per case (digits / evaluations / ms / status)")
    table.add_column("case")
    for solver in _SOLVERS:
        table.add_column(solver, justify="right")
    for r in rows:
        cells = []
        for solver in _SOLVERS:
            c = r[solver]
            ok = c["status"] == "CONVERGED"
            mark = "" if ok else f" [red]{c['status'][:4]}[/red]"
            colour = "green" if c["digits"] >= _SOLVED else "red"
            cells.append(
                f"[{colour}]{c['digits']:.1f}[/{colour}] / {c['evals']} / "
                f"{1e3 * c['time_s']:.1f}{mark}"
            )
        table.add_row(r["case"], *cells)
    ctx.console.print(table)


def run(ctx: Context) -> list[Record]:
    """Run every NIST problem from both start points with our solvers and the peers."""
    import jax
    import jax.numpy as jnp

    from opifex.optimization.second_order._gauss_newton import gauss_newton
    from opifex.optimization.second_order._levenberg_marquardt import levenberg_marquardt
    from opifex.optimization.second_order.config import (
        GaussNewtonConfig,
        LevenbergMarquardtConfig,
    )

    if not jax.config.read("jax_enable_x64"):
        raise RuntimeError("the NIST benchmark needs float64: enable jax_enable_x64 first.")
    names = list(_QUICK if ctx.quick else NIST_PROBLEMS)
    repeats = 1 if ctx.quick else 5
    lm_kwargs = LevenbergMarquardtConfig().to_kwargs()
    gn_kwargs = GaussNewtonConfig().to_kwargs()
    ctx.console.print(f"[bold]NIST StRD[/bold] data: {SOURCE}")
    rows: list[dict] = []
    with ctx.progress() as progress:
        task = progress.add_task("NIST StRD", total=2 * len(names))
        for name in names:
            prob = load_nist(name)
            ctx.console.print(f"[dim]data file: {prob.path}[/dim]")
            args = (jnp.asarray(prob.x), jnp.asarray(prob.y))
            measures = {
                "ours LM": _ours(
                    lambda r: levenberg_marquardt(r, **lm_kwargs), prob.residual, repeats
                ),
                "ours GN": _ours(lambda r: gauss_newton(r, **gn_kwargs), prob.residual, repeats),
                "scipy lm": _scipy("lm", prob.residual, repeats),
                "scipy trf": _scipy("trf", prob.residual, repeats),
                "optx LM": _optimistix("LevenbergMarquardt", prob.residual, repeats),
                "optx GN": _optimistix("GaussNewton", prob.residual, repeats),
            }
            for k, start in enumerate(prob.starts):
                b0 = jnp.asarray(start)
                row: dict = {"case": f"{name}/s{k + 1}", "file": str(prob.path)}
                for solver, measure in measures.items():
                    x, evals, timing, status = measure(b0, args)
                    row[solver] = {
                        "digits": float(log_relative_error(x, prob.certified).min()),
                        "evals": evals,
                        "time_s": timing.run_s,
                        "compile_s": timing.compile_s,
                        "status": status,
                    }
                rows.append(row)
                progress.advance(task)
    _table(ctx, rows)
    _plots(ctx, rows)
    (ctx.out_dir / "nist_cases.json").write_text(json.dumps(rows, indent=1) + "\n")

    def col(solver, key):
        return np.array([r[solver][key] for r in rows], dtype=float)

    n = len(rows)
    ours = col("ours LM", "digits")
    false_conv = sum(
        r["ours LM"]["status"] == "CONVERGED" and r["ours LM"]["digits"] < _SOLVED for r in rows
    )
    eval_ratio = statistics.median(col("ours LM", "evals") / col("scipy lm", "evals"))
    time_ratio = statistics.median(col("ours LM", "time_s") / col("optx LM", "time_s"))
    solved = {s: int(np.sum(col(s, "digits") >= _SOLVED)) for s in _SOLVERS}
    return [
        Record(
            "nist LM cases >= 6 digits",
            solved["ours LM"],
            "cases",
            target=f">= {n}",
            peer="scipy lm",
            peer_value=solved["scipy lm"],
        ),
        Record(
            "nist LM mean digits",
            float(ours.mean()),
            "digits",
            target=">= 9",
            peer="scipy lm",
            peer_value=float(col("scipy lm", "digits").mean()),
        ),
        Record(
            "nist LM evals / scipy lm (median)",
            eval_ratio,
            "ratio",
            target="<= 1.5",
            peer="scipy lm",
            peer_value=1.0,
        ),
        Record(
            "nist LM time / optimistix LM (median)",
            time_ratio,
            "ratio",
            target="<= 1",
            peer="optx LM",
            peer_value=1.0,
        ),
        Record("nist LM false convergences", false_conv, "cases", target="<= 0"),
        Record(
            "nist GN cases >= 6 digits",
            solved["ours GN"],
            "cases",
            peer="optx GN",
            peer_value=solved["optx GN"],
        ),
        Record(
            "nist LM median time per solve",
            float(np.median(col("ours LM", "time_s"))),
            "s",
            peer="optx LM",
            peer_value=float(np.median(col("optx LM", "time_s"))),
        ),
        Record(
            "nist LM median compile time",
            float(np.median(col("ours LM", "compile_s"))),
            "s",
            peer="optx LM",
            peer_value=float(np.median(col("optx LM", "compile_s"))),
        ),
        Record(
            "nist peers: scipy trf cases >= 6 digits",
            solved["scipy trf"],
            "cases",
            peer="optx LM cases >= 6 digits",
            peer_value=solved["optx LM"],
        ),
    ]
