"""``opifex bench l2o``, part ``qp``: amortized solvers on DC3's convex QP against OSQP.

The problem (100 variables, 50 equalities, 50 inequalities, 10000 instances; test set = the last
833) is :func:`opifex.benchmarks.problems.dc3_qp.make_dc3_qp`. Methods, all trained
self-supervised on the training rows in this run:

- ``dual``: :class:`~opifex.optimization.l2o.parametric_solver.DualQPSolver`: a network
  predicts the inequality multipliers (trained by maximizing the dual function), then
  ``refine_steps`` batched ADMM iterations, the closed-form primal and the exact ratio-test
  projection; each answer comes with a certified lower bound;
- ``dual, no projection``: the same without the projection (what a soft pipeline achieves);
- ``network alone`` and ``ADMM from lam = 0``: the two halves of ``dual``, apart;
- ``DC3 (ours)``: our reimplementation of DC3 (completion + correction, soft loss), trained
  for ``dc3_steps`` Adam steps (DC3 trained 1000 epochs; we train minutes at most, with Adam
  1e-3 instead of DC3's 1e-4 to make up for part of it).

The peer, OSQP (``eps_abs = eps_rel = 1e-4``), runs one instance at a time in the same run,
with a fresh setup per instance (``reuse=False``, DC3's protocol) and with one setup updated
per instance (``reuse=True``). Timings: medians over ``repeats`` calls, compilation apart;
OSQP's time per instance counts its setup/update and solve. DC3's published figures (Table 1)
are shown as peers: OSQP -15.05, DC3 -13.46 (10.6% gap), inequality violation max 2e-4.

Options: ``instances`` (test rows, default 833), ``ablations`` (the three variants above
besides ``dual``; default on, off in ``--quick``), ``train_steps`` (dual network, 3000),
``refine_steps`` (10), ``dc3_steps`` (6000; 0 = untrained), ``repeats`` (7). ``--quick``: 48
instances, 64 training steps of the dual network, an untrained DC3 (its training loop is the
same as the dual network's; compiling it would double the smoke run), 3 repeats: a smoke run,
not a measurement.
"""

from __future__ import annotations

import numpy as np

from opifex.benchmarks._harness import Context, Record

PUBLISHED = {"osqp_objective": -15.05, "dc3_objective": -13.46, "dc3_gap": 0.106, "dc3_ineq": 2e-4}


def _osqp_callable(problem, *, eps: float, reuse: bool):
    """One-instance OSQP solve ``x -> y`` (fresh setup per call, or one setup updated)."""
    import osqp
    import scipy.sparse as sp

    P = sp.csc_matrix(np.triu(problem.Q))
    M = sp.csc_matrix(np.vstack([problem.A, problem.G]))
    lower_in = np.full(problem.h.shape, -np.inf)
    settings = {"eps_abs": eps, "eps_rel": eps, "verbose": False}
    state = {}

    def solve(x):
        lower, upper = np.concatenate([x, lower_in]), np.concatenate([x, problem.h])
        if reuse and "solver" in state:
            state["solver"].update(l=lower, u=upper)
        else:
            solver = osqp.OSQP()
            solver.setup(P=P, q=problem.p, A=M, l=lower, u=upper, **settings)
            state["solver"] = solver
        return state["solver"].solve(raise_error=False).x

    return solve


def _learned(fn, params, qp):
    import jax.numpy as jnp

    return lambda X: fn(params, jnp.asarray(X), qp).y


def run(ctx: Context) -> list[Record]:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from opifex.benchmarks.problems.dc3_qp import make_dc3_qp
    from opifex.optimization.l2o._parametric_qp import solve_reduced
    from opifex.optimization.l2o.compare import compare
    from opifex.optimization.l2o.parametric_solver import (
        DualQPConfig,
        DualQPSolver,
        ParametricSolverConfig,
        dc3_solver,
    )

    quick = ctx.quick
    instances = ctx.option("instances", 48 if quick else 833, int)
    train_steps = ctx.option("train_steps", 64 if quick else 3000, int)
    refine_steps = ctx.option("refine_steps", 10, int)
    dc3_steps = ctx.option("dc3_steps", 0 if quick else 6000, int)
    repeats = ctx.option("repeats", 3 if quick else 7, int)

    problem = make_dc3_qp()
    split = problem.split()
    X_train, X_test = split.train, split.test[:instances]
    A, G, h = problem.A, problem.G, problem.h

    def objective(y, x):
        return float(0.5 * y @ problem.Q @ y + problem.p @ y)

    network = ParametricSolverConfig(hidden_sizes=(256, 256), train_steps=train_steps)
    config = DualQPConfig(network=network, refine_steps=refine_steps)
    solver = DualQPSolver(problem.Q, problem.p, A, G, h, config=config)
    with ctx.progress() as bar:
        history = solver.fit(X_train, progress=bar)
    train_s = history.seconds

    fn, params, qp = solver.solve_fn(), solver.network.params, solver.qp
    reports = {}
    for reuse in (False, True):
        classical = _osqp_callable(problem, eps=1e-4, reuse=reuse)
        reports[reuse] = compare(
            _learned(fn, params, qp),
            classical,
            X_test,
            objective_fn=objective,
            constraints=(A, G, h),
            training_s=train_s,
            repeats=repeats,
        )
    rep, rep_reuse = reports[False], reports[True]
    f_osqp = rep.classical_objective
    sol = solver.solve(X_test)
    Y, f, bound = (np.asarray(a) for a in (sol.y, sol.objective, sol.bound))
    cert_gap = (f - bound) / np.abs(bound)
    eq = np.abs(Y @ A.T - X_test).max(1)
    ineq = (Y @ G.T - h).max(1)

    def rel_gap(Y_other):
        f_other = 0.5 * np.einsum("bi,ij,bj->b", Y_other, problem.Q, Y_other) + Y_other @ problem.p
        return (f_other - f_osqp) / np.abs(f_osqp)

    def solve_with(**changes):
        other = DualQPSolver(problem.Q, problem.p, A, G, h, config=config.replace(**changes))
        other.network.params = params
        return np.asarray(other.solve(X_test).y)

    ablations = {}
    if ctx.option("ablations", not quick, lambda v: v.lower() in ("1", "true", "yes")):
        Y_soft = solve_with(project=False)
        eq_soft = np.abs(Y_soft @ A.T - X_test).max(1)
        ablations["soft_ok"] = (eq_soft <= 1e-8) & ((Y_soft @ G.T - h).max(1) <= 1e-4)
        ablations["gap_net"] = rel_gap(solve_with(refine_steps=0))
        zero = jnp.zeros(G.shape[0])
        admm_only = jax.jit(
            jax.vmap(lambda x: solve_reduced(zero, x, qp, steps=refine_steps, project=True).y)
        )
        ablations["gap_admm"] = rel_gap(np.asarray(admm_only(jnp.asarray(X_test))))

    dc3_cfg = ParametricSolverConfig(
        hidden_sizes=(200, 200),
        learning_rate=1e-3,
        batch_size=200,
        penalty_weight=5.0,
        train_steps=max(dc3_steps, 1),
    )
    dc3 = dc3_solver(problem.Q, problem.p, A, G, h, config=dc3_cfg)
    dc3_loss, dc3_s = np.zeros(0), 0.0
    if dc3_steps > 0:
        with ctx.progress() as bar:
            dc3_loss, dc3_s = dc3.fit(X_train, progress=bar)
    Y_dc3 = np.asarray(dc3.solve(X_test))
    gap_dc3 = rel_gap(Y_dc3)
    f_dc3 = 0.5 * np.einsum("bi,ij,bj->b", Y_dc3, problem.Q, Y_dc3) + Y_dc3 @ problem.p

    n = len(X_test)
    osqp = "OSQP eps 1e-4, fresh setup"
    osqp_reuse = "OSQP eps 1e-4, reused setup"
    tag = f"qp dual+ADMM{refine_steps}+proj"
    records = [
        Record(
            f"{tag}: mean |rel gap| vs OSQP ({n} test)",
            rep.mean_rel_gap,
            "",
            "<= 0.01",
            "DC3 (published)",
            PUBLISHED["dc3_gap"],
        ),
        Record(f"{tag}: max |rel gap| vs OSQP", rep.max_rel_gap, ""),
        Record(
            f"{tag}: mean certified gap (f - dual bound)/|bound|",
            float(cert_gap.mean()),
            "",
            "<= 0.01",
        ),
        Record(f"{tag}: max certified gap", float(cert_gap.max()), ""),
        Record(f"{tag}: mean objective", float(f.mean()), "", None, osqp, float(f_osqp.mean())),
        Record(
            f"{tag}: feasible fraction (eq<=1e-8, ineq<=1e-4)",
            rep.learned_feasible_fraction,
            "",
            ">= 0.99",
            osqp,
            rep.classical_feasible_fraction,
        ),
        Record(
            f"{tag}: exactly feasible fraction (eq<=1e-8, ineq<=0)",
            float(np.mean((eq <= 1e-8) & (ineq <= 0.0))),
            "",
            ">= 1",
        ),
        Record(
            f"{tag}: max equality residual",
            float(eq.max()),
            "",
            "<= 1e-8",
            osqp,
            rep.classical_max_eq,
        ),
        Record(
            f"{tag}: max inequality violation",
            max(float(ineq.max()), 0.0),
            "",
            "<= 1e-4",
            osqp,
            rep.classical_max_ineq,
        ),
        Record(f"{tag}: throughput speedup vs {osqp}", rep.speedup, "x", ">= 100"),
        Record(f"{tag}: throughput speedup vs {osqp_reuse}", rep_reuse.speedup, "x", ">= 100"),
        Record(
            f"{tag}: batch time ({n} instances, median)",
            rep.learned_batch_s,
            "s",
            None,
            osqp,
            rep.classical_total_s,
        ),
        Record(f"{tag}: compile time", rep.learned_compile_s, "s"),
        Record(
            f"{tag}: single-instance latency (median)",
            rep.learned_latency_s,
            "s",
            None,
            osqp_reuse,
            rep_reuse.classical_latency_s,
        ),
        Record(f"{osqp}: single-instance latency (median)", rep.classical_latency_s, "s"),
        Record(f"{tag}: training time ({train_steps} steps)", train_s, "s"),
        Record(
            f"{tag}: break-even instances (training+compile) vs {osqp}",
            rep.break_even_instances,
            "instances",
        ),
        Record(
            f"{tag}: break-even instances vs {osqp_reuse}",
            rep_reuse.break_even_instances,
            "instances",
        ),
        Record(
            f"qp OSQP eps 1e-4: mean objective ({n} test)",
            float(f_osqp.mean()),
            "",
            None,
            "OSQP (DC3 paper)",
            PUBLISHED["osqp_objective"],
        ),
        Record(
            f"qp DC3 (ours, {dc3_steps} steps): mean objective",
            float(f_dc3.mean()),
            "",
            None,
            "DC3 (published)",
            PUBLISHED["dc3_objective"],
        ),
        Record(
            f"qp DC3 (ours, {dc3_steps} steps): mean |rel gap| vs OSQP",
            float(np.abs(gap_dc3).mean()),
            "",
            "<= 0.01",
            "DC3 (published)",
            PUBLISHED["dc3_gap"],
        ),
        Record(
            f"qp DC3 (ours, {dc3_steps} steps): max inequality violation",
            max(float((Y_dc3 @ G.T - h).max()), 0.0),
            "",
            "<= 1e-4",
            "DC3 (published)",
            PUBLISHED["dc3_ineq"],
        ),
        Record(
            f"qp DC3 (ours, {dc3_steps} steps): max equality residual",
            float(np.abs(Y_dc3 @ A.T - X_test).max()),
            "",
            "<= 1e-8",
        ),
        Record(f"qp DC3 (ours): training time ({dc3_steps} steps)", dc3_s, "s"),
    ]
    if ablations:
        records += [
            Record(
                "qp dual, no projection: feasible fraction (eq<=1e-8, ineq<=1e-4)",
                float(ablations["soft_ok"].mean()),
                "",
                ">= 0.99",
            ),
            Record(
                "qp network alone (dual net, projected): mean |rel gap| vs OSQP",
                float(np.abs(ablations["gap_net"]).mean()),
                "",
            ),
            Record(
                f"qp ADMM{refine_steps} from lam=0 (no network): mean |rel gap| vs OSQP",
                float(np.abs(ablations["gap_admm"]).mean()),
                "",
            ),
        ]
    gaps = {tag: np.abs(rep.rel_gaps), "DC3 (ours)": np.abs(gap_dc3)}
    if ablations:
        gaps["network alone"] = np.abs(ablations["gap_net"])
        gaps[f"ADMM{refine_steps} from 0"] = np.abs(ablations["gap_admm"])
    _plots(
        ctx,
        gaps,
        {"dual network (negative dual)": history.loss, "DC3 (ours, soft loss)": dc3_loss},
    )
    return records


def _plots(ctx: Context, gaps: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    floor = 1e-12
    values = np.concatenate([np.maximum(g, floor) for g in gaps.values()])
    bins = np.logspace(np.log10(values.min()), np.log10(max(values.max(), 10 * floor)), 40)
    for name, g in gaps.items():
        ax.hist(np.maximum(g, floor), bins=bins, alpha=0.5, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("|relative objective gap| vs OSQP (eps 1e-4)")
    ax.set_ylabel("test instances")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "qp_gap_histogram")

    fig, axes = plt.subplots(1, len(curves), figsize=(10, 3.5))
    for ax, (name, loss) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        ax.plot(np.arange(1, len(loss) + 1), loss)
        ax.set_xlabel("Adam step")
        ax.set_title(name, fontsize=9)
        if len(loss) and np.all(loss > 0):
            ax.set_yscale("log")
    ctx.save_figure(fig, "qp_training_curves")
