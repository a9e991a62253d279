"""Bench part ``learned``: a meta-trained learned optimizer against tuned Adam and LR-free peers.

Protocol: meta-train :func:`opifex.optimization.l2o.l2o_engine.learned_optimizer` on a task
family with horizon ``T`` (ES, fixed seed, wall clock recorded); tune Adam's learning rate on
the log grid ``10^-4 .. 10^0`` (half-decade steps) by the median of ``log(f_T / f_0)`` over
training tasks; then run every optimizer for ``4T`` steps on held-out tasks (seeds disjoint
from training and tuning). For a reference optimizer R on a task, ``n_R`` is the first step at
which R reaches its own loss at step T and ``n_L`` the first step at which the learned
optimizer reaches that loss (infinite if never within ``4T``); the record is the median over
tasks of ``n_R / n_L``. Divergence at 4T means a non-finite loss or ``f_4T > f_0``.

Options: ``family`` (quadratic, logistic, mlp), ``horizon``, ``meta_steps``, ``num_tasks``
(per meta-step), ``test_tasks``, ``seed``. ``--quick``: tiny sizes, a smoke run only.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from opifex.benchmarks._harness import Context, Record, time_host

ADAM_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 1))  # 1e-4 ... 1, half decades
FULL = {
    "horizon": 100,
    "meta_steps": 300,
    "num_tasks": 8,
    "test_tasks": 64,
    "meta_lr_milli": 10,
    "reset_every": 2,
}
QUICK = {
    "horizon": 10,
    "meta_steps": 2,
    "num_tasks": 2,
    "test_tasks": 4,
    "meta_lr_milli": 10,
    "reset_every": 1,
}


def _peers(quick):
    import optax
    import optax.contrib as oc

    peers = {"prodigy": oc.prodigy(1.0)}
    if not quick:
        peers["dadapt_adamw"] = oc.dadapt_adamw(1.0)
        peers["dog"] = oc.dog(1.0)
        peers["mechanize(adam 1)"] = oc.mechanize(optax.adam(1.0), weight_decay=0.0)
    return peers


def _sampler(family):
    """A jitted ``keys -> (tasks, initial params)``, batched along the leading axis."""
    import jax

    def one(key):
        k_task, k_init = jax.random.split(key)
        task = family.sample(k_task)
        return task, family.init(k_init, task)

    return jax.jit(jax.vmap(one))


def _curves(family, make_opt, steps):
    """A jitted ``(tasks, params, hyper) -> losses (tasks, steps + 1)`` for ``make_opt(hyper)``.

    Tasks are data (sampled once by :func:`_sampler`), so every optimizer's program holds
    only its own loop.
    """
    import jax
    import optax

    def one(task, params, hyper):
        opt = optax.with_extra_args_support(make_opt(hyper))

        def body(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(family.loss)(params, task)
            updates, state = opt.update(grads, state, params, value=value)
            return (optax.apply_updates(params, updates), state), value

        (params, _), values = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return jax.numpy.append(values, family.loss(params, task))

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def _first_reach(curves, levels):
    """First step index where each curve is <= its level (inf if never)."""
    hit = curves <= levels[:, None]
    first = np.argmax(hit, axis=1).astype(float)
    first[~hit.any(axis=1)] = np.inf
    return first


def _step_ratios(ref, learned, horizon):
    """Per task: steps the reference needs to reach its loss at T / steps the learned needs."""
    level = ref[:, horizon]
    with np.errstate(divide="ignore"):
        return _first_reach(ref, level) / _first_reach(learned, level)


def run(ctx: Context) -> list[Record]:
    import jax
    import optax

    from opifex.optimization.l2o import l2o_engine as l2o

    cfg = dict(QUICK if ctx.quick else FULL)
    for name, default in list(cfg.items()):
        cfg[name] = ctx.option(name, default, int)
    family_name = ctx.option("family", "quadratic")
    if family_name not in l2o.FAMILIES:
        raise ValueError(f"unknown family {family_name!r}; choose from {sorted(l2o.FAMILIES)}.")
    seed = ctx.option("seed", 0, int)
    family = l2o.FAMILIES[family_name]()
    horizon, steps = cfg["horizon"], 4 * cfg["horizon"]

    # As many tuning tasks as test tasks: one compiled Adam run serves both.
    tune_keys = jax.vmap(jax.random.PRNGKey)(np.arange(cfg["test_tasks"]) + 10_000 * (seed + 1))
    test_keys = jax.vmap(jax.random.PRNGKey)(np.arange(cfg["test_tasks"]) + 1_000_000 + seed)
    sample = _sampler(family)
    tune, test = sample(tune_keys), sample(test_keys)
    adam_run = _curves(family, optax.adam, steps)
    grid = ADAM_GRID[-3:] if ctx.quick else ADAM_GRID
    scores = []
    for lr in grid:
        c = np.asarray(adam_run(*tune, lr))
        scores.append(float(np.median(np.log(c[:, horizon] / c[:, 0]))))
    scores = [s if np.isfinite(s) else np.inf for s in scores]
    best_lr = grid[int(np.argmin(scores))]

    # The learned optimizer starts as tuned Adam (its untrained form is Adam with step
    # exp(log_lr)); meta-training has to improve on that, not find the step size first.
    theta = l2o.init_meta_params(jax.random.PRNGKey(seed), learning_rate=best_lr)
    t0 = time.perf_counter()
    with ctx.progress() as bar:
        theta, history = l2o.meta_train(
            theta,
            family,
            meta_learning_rate=cfg["meta_lr_milli"] / 1000,
            meta_steps=cfg["meta_steps"],
            unroll_length=horizon,
            num_tasks=cfg["num_tasks"],
            horizon=cfg["reset_every"] * horizon,
            method="es",
            key=jax.random.PRNGKey(seed + 1),
            progress=bar,
            num_perturbations=8,
            sigma=0.02,
        )
    meta_seconds = time.perf_counter() - t0
    l2o.save_meta_params(ctx.out_dir / "learned_theta.npz", theta)

    learned_run = _curves(family, l2o.learned_optimizer, steps)
    curves = {"learned": np.asarray(learned_run(*test, theta))}
    curves[f"adam (lr {best_lr:.3g})"] = np.asarray(adam_run(*test, best_lr))
    for name, opt in _peers(ctx.quick).items():
        curves[name] = np.asarray(_curves(family, lambda _, o=opt: o, steps)(*test, 0.0))
    learned = curves["learned"]
    adam = curves[f"adam (lr {best_lr:.3g})"]

    ratios = _step_ratios(adam, learned, horizon)
    finite = np.all(np.isfinite(learned), axis=1)
    no_div = finite & (learned[:, -1] <= learned[:, 0])
    no_worse = finite & (learned[:, -1] <= adam[:, -1] * (1 + 1e-6) + 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        final_ratio = np.median(learned[:, -1] / adam[:, -1])

    # Time per step and task: the compiled 4T-step runs over the held-out batch (vmapped),
    # so no extra compilation; medians of 3 repeats.
    n = cfg["test_tasks"]
    t_learned = time_host(learned_run, *test, theta, repeats=3).run_s / (steps * n)
    t_adam = time_host(adam_run, *test, best_lr, repeats=3).run_s / (steps * n)
    wall = (
        _first_reach(adam, adam[:, horizon])
        * t_adam
        / (_first_reach(learned, adam[:, horizon]) * t_learned)
    )
    fam = f"{family.name}, T={horizon}, {n} held-out tasks"
    records = [
        Record(
            f"meta-training time ({cfg['meta_steps']} ES steps of T, tasks reset every "
            f"{cfg['reset_every']}T)",
            meta_seconds,
            "s",
            target="<= 300",
        ),
        Record(
            f"median steps ratio tuned Adam / learned to Adam's f(T) ({fam})",
            float(np.median(ratios)),
            "x",
            target=">= 2",
            peer=f"adam lr {best_lr:.3g}",
            peer_value=1.0,
        ),
        Record(
            "fraction of tasks without divergence at 4T (learned)",
            float(no_div.mean()),
            "fraction",
            target="== 1",
        ),
        Record(
            "fraction of tasks with learned f(4T) <= Adam f(4T)",
            float(no_worse.mean()),
            "fraction",
            target="== 1",
        ),
        Record("median learned f(4T) / Adam f(4T)", float(final_ratio), "ratio", target="<= 1"),
    ]
    for name in curves:
        if name in ("learned",) or name.startswith("adam"):
            continue
        r = _step_ratios(curves[name], learned, horizon)
        records.append(
            Record(
                f"median steps ratio {name} / learned to {name}'s f(T)",
                float(np.median(r)),
                "x",
                target=">= 2",
                peer=name,
                peer_value=1.0,
            )
        )
    records += [
        Record(
            f"time per step and task, learned (jit, vmap over {n} tasks)",
            t_learned,
            "s",
            peer="adam",
            peer_value=t_adam,
        ),
        Record(
            "median wall-clock ratio tuned Adam / learned to Adam's f(T)",
            float(np.median(wall)),
            "x",
            target=">= 1",
        ),
    ]
    _plots(ctx, curves, ratios, horizon, fam)
    ctx.console.print(
        f"[dim]learned: meta-loss {history['meta_loss'][0]:.3f} -> "
        f"{statistics.fmean(history['meta_loss'][-5:]):.3f}; Adam grid {list(grid)} scores "
        f"{[round(s, 3) for s in scores]}; best lr {best_lr:.3g}[/dim]"
    )
    return records


def _plots(ctx, curves, ratios, horizon, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        rel = c / c[:, :1]
        q1, med, q3 = np.nanpercentile(rel, [25, 50, 75], axis=0)
        steps = np.arange(rel.shape[1])
        (line,) = ax.semilogy(steps, med, label=name)
        ax.fill_between(steps, q1, q3, color=line.get_color(), alpha=0.2)
    ax.axvline(horizon, color="k", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="f(t) / f(0) (median, quartile band)", title=title)
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "l2o_learned_loss_curves")

    fig, ax = plt.subplots(figsize=(6, 4))
    shown = np.where(np.isfinite(ratios), ratios, 0.0)
    ax.scatter(np.arange(len(shown)), shown, s=14)
    ax.axhline(2.0, color="r", ls="--", lw=1, label="target 2x")
    ax.axhline(float(np.median(ratios)), color="k", lw=1, label="median")
    ax.set(xlabel="held-out task", ylabel="steps ratio tuned Adam / learned", title=title)
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "l2o_learned_steps_ratio")
