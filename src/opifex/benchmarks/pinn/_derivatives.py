"""Cost of one Burgers loss-and-gradient evaluation: batched forward-mode ``jvp`` derivatives
(:func:`~opifex.optimization.scientific_integration.partial`) against per-point nested
``grad`` / ``hessian`` under ``vmap``, the form most PINN code uses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from opifex.benchmarks._harness import Context, Record, time_jax
from opifex.benchmarks.problems.pinn import burgers
from opifex.optimization.scientific_integration import init_mlp


def nested_grad_loss(problem, nu=0.01 / np.pi):
    """The Burgers loss written with per-point ``grad`` and ``hessian`` (the usual recipe)."""
    apply = problem.loss.apply

    def loss(params, batch):
        def scalar(x):
            return apply(params, x[None])[0]

        def residual(x):
            g = jax.grad(scalar)(x)
            h = jax.hessian(scalar)(x)
            return g[1] + scalar(x) * g[0] - nu * h[0, 0]

        r = jax.vmap(residual)(batch["pde"]["points"])
        d = apply(params, batch["data"]["points"]) - batch["data"]["targets"]
        return jnp.mean(r**2) + jnp.mean(d**2)

    return loss


def run(ctx: Context) -> list[Record]:
    problem = burgers()
    batch = problem.batch(0)
    if ctx.quick:
        batch["pde"]["points"] = batch["pde"]["points"][:500]
        problem = dataclasses.replace(problem, sizes=(2, 10, 1))
    params = init_mlp(jax.random.PRNGKey(0), problem.sizes, dtype=jnp.float64)
    ours = jax.value_and_grad(problem.loss.loss)
    theirs = jax.value_and_grad(nested_grad_loss(problem))
    v1, g1 = jax.jit(ours)(params, batch)
    v2, g2 = jax.jit(theirs)(params, batch)
    same = jax.tree.reduce(max, jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g1, g2))
    if not np.isclose(float(v1), float(v2), rtol=1e-10) or same > 1e-8:
        raise RuntimeError("jvp and nested-grad Burgers losses disagree; the benchmark is void.")
    repeats = 3 if ctx.quick else 7
    t_ours = time_jax(ours, params, batch, repeats=repeats)
    t_theirs = time_jax(theirs, params, batch, repeats=repeats)
    n = batch["pde"]["points"].shape[0]
    return [
        Record(
            f"burgers loss+grad on {n} points, jvp derivatives",
            t_ours.run_s * 1e3,
            "ms",
            peer="vmap nested grad",
            peer_value=t_theirs.run_s * 1e3,
        ),
        Record(
            "burgers loss+grad time ratio jvp / nested grad",
            t_ours.run_s / t_theirs.run_s,
            "x",
            target="<= 1.0",
        ),
    ]
