"""Gauss-Newton with an optional Armijo backtracking line search."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from opifex.optimization.core import Solver, Status
from opifex.optimization.second_order import _least_squares as lsq

# Sufficient-decrease constant of the Armijo condition (Nocedal & Wright, Sec. 3.1).
_ARMIJO_C1 = 1e-4


class GaussNewtonState(NamedTuple):
    count: jax.Array  # int32 [], steps taken
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], 0.5 * ||r||^2 at params
    residual: jax.Array  # float [m], r at params
    jac: jax.Array  # float [m, n], Jacobian of r at params
    grad: jax.Array  # float [n], J'r at params
    factor: jax.Array  # float [n, n], R of J = QR ("qr") or J'J ("cholesky")
    rhs: jax.Array  # float [n], Q'r ("qr") or J'r ("cholesky")
    step_size: jax.Array  # float [], step length t of the last step (1 = full GN step)
    num_fun_evals: jax.Array  # int32 [], residual evaluations (x0 and line-search trials)
    num_jac_evals: jax.Array  # int32 [], Jacobian evaluations (x0 and accepted points)


def gauss_newton(
    residual_fn: Callable,
    *,
    max_iterations: int = 100,
    ftol: float = 1e-12,
    xtol: float = 1e-12,
    gtol: float = 1e-12,
    linear_solver: str = "qr",
    jacobian: str = "auto",
    line_search: bool = True,
    max_linesearch_steps: int = 30,
) -> Solver:
    """Gauss-Newton for ``min_x 0.5 ||r(x, args)||^2``.

    Each step solves the linear least-squares problem ``min_p ||J p + r||`` (QR of ``J``, or
    Cholesky of ``J'J`` with a QR fallback; Nocedal & Wright, Sec. 10.3) and moves to
    ``x + t p``. With ``line_search``, ``t`` halves from 1 until the Armijo condition
    ``f(x + t p) <= f(x) + 1e-4 t (J'r)'p`` holds; a search that runs out of halvings ends
    with ``LINESEARCH_FAILED``, or ``CONVERGED`` when the predicted reduction
    ``0.5 ||J p||^2`` is already below ``ftol f`` (rounding noise). Without it the full
    step is always taken (pure Gauss-Newton: fast near a small-residual solution, may
    diverge elsewhere). Converged when ``|f_k - f_{k+1}| <= ftol f_k``,
    ``||t p|| <= xtol (xtol + ||x||)`` or ``max |J'r| <= gtol``.

    Args:
        residual_fn: ``(params, args) -> r``, a 1-D residual vector.
        max_iterations: Steps after which the solver stops with ``MAX_STEPS``.
        ftol: Relative-reduction tolerance.
        xtol: Relative step tolerance.
        gtol: Absolute gradient tolerance.
        linear_solver: ``"qr"`` or ``"cholesky"``.
        jacobian: ``"fwd"``, ``"rev"`` or ``"auto"`` (forward when ``m >= n``).
        line_search: Backtrack along the Gauss-Newton step.
        max_linesearch_steps: Halvings a line search may spend.

    Returns:
        A :class:`~opifex.optimization.core.Solver` whose state is a
        :class:`GaussNewtonState`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order._gauss_newton import gauss_newton
        >>> res = lambda p, a: jnp.array([p[0] + p[1] - a, p[0] - p[1], p[0] * p[1]])
        >>> sol = solve(gauss_newton(res), jnp.array([1.0, 1.0]), 0.0)
        >>> sol.params.round(6).tolist(), sol.converged
        ([0.0, 0.0], True)

    References:
        J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Sec. 10.3 (2006).
    """
    lsq.check_choices(linear_solver=linear_solver, jacobian=jacobian)

    def linearise(prob, x, args):
        residual, jac = prob.value_and_jac(x, args)
        factor, rhs = lsq.factorize(jac, residual, linear_solver)
        return residual, jac, jac.T @ residual, factor, rhs

    def init(params, args) -> GaussNewtonState:
        prob = lsq.flatten_problem(residual_fn, params, args, jacobian)
        x, _ = ravel_pytree(params)
        residual, jac, grad, factor, rhs = linearise(prob, x, args)
        value = 0.5 * residual @ residual
        done = (value == 0) | (jnp.max(jnp.abs(grad), initial=0.0) <= gtol)
        return GaussNewtonState(
            count=jnp.int32(0),
            status=jnp.where(done, Status.CONVERGED, Status.RUNNING).astype(jnp.int32),
            value=value,
            residual=residual,
            jac=jac,
            grad=grad,
            factor=factor,
            rhs=rhs,
            step_size=jnp.ones((), prob.dtype),
            num_fun_evals=jnp.int32(1),
            num_jac_evals=jnp.int32(1),
        )

    def step(params, state: GaussNewtonState, args):
        prob = lsq.flatten_problem(residual_fn, params, args, jacobian)
        x, unravel = ravel_pytree(params)
        dt = x.dtype
        ones = jnp.ones_like(x)
        p = lsq.damped_step(
            state.factor,
            state.rhs,
            state.jac,
            state.residual,
            ones,
            jnp.zeros((), dt),
            linear_solver,
        )
        # A rank-deficient J leaves the triangular solve singular; the minimum-norm
        # least-squares step (SVD) still moves along the directions J does see.
        p = jax.lax.cond(
            jnp.all(jnp.isfinite(p)),
            lambda: p,
            lambda: jnp.linalg.lstsq(state.jac, -state.residual)[0].astype(dt),
        )
        slope = state.grad @ p

        def trial(t):
            r = prob.fun(x + t * p, args)
            return 0.5 * r @ r

        def armijo(t, value):
            return value <= state.value + _ARMIJO_C1 * t * slope

        one = jnp.ones((), dt)
        if line_search:

            def cond(carry):
                t, f, k = carry
                return ~armijo(t, f) & (k <= max_linesearch_steps)

            def body(carry):
                t, _, k = carry
                return 0.5 * t, trial(0.5 * t), k + 1

            t, value_new, evals = jax.lax.while_loop(cond, body, (one, trial(one), jnp.int32(1)))
            ok = armijo(t, value_new)
        else:
            t, value_new, evals = one, trial(one), jnp.int32(1)
            ok = jnp.asarray(True)
        x_new = x + t * p

        def moved(_):
            return linearise(prob, x_new, args)

        def stayed(_):
            return state.residual, state.jac, state.grad, state.factor, state.rhs

        residual, jac, grad, factor, rhs = jax.lax.cond(ok, moved, stayed, None)
        jac_ok = jnp.all(jnp.isfinite(jac)) & jnp.all(jnp.isfinite(factor))
        safe = jnp.where(state.value > 0, state.value, 1.0)
        ftol_ok = ok & (jnp.abs(state.value - value_new) <= ftol * safe)
        xtol_ok = ok & (jnp.linalg.norm(t * p) <= xtol * (xtol + jnp.linalg.norm(x_new)))
        gtol_ok = ok & (jnp.max(jnp.abs(grad), initial=0.0) <= gtol)
        # A failed search at the noise floor: the model promises less than ftol.
        noise = ~ok & (-0.5 * slope <= ftol * safe)
        converged = ftol_ok | xtol_ok | gtol_ok | noise | (ok & (value_new == 0))
        count = state.count + 1
        status = jnp.where(
            converged,
            Status.CONVERGED,
            jnp.where(
                ~ok,
                Status.LINESEARCH_FAILED,
                jnp.where(count >= max_iterations, Status.MAX_STEPS, Status.RUNNING),
            ),
        )
        # A non-finite value is left to the driver (status NONFINITE, last finite iterate);
        # a non-finite Jacobian at a finite point ends the solve here.
        status = jnp.where(ok & jnp.isfinite(value_new) & ~jac_ok, Status.NONFINITE, status)
        take = ok & jac_ok
        # A full step (no line search) into NaN is handed to the driver as is.
        blown_up = ok & ~jnp.isfinite(value_new)
        new_state = GaussNewtonState(
            count=count,
            status=status.astype(jnp.int32),
            value=jnp.where(take | blown_up, value_new, state.value),
            residual=jnp.where(take, residual, state.residual),
            jac=jnp.where(take, jac, state.jac),
            grad=jnp.where(take, grad, state.grad),
            factor=jnp.where(take, factor, state.factor),
            rhs=jnp.where(take, rhs, state.rhs),
            step_size=t,
            num_fun_evals=state.num_fun_evals + evals,
            num_jac_evals=state.num_jac_evals + ok.astype(jnp.int32),
        )
        return unravel(jnp.where(take | blown_up, x_new, x)), new_state

    return Solver(init, step, lsq.least_squares_optimality(residual_fn), max_steps=max_iterations)


__all__ = ["GaussNewtonState", "gauss_newton"]
