"""``opifex bench pinn``: published PINN benchmarks, ours against the optax recipes.

Problems (``--option problems=burgers,convection,reaction,wave``): Burgers (Raissi et al.
2019) and the convection / reaction / wave problems of Rathore et al. (2024). Each problem is
trained from ``seeds`` initialisations (default 3) by every recipe of
:mod:`opifex.benchmarks.pinn._methods` at the same iteration budget (``adam_steps`` Adam
iterations, then ``second_steps`` second-order iterations; Adam alone gets both), and the
median final relative L2 error is compared with the published figure. Also reported: time per
second-order iteration, run time to the published error, and the cost of one loss-and-gradient
evaluation with forward-over-forward ``jvp`` derivatives against nested ``grad``.

Options (``--option name=value``): ``problems``, ``seeds``, ``adam_steps``, ``second_steps``,
``polish_steps`` (NysNewton-CG iterations after BFGS; the peers get as many more),
``learning_rate``, ``log_every``. ``--quick`` runs Burgers with one hidden layer of 10 on 500
collocation points for 10 + 10 iterations, one seed: a smoke run of every code path, not a
measurement of accuracy.
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from opifex.benchmarks._harness import Context, Record

DEFAULTS = {"adam_steps": 1000, "second_steps": 4000, "learning_rate": 1e-3, "log_every": 100}
STRETCH = {"burgers": 1e-4}
PEER = "adam+optax-lbfgs"
QUICK_SIZES = (2, 10, 1)


def _median(values):
    values = [v for v in values if np.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def _quick_batch(problem, seed, size=500):
    full = problem.seed_batch(seed)
    rng = np.random.default_rng(seed)
    pts = full["pde"]["points"]
    full["pde"]["points"] = pts[rng.choice(pts.shape[0], size, replace=False)]
    return problem.loss.check_batch(full)


def run(ctx: Context) -> list[Record]:
    import jax

    jax.config.update("jax_enable_x64", True)
    from opifex.benchmarks.pinn import _derivatives, _methods, _plots
    from opifex.benchmarks.problems.pinn import PROBLEMS

    default_problems = "burgers" if ctx.quick else "burgers,convection,reaction,wave"
    names = [p for p in ctx.option("problems", default_problems).split(",") if p]
    unknown = sorted(set(names) - set(PROBLEMS))
    if unknown:
        raise ValueError(f"unknown problems {unknown}; choose from {sorted(PROBLEMS)}.")
    seeds = ctx.option("seeds", 1 if ctx.quick else 3, int)
    adam_steps = ctx.option("adam_steps", 10 if ctx.quick else DEFAULTS["adam_steps"], int)
    second_steps = ctx.option("second_steps", 10 if ctx.quick else DEFAULTS["second_steps"], int)
    lr = ctx.option("learning_rate", DEFAULTS["learning_rate"], float)
    log_every = ctx.option("log_every", 5 if ctx.quick else DEFAULTS["log_every"], int)
    polish_steps = ctx.option("polish_steps", 0, int)

    records = list(_derivatives.run(ctx))
    total = len(names) * seeds * len(_methods.METHODS)
    runs: dict[str, list] = {}
    with ctx.progress() as bar:
        task = bar.add_task("pinn", total=total)
        for name in names:
            problem = PROBLEMS[name]()
            if ctx.quick:
                problem = dataclasses.replace(problem, sizes=QUICK_SIZES)
            runs[name] = []
            for seed in range(seeds):
                batch = _quick_batch(problem, seed) if ctx.quick else None
                for method in _methods.METHODS:
                    bar.update(task, description=f"{name} seed {seed} {method}")
                    run_ = _methods.run_method(
                        method,
                        problem,
                        seed,
                        adam_steps=adam_steps,
                        second_steps=second_steps,
                        learning_rate=lr,
                        log_every=log_every,
                        polish_steps=polish_steps,
                        batch=batch,
                    )
                    runs[name].append(run_)
                    ctx.console.print(
                        f"[dim]{name} seed {seed} {method}: relative L2 {run_.final_error:.3e} "
                        f"in {run_.seconds[-1]:.1f} s (compile {run_.compile_seconds:.1f} s)[/dim]"
                    )
                    bar.advance(task)
            records.extend(
                _problem_records(
                    name, problem, runs[name], seeds, adam_steps, second_steps + polish_steps
                )
            )
            _plots.time_to_accuracy(ctx, name, problem, runs[name])
    return records


def _problem_records(name, problem, runs, seeds, adam_steps, second_steps):
    by = {m: [r for r in runs if r.method == m] for m in {r.method for r in runs}}
    med = {m: _median([r.final_error for r in rs]) for m, rs in by.items()}
    published = list(problem.published.values())
    target = published[0]
    budget = f"{adam_steps}+{second_steps} it, median of {seeds}"
    out = [
        Record(
            f"{name}: relative L2, opifex Adam+BFGS ({budget})",
            med["opifex"],
            "",
            target=f"<= {target}",
            peer=PEER,
            peer_value=med.get(PEER),
        ),
        Record(
            f"{name}: relative L2, plain Adam ({budget})",
            med["adam"],
            "",
            peer=PEER,
            peer_value=med.get(PEER),
        ),
    ]
    stretch = STRETCH.get(name, published[1] if len(published) > 1 else None)
    if stretch is not None:
        out.append(
            Record(
                f"{name}: relative L2 stretch, opifex", med["opifex"], "", target=f"<= {stretch}"
            )
        )
    per_it = {
        m: _median([r.second_order_seconds_per_iteration for r in rs]) for m, rs in by.items()
    }
    out.append(
        Record(
            f"{name}: seconds per second-order iteration, opifex BFGS",
            per_it["opifex"],
            "s",
            peer="optax lbfgs",
            peer_value=per_it.get(PEER),
        )
    )
    # Runs that never reach the error count as slower than any that do (a median over
    # infinities is honest; one over the successful runs alone would not be).
    ttt = {m: [r.time_to(target) for r in rs] for m, rs in by.items()}
    hits = {m: sum(np.isfinite(t) for t in ts) for m, ts in ttt.items()}
    out.append(
        Record(
            f"{name}: runs reaching error {target} (of {seeds})",
            hits["opifex"],
            "",
            peer=PEER,
            peer_value=hits.get(PEER),
        )
    )
    med_t = {
        m: statistics.median([t if np.isfinite(t) else np.inf for t in ts]) for m, ts in ttt.items()
    }
    out.append(
        Record(
            f"{name}: median run seconds to error {target} (inf: most runs never reached it)",
            med_t["opifex"],
            "s",
            peer=PEER,
            peer_value=med_t.get(PEER),
        )
    )
    return out
