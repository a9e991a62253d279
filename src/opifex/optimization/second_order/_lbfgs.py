"""L-BFGS as a solver on the core protocol and as an optax gradient transformation.

Both share the two-loop recursion over fixed-size ring buffers of curvature pairs and the
line search of :mod:`opifex.optimization.second_order._linesearch`; parameters are flattened
once per step with :func:`jax.flatten_util.ravel_pytree`, so any pytree of floats works and
its dtype is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from opifex.optimization.core import Solver
from opifex.optimization.second_order._linesearch import (
    gradient_status,
    line_search,
    status_after_step,
)
from opifex.optimization.second_order.config import LBFGSConfig


class _Memory(NamedTuple):
    s: jax.Array  # float [m, n], ring buffer of steps s_k = x_{k+1} - x_k (slot order)
    y: jax.Array  # float [m, n], ring buffer of gradient changes y_k = g_{k+1} - g_k
    rho: jax.Array  # float [m], 1 / (s' y) per slot; 0 marks an empty slot
    head: jax.Array  # int32 [], slot the next accepted pair overwrites (the oldest)
    gamma: jax.Array  # float [], initial inverse-Hessian scale H_0 = gamma * I


class LBFGSState(NamedTuple):
    """State of :func:`lbfgs_solver` (``n``: number of scalars in params, ``m``: memory)."""

    count: jax.Array  # int32 [], iterations taken
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], objective at params
    grad: jax.Array  # float [n], flattened gradient at params
    memory: _Memory  # ring buffers of the last m pairs (s_k, y_k)
    stepsize: jax.Array  # float [], step accepted by the last line search
    num_fun_evals: jax.Array  # int32 [], objective evaluations
    num_grad_evals: jax.Array  # int32 [], gradient evaluations


def _validate(arguments: dict) -> None:
    """Validate a factory's arguments as an :class:`LBFGSConfig` (the factories may also be
    called directly, without a config)."""
    LBFGSConfig(**{f.name: arguments[f.name] for f in dataclasses.fields(LBFGSConfig)})


def _inverse_hessian_product(g, mem: _Memory):
    """``H g`` by the two-loop recursion (Nocedal & Wright, Alg. 7.4) over the ring buffers.

    Written as two ``lax.scan`` loops over the slots (newest first, then oldest first), which
    XLA compiles into tight loops; empty slots have ``rho = 0`` and contribute nothing.
    """
    m = mem.s.shape[0]
    newest_first = (mem.head - 1 - jnp.arange(m)) % m

    def first(q, j):
        a = mem.rho[j] * jnp.vdot(mem.s[j], q)
        return q - a * mem.y[j], a

    q, alphas = jax.lax.scan(first, g, newest_first)

    def second(r, ja):
        j, a = ja
        b = mem.rho[j] * jnp.vdot(mem.y[j], r)
        return r + (a - b) * mem.s[j], None

    r, _ = jax.lax.scan(second, mem.gamma * q, (newest_first, alphas), reverse=True)
    return r


def _direction(g, mem: _Memory):
    """Descent direction ``-H g`` and its slope, falling back to ``-g`` if not descent."""
    d = -_inverse_hessian_product(g, mem)
    slope = jnp.vdot(g, d)
    descent = slope < 0
    return jnp.where(descent, d, -g), jnp.where(descent, slope, -jnp.vdot(g, g))


def _push_pair(s, y, mem: _Memory, curvature_eps, scale_init_precond):
    """Store ``(s, y)`` over the oldest pair unless ``s'y <= curvature_eps ||s|| ||y||``
    (skipping keeps ``H`` positive definite)."""
    m = mem.s.shape[0]
    sy = jnp.vdot(s, y)
    yy = jnp.vdot(y, y)
    ok = sy > curvature_eps * jnp.sqrt(jnp.vdot(s, s) * yy)
    head = mem.head
    gamma = mem.gamma
    if scale_init_precond:
        gamma = jnp.where(ok, sy / jnp.where(ok, yy, 1.0), gamma)
    memory = _Memory(
        s=mem.s.at[head].set(jnp.where(ok, s, mem.s[head])),
        y=mem.y.at[head].set(jnp.where(ok, y, mem.y[head])),
        rho=mem.rho.at[head].set(jnp.where(ok, 1.0 / jnp.where(ok, sy, 1.0), mem.rho[head])),
        head=jnp.where(ok, (head + 1) % m, head).astype(jnp.int32),
        gamma=gamma,
    )
    return memory, ok


def _memory_init(memory_size, x, gamma) -> _Memory:
    zeros = jnp.zeros((memory_size, x.size), x.dtype)
    rho = jnp.zeros((memory_size,), x.dtype)
    return _Memory(zeros, zeros, rho, jnp.zeros((), jnp.int32), gamma)


def _first_gamma(g, scale_init_precond):
    # As optax: the first step is capped to the unit ball, so its line search starts sensibly.
    if not scale_init_precond:
        return jnp.ones((), g.dtype)
    norm = jnp.sqrt(jnp.vdot(g, g))
    return jnp.where(norm > 0, jnp.minimum(1.0, 1.0 / norm), 1.0).astype(g.dtype)


def lbfgs_solver(
    fn: Callable[[Any, Any], jax.Array],
    *,
    memory_size: int = 10,
    max_iterations: int = 1000,
    gtol: float = 1e-8,
    ftol: float = 0.0,
    learning_rate: float = 1.0,
    linesearch: str = "zoom",
    max_linesearch_steps: int = 30,
    c1: float = 1e-4,
    c2: float = 0.9,
    curvature_eps: float = 1e-12,
    scale_init_precond: bool = True,
) -> Solver:
    """L-BFGS minimising the scalar ``fn(params, args)`` (Nocedal & Wright, Alg. 7.4/7.5).

    Each iteration takes ``x+ = x - a H g`` where ``H g`` comes from the two-loop recursion
    over the last ``memory_size`` pairs ``s = x+ - x``, ``y = g+ - g`` with
    ``H_0 = gamma I``, ``gamma = s'y / y'y`` of the newest pair (``min(1, 1/||g||)`` before
    any pair), and ``a`` from a strong-Wolfe line search starting at ``learning_rate``. A pair
    with ``s'y <= curvature_eps ||s|| ||y||`` is skipped so ``H`` stays positive definite.

    Stops with ``CONVERGED`` when ``max|g| <= gtol`` or (``ftol > 0``) when the relative
    reduction ``(f - f+) / max(|f|, |f+|, 1) <= ftol``; with ``LINESEARCH_FAILED`` when no
    step decreases ``f`` (``CONVERGED`` instead if ``max|g| <= sqrt(eps) max(1, |f|)``, the
    gradient being as small as precision allows); with ``MAX_STEPS`` after
    ``max_iterations`` iterations. Arguments are the fields of :class:`LBFGSConfig`.

    Args:
        fn: Scalar objective ``(params, args) -> float``; ``params`` any pytree of floats.

    Returns:
        A :class:`~opifex.optimization.core.Solver` whose state is :class:`LBFGSState`.

    Raises:
        ValueError: On an invalid setting; in ``init``, if ``fn`` is not scalar.
    """
    _validate(locals())

    def flat_value_and_grad(unravel, args):
        def f(xf):
            return fn(unravel(xf), args)

        return jax.value_and_grad(f)

    def status_of(count, value, grad):
        return gradient_status(count, grad, gtol=gtol, max_iterations=max_iterations)

    def init(params, args) -> LBFGSState:
        out = jax.eval_shape(fn, params, args)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"fn must return a scalar, got an output of shape {getattr(out, 'shape', out)}; "
                "reduce it (e.g. with jnp.sum) or use a least-squares solver for residuals."
            )
        x, unravel = ravel_pytree(params)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"params must be floating point, got dtype {x.dtype}.")
        value, grad = flat_value_and_grad(unravel, args)(x)
        value = value.astype(x.dtype)
        one = jnp.ones((), jnp.int32)
        return LBFGSState(
            count=jnp.zeros((), jnp.int32),
            status=status_of(jnp.int32(0), value, grad),
            value=value,
            grad=grad,
            memory=_memory_init(memory_size, x, _first_gamma(grad, scale_init_precond)),
            stepsize=jnp.zeros((), x.dtype),
            num_fun_evals=one,
            num_grad_evals=one,
        )

    def step(params, state: LBFGSState, args):
        x, unravel = ravel_pytree(params)
        g = state.grad
        d, slope = _direction(g, state.memory)
        ls = line_search(
            flat_value_and_grad(unravel, args),
            x,
            state.value,
            g,
            d,
            initial_step=learning_rate,
            slope=slope,
            c1=c1,
            c2=c2,
            max_steps=max_linesearch_steps,
            method=linesearch,
        )
        s = ls.stepsize * d
        memory, _ = _push_pair(s, ls.grad - g, state.memory, curvature_eps, scale_init_precond)
        count = state.count + 1
        status = status_after_step(
            ls, state.value, g, count, gtol=gtol, ftol=ftol, max_iterations=max_iterations
        )
        new_state = LBFGSState(
            count=count,
            status=status,
            value=ls.value,
            grad=ls.grad,
            memory=memory,
            stepsize=ls.stepsize,
            num_fun_evals=state.num_fun_evals + ls.num_evals,
            num_grad_evals=state.num_grad_evals + ls.num_evals,
        )
        return unravel(x + s), new_state

    return Solver(init, step, optimality_fn=jax.grad(fn), max_steps=max_iterations)


class ScaleByLBFGSDirectionState(NamedTuple):
    """State of :func:`scale_by_lbfgs_direction` (``n`` scalars in params, memory ``m``)."""

    count: jax.Array  # int32 [], updates made
    prev_params: jax.Array  # float [n], flattened params at the previous update
    prev_updates: jax.Array  # float [n], flattened gradient at the previous update
    memory: _Memory  # ring buffers of the last m pairs (s, y)


def scale_by_lbfgs_direction(
    memory_size: int = 10,
    scale_init_precond: bool = True,
    curvature_eps: float = 1e-12,
    gtol: float = 0.0,
    max_iterations: int | None = None,
) -> optax.GradientTransformation:
    """Turn the gradient into the L-BFGS descent direction ``-H g`` (pairs skipped as above).

    The direction is zero (so a following line search makes no evaluation) once
    ``max|g| <= gtol`` or after ``max_iterations`` updates.
    """

    def init(params):
        x, _ = ravel_pytree(params)
        return ScaleByLBFGSDirectionState(
            count=jnp.zeros((), jnp.int32),
            prev_params=jnp.zeros_like(x),
            prev_updates=jnp.zeros_like(x),
            memory=_memory_init(memory_size, x, jnp.ones((), x.dtype)),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("the L-BFGS transformation needs `params` in update().")
        shapes = jax.tree.map(jnp.shape, (updates, params))
        if jax.tree.structure(updates) != jax.tree.structure(params) or shapes[0] != shapes[1]:
            raise ValueError(
                "the gradient must have the structure and shapes of params; got gradient "
                f"shapes {shapes[0]} for params shapes {shapes[1]}."
            )
        g, unravel = ravel_pytree(updates)
        x, _ = ravel_pytree(params)
        g = g.astype(x.dtype)
        started = state.count > 0
        memory, _ = _push_pair(
            jnp.where(started, x - state.prev_params, 0.0),
            jnp.where(started, g - state.prev_updates, 0.0),
            state.memory,
            curvature_eps,
            scale_init_precond,
        )
        gamma = jnp.where(started, memory.gamma, _first_gamma(g, scale_init_precond))
        memory = memory._replace(gamma=gamma)
        d, _ = _direction(g, memory)
        stop = jnp.max(jnp.abs(g)) <= gtol
        if max_iterations is not None:
            stop = stop | (state.count >= max_iterations)
        d = jnp.where(stop, 0.0, d)
        new_state = ScaleByLBFGSDirectionState(
            count=state.count + 1,
            prev_params=x,
            prev_updates=g,
            memory=memory,
        )
        return unravel(d), new_state

    return optax.GradientTransformation(init, update)


class ScaleByLinesearchState(NamedTuple):
    """State of :func:`scale_by_linesearch`; ``value``/``grad`` feed
    ``optax.value_and_grad_from_state``."""

    stepsize: jax.Array  # float [], step accepted by the last line search
    value: jax.Array  # float [], objective at the accepted point (inf before the first)
    grad: Any  # pytree like params, gradient at the accepted point
    num_evals: jax.Array  # int32 [], evaluations spent by the last line search
    success: jax.Array  # bool [], the last line search found sufficient decrease


def scale_by_linesearch(
    learning_rate: float = 1.0,
    linesearch: str = "zoom",
    max_linesearch_steps: int = 30,
    c1: float = 1e-4,
    c2: float = 0.9,
) -> optax.GradientTransformationExtraArgs:
    """Scale a descent direction by a line-search step (``update`` needs ``value``, ``grad``,
    ``value_fn``; other keyword arguments are passed on to ``value_fn``)."""

    def init(params):
        x, _ = ravel_pytree(params)
        return ScaleByLinesearchState(
            stepsize=jnp.zeros((), x.dtype),
            value=jnp.asarray(jnp.inf, x.dtype),
            grad=jax.tree.map(jnp.zeros_like, params),
            num_evals=jnp.zeros((), jnp.int32),
            success=jnp.ones((), bool),
        )

    def update(updates, state, params=None, *, value, grad, value_fn, **extra_args):
        if params is None:
            raise ValueError("the L-BFGS transformation needs `params` in update().")
        x, unravel = ravel_pytree(params)
        d, _ = ravel_pytree(updates)
        g, _ = ravel_pytree(grad)

        def value_and_grad(xf):
            return jax.value_and_grad(lambda z: value_fn(unravel(z), **extra_args))(xf)

        ls = line_search(
            value_and_grad,
            x,
            value,
            g.astype(x.dtype),
            d.astype(x.dtype),
            initial_step=learning_rate,
            c1=c1,
            c2=c2,
            max_steps=max_linesearch_steps,
            method=linesearch,
        )
        step = jax.tree.map(lambda u: (ls.stepsize * u).astype(u.dtype), updates)
        new_state = ScaleByLinesearchState(
            stepsize=ls.stepsize,
            value=ls.value,
            grad=unravel(ls.grad),
            num_evals=ls.num_evals,
            success=ls.success,
        )
        return step, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def lbfgs_transform(
    *,
    memory_size: int = 10,
    max_iterations: int = 1000,
    gtol: float = 1e-8,
    ftol: float = 0.0,
    learning_rate: float = 1.0,
    linesearch: str = "zoom",
    max_linesearch_steps: int = 30,
    c1: float = 1e-4,
    c2: float = 0.9,
    curvature_eps: float = 1e-12,
    scale_init_precond: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """L-BFGS as ``optax.chain(scale_by_lbfgs_direction, scale_by_linesearch)``.

    The update rule is :func:`lbfgs_solver`'s; ``update(grad, state, params, value=...,
    grad=..., value_fn=...)`` takes the same extra arguments as ``optax.lbfgs``, and
    ``optax.value_and_grad_from_state`` reuses the line search's value and gradient. The
    caller owns the loop; once ``max|g| <= gtol`` or after ``max_iterations`` updates the
    transformation returns zero updates without evaluating. ``ftol`` is left to the
    caller's loop (it needs the previous value, which the caller holds).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.
    """
    _validate(locals())
    return optax.chain(
        scale_by_lbfgs_direction(
            memory_size, scale_init_precond, curvature_eps, gtol, max_iterations
        ),
        scale_by_linesearch(learning_rate, linesearch, max_linesearch_steps, c1, c2),
    )
