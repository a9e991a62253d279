"""State constraints in box-DDP by an augmented Lagrangian (method of multipliers).

For ``g(x_t, x_{t+1}) <= 0`` (``t < N``, with ``x_{t+1} = f(x_t, u_t, d)``; a pure state
constraint ignores its first argument, a discrete-time barrier condition uses both) each outer
iteration solves the box-DDP problem whose stage cost carries the Powell-Hestenes-Rockafellar
term

    (1 / 2 rho) * sum_i ( max(0, lam_ti + rho g_i(x_t, x_{t+1}))^2 - lam_ti^2 ),

then updates ``lam <- max(0, lam + rho g)`` and ``rho <- growth * rho`` while the constraints
are violated (Nocedal & Wright, sec. 17.4; Howell, Jackson & Manchester, "ALTRO", IROS 2019).

``params`` are the pair ``(controls [N, nu], multipliers [N, nc])``, so the solution is
differentiated implicitly through the KKT conditions themselves: the projected gradient of the
Lagrangian ``J + sum lam' g`` in the controls, and the complementarity fixed point
``lam = max(0, lam + g)`` (active constraints stay active, inactive multipliers stay zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from opifex.optimization.control._ilqr import OCPArgs, box_ddp, rollout
from opifex.optimization.core import Solver, Status, solve

_PENALTY_MAX = 1e9


class AugmentedLagrangianState(NamedTuple):
    """State of :func:`augmented_lagrangian_ddp`."""

    count: jax.Array  # int32 [], outer iterations
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], cost (without penalty) of the current controls
    penalty: jax.Array  # float [], rho
    violation: jax.Array  # float [], max_t,i max(0, g_i(x_{t+1}))
    inner_iterations: jax.Array  # int32 [], DDP iterations over all outer iterations
    inner_status: jax.Array  # int32 [], status of the last DDP solve


def augmented_lagrangian_ddp(
    dynamics: Callable,
    stage_cost: Callable,
    terminal_cost: Callable,
    constraint: Callable,
    *,
    inner_iterations: int = 100,
    gtol: float = 1e-8,
    ftol: float = 1e-12,
    penalty: float = 10.0,
    penalty_growth: float = 10.0,
    constraint_tolerance: float = 1e-6,
    second_order: bool = True,
) -> Solver:
    """Box-DDP with constraints ``constraint(x_t, x_{t+1}) <= 0`` for ``t < N``.

    Args:
        dynamics, stage_cost, terminal_cost: As for :func:`._ilqr.box_ddp`.
        constraint: ``g(x, x_next) -> [nc]``, required ``<= 0``.
        inner_iterations: DDP iteration budget per outer iteration.
        gtol, ftol, second_order: As for :func:`._ilqr.box_ddp`.
        penalty: Initial ``rho``.
        penalty_growth: Factor on ``rho`` after an outer iteration that left a violation.
        constraint_tolerance: Converged when the largest violation is at most this and the
            last DDP solve converged.

    Returns:
        A :class:`~opifex.optimization.core.Solver` over ``(controls, multipliers)`` with
        :class:`._ilqr.OCPArgs`.
    """

    def next_violation(x, u, d):
        return constraint(x, dynamics(x, u, d))

    def al_stage(x, u, r, c):
        ref, lam = r
        cost_params, rho, d = c
        g = next_violation(x, u, d)
        shifted = jnp.maximum(0.0, lam + rho * g)
        return stage_cost(x, u, ref, cost_params) + jnp.sum(shifted**2 - lam**2) / (2.0 * rho)

    def al_terminal(x, r, c):
        return terminal_cost(x, r[0], c[0])

    inner = box_ddp(
        dynamics, al_stage, al_terminal, max_iterations=inner_iterations, gtol=gtol, ftol=ftol
    )

    def inner_args(args: OCPArgs, lam, rho):
        padded = jnp.concatenate([lam, jnp.zeros_like(lam[:1])])
        return args._replace(
            reference=(args.reference, padded),
            cost_params=(args.cost_params, rho, args.dynamics_params),
        )

    def constraint_values(controls, args):
        states, cost = rollout(dynamics, stage_cost, terminal_cost, controls, args)
        return jax.vmap(constraint)(states[:-1], states[1:]), cost

    def init(params, args: OCPArgs) -> AugmentedLagrangianState:
        controls, _ = params
        g, cost = constraint_values(controls, args)
        return AugmentedLagrangianState(
            count=jnp.zeros((), jnp.int32),
            status=jnp.asarray(Status.RUNNING, jnp.int32),
            value=cost,
            penalty=jnp.asarray(penalty, cost.dtype),
            violation=jnp.max(jnp.maximum(g, 0.0)),
            inner_iterations=jnp.zeros((), jnp.int32),
            inner_status=jnp.asarray(Status.RUNNING, jnp.int32),
        )

    def step(params, state: AugmentedLagrangianState, args: OCPArgs):
        controls, lam = params
        rho = state.penalty
        sol = solve(inner, controls, inner_args(args, lam, rho), implicit_diff=False)
        g, cost = constraint_values(sol.params, args)
        violation = jnp.max(jnp.maximum(g, 0.0))
        new_lam = jnp.maximum(0.0, lam + rho * g)
        inner_ok = (sol.status == Status.CONVERGED) | (sol.status == Status.MAX_STEPS)
        done = (violation <= constraint_tolerance) & inner_ok
        status = jnp.where(
            done,
            Status.CONVERGED,
            jnp.where(sol.status == Status.NONFINITE, Status.NONFINITE, Status.RUNNING),
        ).astype(jnp.int32)
        grow = violation > constraint_tolerance
        new_state = AugmentedLagrangianState(
            count=state.count + 1,
            status=status,
            value=cost,
            penalty=jnp.where(grow, jnp.minimum(rho * penalty_growth, _PENALTY_MAX), rho),
            violation=violation,
            inner_iterations=state.inner_iterations + sol.num_steps,
            inner_status=sol.status,
        )
        return (sol.params, new_lam), new_state

    def optimality(params, args: OCPArgs):
        controls, lam = params

        def lagrangian(u):
            g, cost = constraint_values(u, args)
            return cost + jnp.sum(lam * g)

        grad = jax.grad(lagrangian)(controls)
        g, _ = constraint_values(controls, args)
        return (
            controls - jnp.clip(controls - grad, args.lower, args.upper),
            lam - jnp.maximum(0.0, lam + g),
        )

    return Solver(init=init, step=step, optimality_fn=optimality, max_steps=None)
