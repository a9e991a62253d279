"""Parametric (amortized) solvers: networks from problem parameters to solutions.

A parametric problem family ``min_y f(y, x)`` (subject to constraints depending on ``x``) is
solved for many ``x`` at once by a network trained self-supervised on ``f`` plus a violation
penalty (no solver labels), followed by an optional refinement (a few steps of a real solver)
and an optional exact projection.

* :class:`ParametricSolver` / :class:`ParametricSolverConfig`: the general solver.
* :func:`solver_refinement`: a refinement stage running any opifex ``Solver`` for a few steps.
* :class:`DualQPSolver` / :class:`DualQPConfig`: the exactly feasible pipeline for the
  parametric QP ``min 1/2 y'Qy + p'y, A y = x, G y <= h`` (dual network, batched ADMM,
  ratio-test projection, certified dual bound).
* :func:`dc3_solver`: DC3 (Donti, Rolnick & Kolter 2021) for the same QP, as a comparison.
"""

from __future__ import annotations

from collections.abc import Callable

from opifex.optimization.core import Solver, solve
from opifex.optimization.l2o._parametric_core import (
    MLP,
    ParametricSolver,
    ParametricSolverConfig,
    TrainingHistory,
)
from opifex.optimization.l2o._parametric_dc3 import dc3_solver
from opifex.optimization.l2o._parametric_qp import (
    DualQPConfig,
    DualQPSolver,
    QPSolution,
    ReducedQP,
    dual_function,
    reduce_qp,
)

__all__ = [
    "MLP",
    "DualQPConfig",
    "DualQPSolver",
    "ParametricSolver",
    "ParametricSolverConfig",
    "QPSolution",
    "ReducedQP",
    "TrainingHistory",
    "dc3_solver",
    "dual_function",
    "reduce_qp",
    "solver_refinement",
]


def solver_refinement(solver: Solver, *, max_steps: int) -> Callable:
    """A ``refine`` stage for :class:`ParametricSolver`: ``max_steps`` steps of ``solver``.

    The solver's function (objective, or residual for Gauss-Newton / Levenberg-Marquardt) is
    called as ``fn(y, (x, data))``; the network's answer is the starting point, so a handful
    of steps of a fast local method usually finishes what the network began.

    Args:
        solver: Any opifex :class:`~opifex.optimization.core.Solver`.
        max_steps: Step budget of the refinement (>= 1).

    Returns:
        ``refine(y, x, data) -> y``.

    Raises:
        ValueError: If ``max_steps`` is not an int >= 1.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization.second_order import create_gauss_newton_solver
        >>> from opifex.optimization.l2o.parametric_solver import solver_refinement
        >>> residual = lambda y, args: y - args[0]
        >>> refine = solver_refinement(create_gauss_newton_solver(residual), max_steps=5)
        >>> y = refine(jnp.zeros(2), jnp.array([1.0, -2.0]), None)
        >>> [round(float(v), 4) for v in y]
        [1.0, -2.0]
    """
    if not (isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps >= 1):
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}.")

    def refine(y, x, data):
        return solve(solver, y, (x, data), max_steps=max_steps, implicit_diff=False).params

    return refine
