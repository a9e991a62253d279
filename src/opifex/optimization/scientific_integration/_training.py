"""The functional stages of a physics-informed training run, each advanced in chunks.

A stage is a pair of jitted functions ``start(params, batch) -> carry`` and
``chunk(carry, batch, n) -> carry`` with ``carry = (params, inner_state, value, alive)``:
``alive`` turns false (and ``params`` stays at the last finite iterate) when a step produces a
non-finite value or iterate, or a solver leaves ``RUNNING``. The host loop in
:mod:`~opifex.optimization.scientific_integration.integrator` runs chunks between progress
updates and error evaluations, so one compilation serves a whole stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from opifex.optimization.core import Solver, Status, advance, tree_all_finite
from opifex.optimization.scientific_integration.loss_balancing import (
    grad_norm_annealing,
    ntk_trace,
    ntk_weights,
    relobralo,
    term_gradients,
)
from opifex.optimization.scientific_integration.physics_loss import PhysicsInformedLoss

BALANCING = ("none", "annealing", "relobralo", "ntk")


class Carry(NamedTuple):
    params: Any  # current (always finite) iterate
    state: Any  # optimizer or solver state
    value: jax.Array  # float [], loss at params (weighted as the stage sees it)
    alive: jax.Array  # bool [], false once the stage stopped (non-finite or terminated)
    status: jax.Array  # int32 [], Status of the stage


class Stage(NamedTuple):
    name: str
    steps: int
    start: Callable[[Any, Any], Carry]
    chunk: Callable[[Carry, Any, Any], Carry]
    count: Callable[[Carry], Any]
    finish: Callable[[Carry, Any], Carry]  # the stage's final carry (settles pending work)


def _balancer(loss: PhysicsInformedLoss, balancing: str, update_every: int):
    k = len(loss.terms)
    if balancing == "annealing":
        return grad_norm_annealing(k, reference=0, alpha=0.9, update_every=update_every)
    if balancing == "relobralo":
        return relobralo(k)
    if balancing == "ntk":
        return ntk_weights(k, alpha=0.9, update_every=update_every)
    return None


def adam_stage(
    loss: PhysicsInformedLoss,
    steps: int,
    learning_rate: float,
    *,
    balancing: str = "none",
    update_every: int = 100,
) -> Stage:
    """Adam on ``loss``, optionally preceded by a loss-balancing transform on per-term grads."""
    balancer = _balancer(loss, balancing, update_every)
    adam = optax.adam(learning_rate)
    opt = adam if balancer is None else optax.chain(balancer, adam)
    fixed = jnp.asarray(loss.weights)

    def traces(params, batch):
        out = []
        for term in loss.terms:
            part = batch[term.name]
            out.append(
                ntk_trace(
                    lambda p, pts, t=term, part=part: loss._residual(
                        t, p, {**part, "points": pts}
                    ).reshape(-1),
                    params,
                    part["points"],
                )
                / part["points"].shape[0]
            )
        return jnp.stack(out)

    def one_step(params, opt_state, batch):
        if balancer is None:
            value, grads = jax.value_and_grad(loss.loss)(params, batch)
            updates, opt_state = opt.update(grads, opt_state, params)
            return value, updates, opt_state
        term_losses, stacked = term_gradients(loss.term_losses, params, batch)
        extra = {"term_losses": term_losses}
        if balancing == "ntk":
            count = opt_state[0].count
            extra["ntk_traces"] = jax.lax.cond(
                count % update_every == 0,
                lambda: traces(params, batch),
                lambda: jnp.ones(len(loss.terms), term_losses.dtype),
            )
        updates, opt_state = opt.update(stacked, opt_state, params, **extra)
        return jnp.sum(fixed * term_losses), updates, opt_state

    # state = (optimizer state, steps this chunk, pending iterate). The loss of the pending
    # iterate is only known at the next step, so ``params`` is the last iterate whose loss was
    # finite and the pending one is accepted there; :func:`finish` settles the last one.
    @jax.jit
    def start(params, batch):
        value = loss.loss(params, batch)
        ok = jnp.isfinite(value) & tree_all_finite(params)
        status = jnp.where(ok, Status.RUNNING, Status.NONFINITE).astype(jnp.int32)
        state = (opt.init(params), jnp.zeros((), jnp.int32), params)
        return Carry(params, state, value, ok, status)

    @jax.jit
    def chunk(carry: Carry, batch, n):
        def cond(c):
            return c.alive & (c.state[1] < n)

        def body(c):
            opt_state, i, pending = c.state
            value, updates, new_opt = one_step(pending, opt_state, batch)
            ok = jnp.isfinite(value) & tree_all_finite(updates)
            return jax.lax.cond(
                ok,
                lambda: Carry(
                    pending,
                    (new_opt, i + 1, optax.apply_updates(pending, updates)),
                    value,
                    c.alive,
                    c.status,
                ),
                lambda: Carry(
                    c.params, c.state, c.value, jnp.zeros((), bool), jnp.int32(Status.NONFINITE)
                ),
            )

        carry = carry._replace(state=(carry.state[0], jnp.zeros((), jnp.int32), carry.state[2]))
        return jax.lax.while_loop(cond, body, carry)

    def count(carry):
        return _adam_count(carry.state[0])

    @jax.jit
    def finish(carry: Carry, batch):
        pending = carry.state[2]
        value = loss.loss(pending, batch)
        ok = carry.alive & jnp.isfinite(value) & tree_all_finite(pending)
        return jax.lax.cond(ok, lambda: carry._replace(params=pending, value=value), lambda: carry)

    return Stage("adam", steps, start, chunk, count, finish)


def _adam_count(opt_state):
    counts = [
        s.count
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    return int(counts[0]) if counts else 0


def solver_stage(name: str, solver: Solver, steps: int) -> Stage:
    """Any solver of the core protocol, advanced ``n`` steps per chunk."""
    # One compilation of ``init`` instead of dispatching each of its operations eagerly
    # (measured: most of the first-chunk time of a small BFGS stage).
    init = jax.jit(solver.init)

    def start(params, batch):
        state = init(params, batch)
        ok = bool(jnp.isfinite(state.value)) and bool(tree_all_finite(params))
        status = state.status if ok else jnp.int32(Status.NONFINITE)
        return Carry(params, state._replace(status=status), state.value, jnp.asarray(ok), status)

    def chunk(carry: Carry, batch, n):
        params, state = advance(solver, carry.params, carry.state, batch, num_steps=int(n))
        alive = state.status == Status.RUNNING
        return Carry(params, state, state.value, alive, state.status)

    return Stage(
        name, steps, start, chunk, lambda carry: int(carry.state.count), lambda carry, _: carry
    )
