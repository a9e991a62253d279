"""Memory manager: rematerialization, micro-batching and donation on a deep MLP and a PINN.

Models (float64; options ``layers``, ``width``, ``batch``):

- ``deep MLP``: ``layers`` tanh layers of ``width`` units applied by ``lax.scan`` over stacked
  weights, mean squared error against random targets (default 48 x 128, batch 1024; quick
  8 x 32, batch 64).
- ``PINN``: a Burgers residual ``u_t + u u_x - nu u_xx`` (``nu = 0.01 / pi``) of an MLP
  ``u(t, x)`` whose hidden layers are scanned, derivatives by nested ``jax.jvp`` per point and
  ``vmap`` over collocation points (default 16 hidden layers x 64, 2048 points; quick 4 x 16,
  64 points).

For each, every rematerialization candidate's ``value_and_grad`` is compiled and XLA's
``memory_analysis()`` read (:func:`choose_remat`, FLOPs counted on the jaxpr with loop trip
counts, as XLA's ``cost_analysis`` counts a loop body once). Records: temporary-memory reduction
of the chosen policy (target >= 60 % at <= 1.35x FLOPs), chosen memory against no remat (never
worse), the best reduction any candidate reached (the SPEC's "up to 80 %", as measured), the
median step time of the chosen policy against no remat, the gradient difference, bytes donated
in an Adam train step, and micro-batching against a budget of ``budget_fraction`` (0.6) times
the chosen policy's temporary memory. ``--quick`` compares only no remat and per-layer
remat. Plot: ``memory_candidates.png`` (memory against FLOPs).
"""

from __future__ import annotations

import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from opifex.benchmarks._harness import Context, Record
from opifex.optimization._production._memory import (
    choose_remat,
    fit_micro_batches,
    make_train_step,
    measure_compiled,
    remat_candidates,
    scan_layers,
)

NU = 0.01 / math.pi


def _dense_stack(key, layers, width):
    w = jax.random.normal(key, (layers, width, width)) / math.sqrt(width)
    return {"w": w, "b": jnp.zeros((layers, width))}


def _layer(h, p):
    return jnp.tanh(h @ p["w"] + p["b"])


def mlp_problem(layers, width, batch, seed=0):
    """A deep-MLP regression: ``(make_loss, params, args)``."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = _dense_stack(k1, layers, width)
    args = (jax.random.normal(k2, (batch, width)), jax.random.normal(k3, (batch, width)))

    def make_loss(remat):
        def loss(params, args):
            x, y = args
            return jnp.mean((scan_layers(_layer, params, x, remat) - y) ** 2)

        return loss

    return make_loss, params, args


def pinn_problem(layers, width, points, seed=0):
    """A Burgers PINN residual loss: ``(make_loss, params, args)``."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = {
        "inp": jax.random.normal(k1, (2, width)),
        "hidden": _dense_stack(k2, layers, width),
        "out": jax.random.normal(k3, (width,)) / math.sqrt(width),
    }
    tx = jax.random.uniform(k4, (points, 2), minval=jnp.array([0.0, -1.0]), maxval=1.0)

    def make_loss(remat):
        def u(params, z):
            h = scan_layers(_layer, params["hidden"], jnp.tanh(z @ params["inp"]), remat)
            return h @ params["out"]

        def loss(params, tx):
            # Rows are independent points, so a batched jvp along a constant direction gives
            # every point's directional derivative at once (no vmap needed).
            e_t = jnp.zeros_like(tx).at[:, 0].set(1.0)
            e_x = jnp.zeros_like(tx).at[:, 1].set(1.0)

            def u_and_ux(z):
                return jax.jvp(lambda s: u(params, s), (z,), (e_x,))

            (val, ux), (_, uxx) = jax.jvp(u_and_ux, (tx,), (e_x,))
            ut = jax.jvp(lambda s: u(params, s), (tx,), (e_t,))[1]
            return jnp.mean((ut + val * ux - NU * uxx) ** 2)

        return loss

    return make_loss, params, tx


def _plot(ctx, reports):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4.5))
    for ax, (label, report) in zip(np.atleast_1d(axes), reports.items(), strict=True):
        for i, row in enumerate(report.rows):
            x, y = report.flops_ratio(i), row.cost.temp_bytes / 2**20
            ax.scatter(x, y, color="tab:red" if i == report.chosen else "tab:blue")
            ax.annotate(row.candidate.name, (x, y), fontsize=7)
        ax.axvline(report.flops_bound, color="gray", linestyle="--", label="FLOPs bound")
        ax.set_xlabel("FLOPs / no-remat FLOPs")
        ax.set_ylabel("XLA temporary memory (MiB)")
        ax.set_title(f"{label}: remat candidates (red: chosen)")
        ax.legend()
    ctx.save_figure(fig, "memory_candidates")


def _compiled_run(fn, args, repeats):
    """Compile once; return the output and the median run time of the executable."""
    compiled = jax.jit(fn).lower(*args).compile()
    out = jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return out, statistics.median(runs)


def _model_records(ctx, label, problem, candidates, repeats):
    make_loss, params, args = problem
    report = choose_remat(make_loss, params, args, candidates=candidates)
    ctx.console.print(f"[bold]{label}[/bold]\n{report.table()}")
    base_cost = report.rows[report.baseline].cost
    chosen_cost = report.rows[report.chosen].cost
    base_loss = make_loss(report.rows[report.baseline].candidate)
    chosen_loss = make_loss(report.chosen_candidate)
    (_, g_base), t_base = _compiled_run(jax.value_and_grad(base_loss), (params, args), repeats)
    (_, g_chosen), t_chosen = _compiled_run(
        jax.value_and_grad(chosen_loss), (params, args), repeats
    )
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_base))
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(g_base), jax.tree.leaves(g_chosen), strict=True)
    )

    opt = optax.adam(1e-3)
    state = opt.init(params)
    grad_fn = jax.value_and_grad(chosen_loss)
    donated = measure_compiled(make_train_step(grad_fn, opt), params, state, args)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves((params, state)))

    budget = int(ctx.option("budget_fraction", 0.6, float) * chosen_cost.temp_bytes)
    # k = 1 is the chosen policy itself, measured above and over budget by construction.
    micro = fit_micro_batches(
        chosen_loss, params, args, memory_budget_bytes=budget, min_micro_batches=2
    )
    name = f"memory {label}"
    return report, [
        Record(
            f"{name}: temp memory reduction, chosen '{report.chosen_candidate.name}' vs no remat",
            100 * report.memory_reduction(),
            "%",
            ">= 60",
        ),
        Record(f"{name}: chosen FLOPs / no-remat FLOPs", report.flops_ratio(), "x", "<= 1.35"),
        Record(
            f"{name}: chosen temp bytes / no-remat temp bytes (never worse)",
            chosen_cost.temp_bytes / base_cost.temp_bytes,
            "x",
            "<= 1.0",
        ),
        Record(
            f"{name}: best reduction of any candidate (SPEC: up to 80%)",
            100 * report.best_reduction(),
            "%",
            ">= 80",
        ),
        Record(f"{name}: no-remat temp memory", base_cost.temp_bytes / 2**20, "MiB"),
        Record(
            f"{name}: median value_and_grad time, chosen policy",
            t_chosen,
            "s",
            peer="no remat",
            peer_value=t_base,
        ),
        Record(
            f"{name}: max |grad chosen - grad no remat| / max |grad|", diff / scale, "", "<= 1e-10"
        ),
        Record(
            f"{name}: bytes donated in the Adam step / params+state bytes",
            donated.alias_bytes / state_bytes,
            "x",
            ">= 0.99",
        ),
        Record(
            f"{name}: micro-batched temp bytes / budget ({budget / 2**20:.2f} MiB, "
            f"k={micro.chosen})",
            micro.chosen_cost.temp_bytes / budget,
            "x",
            "<= 1.0",
        ),
    ]


def run(ctx: Context) -> list[Record]:
    """Measure the memory manager on the deep MLP and the PINN; plot the candidates."""
    quick = ctx.quick
    layers = ctx.option("layers", 8 if quick else 48, int)
    width = ctx.option("width", 32 if quick else 128, int)
    batch = ctx.option("batch", 64 if quick else 1024, int)
    pinn_layers = ctx.option("pinn_layers", 4 if quick else 16, int)
    pinn_width = ctx.option("pinn_width", 16 if quick else 64, int)
    points = ctx.option("points", 64 if quick else 2048, int)
    repeats = 2 if quick else 5
    mlp_candidates = remat_candidates(layers)
    pinn_candidates = remat_candidates(pinn_layers)
    if quick:
        # Compile time dominates a smoke run: keep the baseline and per-layer remat only.
        mlp_candidates = pinn_candidates = mlp_candidates[:2]
    models = {
        "deep MLP": (mlp_problem(layers, width, batch), mlp_candidates),
        "PINN": (pinn_problem(pinn_layers, pinn_width, points), pinn_candidates),
    }
    records, reports = [], {}
    for label, (problem, candidates) in models.items():
        reports[label], recs = _model_records(ctx, label, problem, candidates, repeats)
        records.extend(recs)
    _plot(ctx, reports)
    return records
