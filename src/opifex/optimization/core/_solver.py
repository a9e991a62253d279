"""The solver protocol: ``Solver(init, step)``, one ``solve`` driver, one ``Solution``.

Every iterative solver in opifex is a pair of pure functions::

    state = init(params, args)
    params, state = step(params, state, args)

whose state is a ``NamedTuple`` of arrays carrying at least ``count`` (int32 steps taken),
``status`` (int32 :class:`Status`) and ``value`` (the scalar objective at ``params``).
``step`` sets ``status`` to a terminal code when its own tests are met; :func:`solve` runs it
inside ``lax.while_loop`` until then, guards against non-finite iterates, and packs a
:class:`Solution`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.core._implicit import attach_implicit_grad
from opifex.optimization.core._status import SolverError, Status
from opifex.optimization.core._tree import tree_all_finite

DEFAULT_MAX_STEPS = 256
Params = Any
Args = Any
State = Any


class Solver(NamedTuple):
    """A solver as two pure functions, plus the optimality condition of its solutions.

    Attributes:
        init: ``(params, args) -> state``; validates shapes and evaluates the objective.
        step: ``(params, state, args) -> (params, state)``; one iteration.
        optimality_fn: ``(params, args) -> pytree`` that vanishes at a solution (e.g. the
            gradient). When given, :func:`solve` differentiates the solution w.r.t. ``args``
            implicitly. ``None`` disables differentiation through ``solve``.
        max_steps: The solver's own step budget (its config's ``max_iterations``), used by
            :func:`solve` when the caller gives none.
    """

    init: Callable[[Params, Args], State]
    step: Callable[[Params, State, Args], tuple[Params, State]]
    optimality_fn: Callable[[Params, Args], Params] | None = None
    max_steps: int | None = None


class Solution(NamedTuple):
    """Result of :func:`solve`.

    Attributes:
        params: Final iterate (the last finite one if the solve hit non-finite values).
        value: Objective at ``params`` (scalar; for least squares ``0.5 * ||r||^2``).
        status: int32 :class:`Status` code.
        num_steps: int32 number of ``step`` calls made.
        state: Final solver state, with algorithm-specific diagnostics (evaluation counts...).
    """

    params: Params
    value: jax.Array
    status: jax.Array
    num_steps: jax.Array
    state: State

    @property
    def converged(self) -> bool | np.ndarray:
        """Whether the solve converged (an array of bools for a batched solve)."""
        ok = np.asarray(self.status) == Status.CONVERGED
        return bool(ok) if ok.ndim == 0 else ok

    def raise_for_status(self) -> Solution:
        """Raise :class:`SolverError` unless every solve in ``self`` converged.

        Returns:
            ``self``, so the call can be chained.

        Raises:
            SolverError: Naming the status, the step count and what to try.
        """
        status = np.asarray(self.status).reshape(-1)
        bad = np.flatnonzero(status != Status.CONVERGED)
        if bad.size:
            i = int(bad[0])
            steps = np.asarray(self.num_steps).reshape(-1)[i]
            value = np.asarray(self.value).reshape(-1)[i]
            raise SolverError(int(status[i]), int(steps), float(value))
        return self


def _check_state(state) -> None:
    missing = [f for f in ("count", "status", "value") if not hasattr(state, f)]
    if missing:
        raise TypeError(
            f"solver state {type(state).__name__} lacks field(s) {missing}; every solver state "
            "must carry `count`, `status` and `value`."
        )


def _loop(solver: Solver, params, state, args, stop_count):
    running = jnp.asarray(Status.RUNNING, jnp.int32)
    nonfinite = jnp.asarray(Status.NONFINITE, jnp.int32)

    def cond(carry):
        _, s = carry
        return (s.status == running) & (s.count < stop_count)

    def body(carry):
        p, s = carry
        p_new, s_new = solver.step(p, s, args)
        ok = jnp.isfinite(s_new.value) & tree_all_finite(p_new)
        # Keep the last finite iterate and its state; only the status and count move on.
        # A cond (not a leafwise select) so the common path copies no buffers.
        return jax.lax.cond(
            ok,
            lambda: (p_new, s_new),
            lambda: (p, s._replace(status=nonfinite, count=s_new.count)),
        )

    return jax.lax.while_loop(cond, body, (params, state))


@functools.partial(jax.jit, static_argnames=("solver", "max_steps"))
def _run(solver: Solver, params, args, max_steps: int):
    state = solver.init(params, args)
    _check_state(state)
    running = jnp.asarray(Status.RUNNING, jnp.int32)
    ok0 = jnp.isfinite(state.value) & tree_all_finite(params)
    state = state._replace(status=jnp.where(ok0, state.status, jnp.int32(Status.NONFINITE)))
    params, state = _loop(solver, params, state, args, max_steps)
    status = jnp.where(state.status == running, jnp.int32(Status.MAX_STEPS), state.status)
    state = state._replace(status=status)
    return params, state


@functools.partial(jax.jit, static_argnames=("solver",))
def _advance(solver: Solver, params, state, args, num_steps):
    return _loop(solver, params, state, args, state.count + num_steps)


def advance(solver: Solver, params: Params, state, args: Args = None, *, num_steps: int = 1):
    """Take up to ``num_steps`` more steps of ``solver`` from ``(params, state)``.

    The chunked form of :func:`solve` for long runs that report progress between chunks:
    the same compiled loop and non-finite guard, stopping early when the status leaves
    ``RUNNING``; a state still running afterwards keeps status ``RUNNING``. ``num_steps`` is
    a traced argument, so chunks of any length share one compilation.

    Args:
        solver: A :class:`Solver`.
        params: Current iterate.
        state: Current state (from ``solver.init`` or a previous ``advance``).
        args: Problem data.
        num_steps: Most steps to take (>= 0).

    Returns:
        ``(params, state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization.core._examples import gradient_descent
        >>> gd = gradient_descent(lambda x, a: jnp.sum((x - a) ** 2), gtol=1e-5)
        >>> x, a = jnp.zeros(2), jnp.array([1.0, -2.0])
        >>> state = gd.init(x, a)
        >>> for _ in range(3):
        ...     x, state = advance(gd, x, state, a, num_steps=10)
        >>> int(state.count)
        30
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an opifex Solver(init, step), got {type(solver)}.")
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}.")
    _check_state(state)
    return _advance(solver, params, state, args, jnp.asarray(num_steps, jnp.int32))


def solve(
    solver: Solver,
    params: Params,
    args: Args = None,
    *,
    max_steps: int | None = None,
    implicit_diff: bool = True,
    throw: bool = False,
) -> Solution:
    """Run ``solver`` from ``params`` until it terminates or ``max_steps`` steps are taken.

    The loop is a single ``lax.while_loop``, compiled once per solver, ``max_steps`` and
    argument shapes; ``solve`` can itself be called under ``jit``, ``vmap`` and ``grad``.
    A step producing a non-finite value or iterate ends the solve with status ``NONFINITE``
    and the previous (finite) iterate.

    Args:
        solver: A :class:`Solver`.
        params: Initial guess (any pytree of arrays).
        args: Problem data passed to the objective at call time (any pytree).
        max_steps: Step budget; a solve still running after it gets status ``MAX_STEPS``.
            ``None`` uses ``solver.max_steps`` (the config's ``max_iterations``), or
            :data:`DEFAULT_MAX_STEPS` for a solver without one.
        implicit_diff: Differentiate the returned params w.r.t. ``args`` by the implicit
            function theorem on ``solver.optimality_fn`` (never by unrolling).
        throw: Call :meth:`Solution.raise_for_status` before returning (host only, not
            under ``jit``).

    Returns:
        A :class:`Solution`.

    Raises:
        ValueError: If ``max_steps`` is negative.
        SolverError: If ``throw`` and the solve did not converge.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization.core import Solver, solve
        >>> from opifex.optimization.core._examples import gradient_descent
        >>> gd = gradient_descent(lambda x, a: jnp.sum((x - a) ** 2), gtol=1e-5)
        >>> sol = solve(gd, jnp.zeros(2), jnp.array([1.0, -2.0]), max_steps=500)
        >>> sol.params.round(4).tolist(), sol.converged
        ([1.0, -2.0], True)
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an opifex Solver(init, step), got {type(solver)}.")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS if solver.max_steps is None else solver.max_steps
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}.")
    params_out, state = _run(
        solver, jax.lax.stop_gradient(params), jax.lax.stop_gradient(args), int(max_steps)
    )
    if implicit_diff and solver.optimality_fn is not None:
        params_out = attach_implicit_grad(solver.optimality_fn, params_out, args)
    sol = Solution(params_out, state.value, state.status, state.count, state)
    if throw:
        sol.raise_for_status()
    return sol
