"""Many fits in one call: a batch of NIST MGH17 fits solved by one ``vmap``-ed LM.

MGH17 (5 parameters, 33 points, NIST "average" difficulty) is fitted from ``N`` start points
scattered around NIST's second start point (each parameter scaled by ``exp(0.1 z)``,
``z ~ N(0, 1)``, fixed seed). All ``N`` fits run in one compiled ``vmap`` of :func:`solve`;
the peer is scipy ``least_squares(method="lm")`` called once per start (its natural use),
with the analytic Jacobian from JAX. Throughput is fits per second; accuracy is NIST's LRE
against the certified values.
"""

from __future__ import annotations

import time

import numpy as np

from opifex.benchmarks._harness import Context, Record, time_jax

_PROBLEM = "MGH17"
_MAX_STEPS = 1000
QUICK_SIZES = (1, 64, 512)
FULL_SIZES = (1, 64, 1024)
# A vmapped while_loop runs until its slowest member stops, so one start that needs the full
# step budget makes every member of a large batch pay for it: big batches only on a GPU.
ACCELERATOR_SIZES = (16384, 131072)


def _starts(problem, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return problem.starts[1] * np.exp(0.1 * rng.standard_normal((n, problem.starts.shape[1])))


def run(ctx: Context) -> list[Record]:
    """Throughput of batched LM fits against a loop of scipy ``lm`` fits."""
    import jax
    import jax.numpy as jnp
    from scipy.optimize import least_squares

    from opifex.benchmarks.problems.nist import load_nist, log_relative_error
    from opifex.optimization import Status, solve
    from opifex.optimization.second_order import create_levenberg_marquardt_solver

    problem = load_nist(_PROBLEM)
    ctx.console.print(f"[dim]batch: {problem.path}[/dim]")
    args = jax.tree.map(jnp.asarray, problem.args)
    solver = create_levenberg_marquardt_solver(problem.residual)
    platform = jax.devices()[0].platform
    sizes = list(QUICK_SIZES if ctx.quick else FULL_SIZES)
    if platform != "cpu" and not ctx.quick:
        sizes.extend(ACCELERATOR_SIZES)

    def fit_all(starts, args):
        one = lambda b0: solve(solver, b0, args, max_steps=_MAX_STEPS, implicit_diff=False)  # noqa: E731
        return jax.vmap(one)(starts)

    rows = []
    with ctx.progress() as progress:
        task = progress.add_task(f"batched LM on {platform}", total=len(sizes))
        for n in sizes:
            starts = jnp.asarray(_starts(problem, n))
            timing = time_jax(fit_all, starts, args, repeats=3 if ctx.quick else 5)
            sol = jax.jit(fit_all)(starts, args)
            params = np.asarray(sol.params)
            converged = np.asarray(sol.status) == Status.CONVERGED
            digits = np.array([log_relative_error(p, problem.certified).min() for p in params])
            rss = 2.0 * np.asarray(sol.value)
            rows.append((n, timing, converged, digits, rss))
            progress.advance(task)

    # scipy: one fit per call, timed over the first starts
    fun = jax.jit(problem.residual)
    jac = jax.jit(jax.jacfwd(problem.residual))
    peer_starts = _starts(problem, 8 if ctx.quick else 64)
    fun(jnp.asarray(peer_starts[0]), args)
    jac(jnp.asarray(peer_starts[0]), args)
    t0 = time.perf_counter()
    peer_digits = []
    for b0 in peer_starts:
        res = least_squares(
            lambda b: np.asarray(fun(jnp.asarray(b), args)),
            b0,
            jac=lambda b: np.asarray(jac(jnp.asarray(b), args)),
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        peer_digits.append(log_relative_error(res.x, problem.certified).min())
    peer_rate = len(peer_starts) / (time.perf_counter() - t0)

    records = []
    for n, timing, *_ in rows:
        records.append(
            Record(
                f"batch LM {_PROBLEM}: fits/s at N={n} ({platform})",
                n / timing.run_s,
                "fits/s",
                peer="scipy lm, one call per fit",
                peer_value=peer_rate,
            )
        )
    n, timing, converged, digits, rss = rows[-1]
    right = digits >= 6.0
    # A converged fit that is not the certified one must sit at a genuine other minimum
    # (a larger residual sum of squares), never be a wrong answer reported as converged.
    elsewhere = converged & ~right
    false_conv = elsewhere & (rss <= problem.certified_rss * (1 + 1e-6))
    ctx.console.print(
        f"[dim]batch N={n}: {int(right.sum())} fits at the certified minimum, "
        f"{int(elsewhere.sum())} converged at another local minimum"
        + (
            f" (RSS >= {rss[elsewhere].min():.4g} vs certified {problem.certified_rss:.4g})"
            if elsewhere.any()
            else ""
        )
        + f", {int((~converged).sum())} not converged[/dim]"
    )
    records += [
        Record(f"batch LM {_PROBLEM}: compile time at N={n}", timing.compile_s, "s"),
        Record(
            f"batch LM {_PROBLEM}: fraction at the certified minimum (>= 6 digits), N={n}",
            right.mean(),
            "1",
            target=">= 0.95",
            peer="scipy lm (its first starts)",
            peer_value=float(np.mean(np.asarray(peer_digits) >= 6.0)),
        ),
        Record(f"batch LM {_PROBLEM}: fraction CONVERGED, N={n}", converged.mean(), "1"),
        Record(
            f"batch LM {_PROBLEM}: false convergences (CONVERGED, wrong, RSS not larger), N={n}",
            int(false_conv.sum()),
            "fits",
            target="<= 0",
        ),
    ]
    _plot(ctx, rows, peer_rate, platform)
    return records


def _plot(ctx: Context, rows, peer_rate: float, platform: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r[0] for r in rows]
    rates = [r[0] / r[1].run_s for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(ns, rates, "o-", label=f"opifex LM, vmap ({platform})")
    ax.axhline(peer_rate, color="tab:red", ls="--", label="scipy lm, one call per fit")
    ax.set_xlabel("batch size N (fits per call)")
    ax.set_ylabel("fits per second")
    ax.set_title(f"NIST {_PROBLEM}: batched Levenberg-Marquardt")
    ax.legend()
    ctx.save_figure(fig, "batch_lm_throughput")
