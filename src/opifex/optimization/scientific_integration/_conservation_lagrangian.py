"""Equality-constrained minimisation by the augmented Lagrangian (method of multipliers).

One solver ``step`` is one outer iteration: an inner L-BFGS solve of the augmented
Lagrangian at fixed multipliers and penalty, then the first-order multiplier update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from opifex.optimization.core import Solver, Status, solve
from opifex.optimization.second_order.config import LBFGSConfig
from opifex.optimization.second_order.wrappers import create_lbfgs_solver

_INNER_SOLVERS = ("lbfgs",)
# Bertsekas' rule: a penalty that cut the violation by less than this factor is raised.
_SUFFICIENT_DECREASE = 0.25


class AugmentedLagrangianState(NamedTuple):
    """State of :func:`augmented_lagrangian_solver` (``m``: number of constraints)."""

    count: jax.Array  # int32 [], outer iterations taken
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], objective f at params (not the augmented Lagrangian)
    multipliers: jax.Array  # float [m], lambda, in the convention grad f + J' lambda = 0
    penalty: jax.Array  # float [], mu for the next inner solve
    constraint_norm: jax.Array  # float [], max|c(params)|
    stationarity: jax.Array  # float [], max|grad_x (f + lambda' c)| at params
    num_inner_steps: jax.Array  # int32 [], L-BFGS iterations summed over outer iterations


def _check_positive(name: str, value, lo: float = 0.0, strict: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= lo if strict else value < lo):
        rule = f"> {lo:g}" if strict else f">= {lo:g}"
        raise ValueError(f"{name} must be a finite float {rule}, got {value!r}.")
    return float(value)


def _check_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def augmented_lagrangian_solver(
    fn: Callable[[Any, Any], jax.Array],
    constraint: Callable[[Any, Any], jax.Array],
    *,
    inner: str = "lbfgs",
    penalty: float = 10.0,
    penalty_growth: float = 10.0,
    max_penalty: float = 1e8,
    tol: float = 1e-8,
    max_outer: int = 20,
    inner_max_iterations: int = 200,
    gtol: float | None = None,
    inner_gtol: float | None = None,
) -> Solver:
    """Minimise ``fn(params, args)`` subject to ``constraint(params, args) = 0``.

    Method of multipliers (Nocedal & Wright, Framework 17.3 / Alg. 17.4): with multipliers
    ``lambda`` (starting at 0) and penalty ``mu`` (starting at ``penalty``), each step

    1. minimises ``L_A(x) = f(x) + lambda' c(x) + (mu / 2) ||c(x)||^2`` over ``x`` by
       L-BFGS (:func:`~opifex.optimization.second_order.wrappers.create_lbfgs_solver`,
       ``gtol=inner_gtol``, at most ``inner_max_iterations`` iterations), warm-started at
       the current ``x``;
    2. sets ``lambda <- lambda + mu c(x)``;
    3. sets ``mu <- min(mu * penalty_growth, max_penalty)`` unless ``max|c|`` fell at least
       4-fold during the step (Bertsekas 1982, Sec. 2.2).

    Sign convention: at a solution ``grad f + J' lambda = 0`` (``J`` the Jacobian of ``c``);
    e.g. ``min x^2 + y^2`` s.t. ``x + y - 1 = 0`` has ``lambda = -1``. Since
    ``grad L_A = grad f + J' (lambda + mu c)``, the inner solver's final gradient is the
    Lagrangian gradient at the updated multipliers.

    Status: ``CONVERGED`` when ``max|c| <= tol`` and ``max|grad f + J' lambda| <= gtol``
    (default ``sqrt(tol)``: a guard that accepts an inner solve stopped by the precision
    limit of a large ``mu``; normally the inner solve reaches ``inner_gtol``, default
    ``tol``); ``MAX_STEPS`` after ``max_outer`` outer iterations; ``NONFINITE`` when an inner
    solve does (a non-finite objective or iterate is caught by
    :func:`~opifex.optimization.core.solve`, keeping the last finite iterate).

    Args:
        fn: Scalar objective ``(params, args) -> float``; ``params`` any pytree of floats.
        constraint: ``(params, args) -> vector`` (1-D, length ``m``) that must vanish.
        inner: Inner unconstrained solver; only ``"lbfgs"``.
        penalty: Initial penalty ``mu`` (> 0).
        penalty_growth: Factor (>= 1) applied to ``mu`` when the violation did not fall 4x.
        max_penalty: Cap on ``mu`` (>= ``penalty``).
        tol: Feasibility tolerance on ``max|c|`` (> 0).
        max_outer: Outer iterations before ``MAX_STEPS`` (the solver's ``max_steps``).
        inner_max_iterations: L-BFGS iterations per inner solve.
        gtol: Stationarity tolerance on the Lagrangian gradient; ``None`` means ``sqrt(tol)``.
        inner_gtol: L-BFGS gradient tolerance; ``None`` means ``tol``.

    Returns:
        A :class:`~opifex.optimization.core.Solver` whose state is
        :class:`AugmentedLagrangianState` (the multipliers are ``solution.state.multipliers``).
        It has no ``optimality_fn``, so ``solve`` does not differentiate through it.

    Raises:
        ValueError: On an invalid setting; in ``init``, if ``fn`` is not scalar or
            ``constraint`` not a non-empty vector.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> f = lambda x, a: jnp.sum(x**2)
        >>> c = lambda x, a: jnp.array([jnp.sum(x) - a])
        >>> sol = solve(augmented_lagrangian_solver(f, c, tol=1e-5), jnp.zeros(2), 1.0)
        >>> sol.params.round(3).tolist(), round(float(sol.state.multipliers[0]), 3)
        ([0.5, 0.5], -1.0)

    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., Ch. 17.3; Bertsekas,
        "Constrained Optimization and Lagrange Multiplier Methods", 1982.
    """
    if inner not in _INNER_SOLVERS:
        raise ValueError(f"inner must be one of {_INNER_SOLVERS}, got {inner!r}.")
    penalty = _check_positive("penalty", penalty)
    penalty_growth = _check_positive("penalty_growth", penalty_growth, 1.0, strict=False)
    max_penalty = _check_positive("max_penalty", max_penalty, penalty, strict=False)
    tol = _check_positive("tol", tol)
    max_outer = _check_int("max_outer", max_outer)
    inner_max_iterations = _check_int("inner_max_iterations", inner_max_iterations)
    gtol = math.sqrt(tol) if gtol is None else _check_positive("gtol", gtol)
    inner_gtol = tol if inner_gtol is None else _check_positive("inner_gtol", inner_gtol)

    def augmented(params, inner_args):
        args, lam, mu = inner_args
        c = constraint(params, args)
        return fn(params, args) + jnp.vdot(lam, c) + 0.5 * mu * jnp.vdot(c, c)

    inner_solver = create_lbfgs_solver(
        augmented, LBFGSConfig(max_iterations=inner_max_iterations, gtol=inner_gtol)
    )

    def status_of(count, cnorm, stationarity):
        done = (cnorm <= tol) & (stationarity <= gtol)
        status = jnp.where(count >= max_outer, Status.MAX_STEPS, Status.RUNNING)
        return jnp.where(done, Status.CONVERGED, status).astype(jnp.int32)

    def init(params, args) -> AugmentedLagrangianState:
        out = jax.eval_shape(fn, params, args)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"fn must return a scalar, got an output of shape {getattr(out, 'shape', out)}."
            )
        c_out = jax.eval_shape(constraint, params, args)
        c_shape = getattr(c_out, "shape", None)
        if c_shape is None or len(c_shape) != 1 or c_shape[0] == 0:
            raise ValueError(
                f"constraint must return a non-empty 1-D vector (one entry per equality), got "
                f"shape {c_shape}; wrap a scalar constraint as jnp.array([c])."
            )
        x, _ = ravel_pytree(params)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"params must be floating point, got dtype {x.dtype}.")
        dtype = x.dtype
        value, grad = jax.value_and_grad(fn)(params, args)
        c = constraint(params, args).astype(dtype)
        cnorm = jnp.max(jnp.abs(c))
        stationarity = jnp.max(jnp.abs(ravel_pytree(grad)[0]))
        return AugmentedLagrangianState(
            count=jnp.zeros((), jnp.int32),
            status=status_of(jnp.int32(0), cnorm, stationarity),
            value=value.astype(dtype),
            multipliers=jnp.zeros(c_shape, dtype),
            penalty=jnp.asarray(penalty, dtype),
            constraint_norm=cnorm,
            stationarity=stationarity.astype(dtype),
            num_inner_steps=jnp.zeros((), jnp.int32),
        )

    def step(params, state: AugmentedLagrangianState, args):
        lam, mu = state.multipliers, state.penalty
        sol = solve(
            inner_solver,
            params,
            (args, lam, mu),
            max_steps=inner_max_iterations,
            implicit_diff=False,
        )
        dtype = lam.dtype
        c = constraint(sol.params, args).astype(dtype)
        cnorm = jnp.max(jnp.abs(c))
        stationarity = jnp.max(jnp.abs(sol.state.grad)).astype(dtype)
        grow = cnorm > _SUFFICIENT_DECREASE * state.constraint_norm
        new_mu = jnp.where(grow, jnp.minimum(mu * penalty_growth, max_penalty), mu)
        count = state.count + 1
        status = status_of(count, cnorm, stationarity)
        status = jnp.where(sol.status == Status.NONFINITE, Status.NONFINITE, status)
        new_state = AugmentedLagrangianState(
            count=count,
            status=status.astype(jnp.int32),
            value=fn(sol.params, args).astype(dtype),
            multipliers=lam + mu * c,
            penalty=new_mu.astype(dtype),
            constraint_norm=cnorm,
            stationarity=stationarity,
            num_inner_steps=state.num_inner_steps + sol.num_steps,
        )
        return sol.params, new_state

    return Solver(init, step, optimality_fn=None, max_steps=max_outer)
