"""Time-to-accuracy curves of ``opifex bench pinn`` (one PNG per problem)."""

from __future__ import annotations

import numpy as np

from opifex.benchmarks._harness import Context

COLORS = {"opifex": "tab:blue", "adam+optax-lbfgs": "tab:orange", "adam": "tab:gray"}


def time_to_accuracy(ctx: Context, name: str, problem, runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    seen = set()
    for run in runs:
        label = run.method if run.method not in seen else None
        seen.add(run.method)
        color = COLORS.get(run.method)
        axes[0].semilogy(run.seconds, run.errors, color=color, alpha=0.8, label=label)
        axes[1].semilogy(run.iterations, run.errors, color=color, alpha=0.8, label=label)
    for label, value in problem.published.items():
        for ax in axes:
            ax.axhline(value, ls="--", lw=0.8, color="k", alpha=0.6)
        axes[0].annotate(label, (0, value), fontsize=7, va="bottom")
    axes[0].set(xlabel="run time [s] (compile excluded)", ylabel="relative L2 error")
    axes[1].set(xlabel="iteration", ylabel="relative L2 error")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    seeds = len({r.seed for r in runs})
    fig.suptitle(f"{name}: time to accuracy, {seeds} seed(s) per method")
    fig.tight_layout()
    ctx.save_figure(fig, f"{name}_time_to_accuracy")
    if not np.isfinite([r.final_error for r in runs]).all():
        ctx.console.print(f"[yellow]{name}: some runs ended with a non-finite error[/yellow]")
