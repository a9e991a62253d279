"""NNX part of ``opifex bench second-order``: the cost of L-BFGS over ``nnx.Param``.

A 1-32-32-1 tanh MLP (float64) regresses ``sin`` on synthetic data (no data files). The same
L-BFGS transform (:func:`create_lbfgs_optimizer`) runs twice for ``N`` steps from the same
start: through :class:`NNXLBFGSWrapper.fit` on the module, and raw, on the parameter vector
flattened with ``ravel_pytree`` in a ``lax.fori_loop`` reusing the line search's value and
gradient (``optax.value_and_grad_from_state``). Records: the largest difference of the final
iterates and of the loss histories (same arithmetic, so ~0), the post-jit time ratio
wrapper/raw (median over repeats; the wrapper's time includes its host work: splitting and
updating the module), and how often :meth:`NNXLBFGSWrapper.step` was traced over many calls.

Informational: :class:`HybridOptimizer` (Adam -> L-BFGS) against Adam alone and L-BFGS alone
on the same budget of updates, with the switch step, and a plot of the three loss curves.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from opifex.benchmarks._harness import Context, Record, block

WIDTH = 32
NUM_POINTS = 256
ADAM_LR = 1e-2


def _problem(seed: int = 0):
    import jax.numpy as jnp
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            kw = {"dtype": jnp.float64, "param_dtype": jnp.float64, "rngs": rngs}
            self.l1 = nnx.Linear(1, WIDTH, **kw)
            self.l2 = nnx.Linear(WIDTH, WIDTH, **kw)
            self.l3 = nnx.Linear(WIDTH, 1, **kw)

        def __call__(self, x):
            return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))

    x = jnp.linspace(-3.0, 3.5, NUM_POINTS, dtype=jnp.float64)[:, None]
    y = jnp.sin(x) + 0.1 * x
    return MLP(nnx.Rngs(seed)), x, y


def _mse(model, x, y):
    import jax.numpy as jnp

    return jnp.mean((model(x) - y) ** 2)


def _flat_problem(model):
    """The same loss on the ravelled parameter vector: ``(v, (x, y)) -> float``."""
    from flax import nnx
    from jax.flatten_util import ravel_pytree

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure((params, rest))
    v0, unravel = ravel_pytree(params)

    def flat_loss(v, data):
        return _mse(nnx.merge(graphdef, unravel(v), rest), *data)

    return flat_loss, v0


def _raw_lbfgs(flat_loss, config, num_steps):
    """Raw L-BFGS on a flat vector for ``num_steps`` steps; returns (v, losses)."""
    import jax
    import jax.numpy as jnp
    import optax

    from opifex.optimization.second_order import create_lbfgs_optimizer

    tx = create_lbfgs_optimizer(config)

    def run(v0, data):
        fn = lambda v: flat_loss(v, data)  # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(fn)

        def body(k, carry):
            v, s, losses = carry
            value, grad = value_and_grad(v, state=s)
            updates, s = tx.update(grad, s, v, value=value, grad=grad, value_fn=fn)
            return v + updates, s, losses.at[k].set(value)

        losses = jnp.zeros(num_steps, v0.dtype)
        v, _, losses = jax.lax.fori_loop(0, num_steps, body, (v0, tx.init(v0), losses))
        return v, losses

    return run


def _raw_fit(flat_loss, config, num_steps):
    """The same L-BFGS loop as ``NNXLBFGSWrapper.fit`` (same stopping tests and loss history)
    on the flat parameter vector with no NNX in sight: the wrapper's overhead baseline."""
    import optax

    from opifex.optimization.second_order import create_lbfgs_optimizer
    from opifex.optimization.second_order._hybrid import transform_loop

    tx = create_lbfgs_optimizer(config)

    def run(v0, data):
        fn = lambda v: flat_loss(v, data)  # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(fn)

        def evaluate(v, aux, s):
            value, grad = value_and_grad(v, state=s)
            return value, grad, aux, fn

        res = transform_loop(
            tx,
            evaluate,
            v0,
            (),
            tx.init(v0),
            num_steps=num_steps,
            gtol=float(config.gtol),
            ftol=float(config.ftol),
        )
        return res.params, res.losses

    return run


def _adam(flat_loss, num_steps):
    import jax
    import optax

    tx = optax.adam(ADAM_LR)

    def run(v0, data):
        def body(carry, _):
            v, s = carry
            value, grad = jax.value_and_grad(flat_loss)(v, data)
            updates, s = tx.update(grad, s, v)
            return (v + updates, s), value

        (v, _), losses = jax.lax.scan(body, (v0, tx.init(v0)), None, length=num_steps)
        return v, losses

    return run


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def _time_both(raw, v0, wrapper, model, initial, x, y, num_steps, repeats):
    """Median post-jit seconds of the raw loop and of ``wrapper.fit``, runs interleaved so
    that drifting machine load affects both alike."""
    from flax import nnx

    raw_runs, wrapper_runs, history = [], [], None
    for i in range(repeats + 1):  # the first round compiles the wrapper's fit
        t0 = time.perf_counter()
        block(raw(v0, (x, y)))
        raw_runs.append(time.perf_counter() - t0)
        nnx.update(model, initial)
        wrapper.reset()
        t0 = time.perf_counter()
        history = wrapper.fit(_mse, x, y, num_steps=num_steps)
        block(nnx.state(model))
        if i:
            wrapper_runs.append(time.perf_counter() - t0)
    return statistics.median(raw_runs[1:]), statistics.median(wrapper_runs), history


def _overhead_records(ctx: Context, num_steps: int, repeats: int) -> list[Record]:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.flatten_util import ravel_pytree

    from opifex.optimization.second_order import LBFGSConfig, NNXLBFGSWrapper

    config = LBFGSConfig(gtol=0.0)  # fixed number of steps for both
    model, x, y = _problem()
    initial = nnx.clone(nnx.state(model))
    flat_loss, v0 = _flat_problem(model)

    t0 = time.perf_counter()
    raw = jax.jit(_raw_fit(flat_loss, config, num_steps)).lower(v0, (x, y)).compile()
    raw_compile_s = time.perf_counter() - t0
    bare = jax.jit(_raw_lbfgs(flat_loss, config, num_steps)).lower(v0, (x, y)).compile()
    raw_v, raw_losses = block(bare(v0, (x, y)))
    raw_losses = raw_losses[:num_steps]
    wrapper = NNXLBFGSWrapper(model, config)
    raw_s, wrapper_s, history = _time_both(
        raw, v0, wrapper, model, initial, x, y, num_steps, repeats
    )
    bare_s = statistics.median([_seconds(lambda: bare(v0, (x, y))) for _ in range(max(repeats, 1))])
    wrap_v = ravel_pytree(nnx.as_pure(nnx.state(model, nnx.Param)))[0]
    iterate_diff = float(jnp.max(jnp.abs(wrap_v - raw_v)))
    loss_diff = float(np.max(np.abs(history.losses[:num_steps] - np.asarray(raw_losses))))

    nnx.update(model, initial)
    stepper = NNXLBFGSWrapper(model, config)
    num_calls = 5 if ctx.quick else 20
    for _ in range(num_calls):
        stepper.step(_mse, x, y)

    ratio = wrapper_s / raw_s
    ctx.console.print(
        f"[dim]nnx: MLP 1-{WIDTH}-{WIDTH}-1 ({v0.size} params), {NUM_POINTS} synthetic points "
        f"(sin(x) + 0.1 x; no data files), {num_steps} L-BFGS steps; raw compile "
        f"{raw_compile_s:.2f}s; final loss {history.losses[-1]:.3e}[/dim]"
    )
    return [
        Record(
            f"nnx lbfgs: max |iterate diff| vs raw after {num_steps} steps",
            iterate_diff,
            "abs",
            target="<= 1e-8",
        ),
        Record(
            f"nnx lbfgs: max |loss diff| vs raw over {num_steps} steps",
            loss_diff,
            "abs",
            target="<= 1e-8",
        ),
        Record(
            "nnx lbfgs: wrapper fit / same loop on raw flat params (post-jit)",
            ratio,
            "ratio",
            target="<= 1.05",
        ),
        Record(
            "nnx lbfgs: fit time vs bare fori_loop (no stopping tests, no history)",
            wrapper_s * 1e3,
            "ms",
            peer="bare fori_loop (raw L-BFGS)",
            peer_value=bare_s * 1e3,
        ),
        Record(
            "nnx lbfgs: fit time (post-jit median)",
            wrapper_s * 1e3,
            "ms",
            peer="same loop, raw flat params",
            peer_value=raw_s * 1e3,
        ),
        Record(
            f"nnx lbfgs: traces of the jitted step over {num_calls} calls",
            stepper.num_traces,
            "count",
            target="<= 1",
        ),
    ]


def _hybrid_records(ctx: Context, budget: int) -> list[Record]:
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from opifex.optimization.second_order import (
        HybridOptimizer,
        HybridOptimizerConfig,
        LBFGSConfig,
    )

    model, x, y = _problem(seed=1)
    flat_loss, v0 = _flat_problem(model)
    lbfgs_config = LBFGSConfig(gtol=0.0)
    _, adam_losses = block(jax.jit(_adam(flat_loss, budget))(v0, (x, y)))
    _, lbfgs_losses = block(jax.jit(_raw_lbfgs(flat_loss, lbfgs_config, budget))(v0, (x, y)))
    config = HybridOptimizerConfig(
        adam_learning_rate=ADAM_LR,
        switch_criterion="plateau",
        plateau_window=25,
        plateau_threshold=1e-2,
        min_adam_steps=budget // 10,
        switch_step=budget // 2,
        lbfgs=lbfgs_config,
    )
    result = HybridOptimizer(config).optimize(flat_loss, v0, (x, y), num_steps=budget)
    hybrid_losses = result.losses
    adam_losses, lbfgs_losses = np.asarray(adam_losses), np.asarray(lbfgs_losses)
    finals = {
        "adam": float(adam_losses[-1]),
        "lbfgs": float(lbfgs_losses[-1]),
        "hybrid": float(hybrid_losses[-1]),
    }

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(adam_losses, label=f"Adam (lr {ADAM_LR:g})")
    ax.semilogy(lbfgs_losses, label="L-BFGS")
    ax.semilogy(hybrid_losses, label="Adam -> L-BFGS")
    if result.switch_step >= 0:
        ax.axvline(
            result.switch_step,
            color="k",
            ls="--",
            lw=1,
            label=f"switch (step {result.switch_step})",
        )
    ax.set_xlabel("update")
    ax.set_ylabel("MSE loss")
    ax.set_title(f"MLP 1-{WIDTH}-{WIDTH}-1 on sin data, {budget} updates")
    ax.legend()
    ctx.save_figure(fig, "nnx_hybrid_loss")
    ctx.console.print(
        f"[dim]nnx hybrid: {budget} updates; final loss adam {finals['adam']:.3e}, "
        f"lbfgs {finals['lbfgs']:.3e}, hybrid {finals['hybrid']:.3e} (status "
        f"{result.status.name}); switch at {result.switch_step}[/dim]"
    )
    return [
        Record(
            f"nnx hybrid: final loss after {budget} updates",
            finals["hybrid"],
            "mse",
            peer="Adam alone",
            peer_value=finals["adam"],
        ),
        Record(
            f"nnx hybrid: final loss after {budget} updates (vs L-BFGS)",
            finals["hybrid"],
            "mse",
            peer="L-BFGS alone",
            peer_value=finals["lbfgs"],
        ),
        Record("nnx hybrid: switch step (plateau criterion)", result.switch_step, "step"),
    ]


def run(ctx: Context) -> list[Record]:
    """Run the NNX part; ``ctx.quick`` keeps it to seconds (after compilation)."""
    num_steps, repeats, budget = (100, 5, 300) if ctx.quick else (300, 15, 2000)
    records = _overhead_records(ctx, num_steps, repeats)
    records += _hybrid_records(ctx, budget)
    return records
