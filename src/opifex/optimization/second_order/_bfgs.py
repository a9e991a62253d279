"""Dense BFGS, optionally self-scaled, as a solver on the core protocol.

For models of up to a few thousand parameters (the usual PINN) the dense inverse-Hessian
approximation costs a few ``n^2`` flops per iteration, small next to one evaluation of a
physics-informed loss, and it converges far further than L-BFGS: it keeps all the curvature
seen, not the last ``m`` pairs. The line search is the strong-Wolfe zoom shared with L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from opifex.optimization.core import Solver
from opifex.optimization.second_order._linesearch import (
    gradient_status,
    line_search,
    status_after_step,
)
from opifex.optimization.second_order.config import BFGSConfig


class BFGSState(NamedTuple):
    """State of :func:`bfgs_solver` (``n``: number of scalars in params)."""

    count: jax.Array  # int32 [], iterations taken
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], objective at params
    grad: jax.Array  # float [n], flattened gradient at params
    inverse_hessian: jax.Array  # float [n, n], symmetric positive definite approximation H
    hg: jax.Array  # float [n], H @ grad (so each step needs one product with H, not three)
    stepsize: jax.Array  # float [], step accepted by the last line search
    num_fun_evals: jax.Array  # int32 [], objective (and gradient) evaluations
    num_skipped: jax.Array  # int32 [], updates skipped for lack of curvature


def _correction(s, y, hy, g, stepsize, self_scaling, curvature_eps):
    """The (self-scaled) BFGS update as ``H+ = H / tau + U diag(c) U'`` with ``U = [Hy, v, s]``.

    Needs only ``Hy``, not ``H``. Returns ``(tau, U [n, 3], c [3], ok)``; a pair failing the
    curvature test has ``tau = 1`` and ``c = 0`` (no update).
    """
    sy = jnp.vdot(s, y)
    yhy = jnp.vdot(y, hy)
    ok = sy > curvature_eps * jnp.sqrt(jnp.vdot(s, s) * jnp.vdot(y, y))
    sy_safe = jnp.where(ok, sy, 1.0)
    yhy_safe = jnp.where(ok & (yhy > 0), yhy, 1.0)
    # Oren-Luenberger scaling restricted as in Al-Baali (1998): tau = min(1, s'y / s'Bs) with
    # s'Bs = -a s'g, since s = -a H g and B = H^-1. tau < 1 enlarges H where the model
    # overestimates curvature.
    sbs = -stepsize * jnp.vdot(s, g)
    tau = jnp.where(sbs > 0, jnp.minimum(1.0, sy / jnp.where(sbs > 0, sbs, 1.0)), 1.0)
    tau = jnp.where(self_scaling & ok, tau, 1.0)
    v = s / sy_safe - hy / yhy_safe
    coef = jnp.stack(
        [
            jnp.where(ok, -1.0 / (tau * yhy_safe), 0.0),
            jnp.where(ok, yhy / tau, 0.0),
            jnp.where(ok, 1.0 / sy_safe, 0.0),
        ]
    )
    return tau, jnp.stack([hy, v, s], axis=1), coef, ok


def _apply_correction(h, tau, u, coef):
    # One pass over the n x n matrix. The update is symmetric in exact arithmetic; an explicit
    # re-symmetrisation (a transpose) would cost more than the rest of the step.
    return h / tau + (u * coef) @ u.T


def _update(h, s, y, g, stepsize, self_scaling, curvature_eps):
    """One (self-scaled) BFGS update of the inverse Hessian ``h`` with the pair ``(s, y)``."""
    tau, u, coef, ok = _correction(s, y, h @ y, g, stepsize, self_scaling, curvature_eps)
    return _apply_correction(h, tau, u, coef), ok


def bfgs_solver(
    fn: Callable[[Any, Any], jax.Array],
    *,
    max_iterations: int = 1000,
    gtol: float = 1e-8,
    ftol: float = 0.0,
    self_scaling: bool = True,
    max_linesearch_steps: int = 30,
    c1: float = 1e-4,
    c2: float = 0.9,
    curvature_eps: float = 1e-12,
) -> Solver:
    """BFGS with a dense inverse Hessian minimising the scalar ``fn(params, args)``.

    Each iteration takes ``x+ = x - a H g`` with ``a`` from a strong-Wolfe line search
    (first trial 1) and updates ``H`` with ``s = x+ - x``, ``y = g+ - g`` (Nocedal & Wright,
    eq. 6.17). The first update scales ``H_0 = (s'y / y'y) I`` (eq. 6.20). With
    ``self_scaling`` every update is the self-scaled form

        ``H+ = (1/tau) [H - H y y' H / y'Hy + (y'Hy) v v'] + s s' / s'y``,
        ``v = s / s'y - H y / y'Hy``, ``tau = min(1, s'y / s'Bs)``

    (Oren & Luenberger 1974 with Al-Baali's 1998 restriction ``tau <= 1``), which keeps ``H``
    from shrinking when the loss is far from quadratic, as in the self-scaled quasi-Newton
    PINN training of Urbán, Stefanou & Pons (2025). Pairs with
    ``s'y <= curvature_eps ||s|| ||y||`` are skipped, keeping ``H`` positive definite.

    Stops like :func:`~opifex.optimization.second_order.wrappers.create_lbfgs_solver`:
    ``CONVERGED`` on ``max|g| <= gtol`` or a relative reduction below ``ftol``,
    ``LINESEARCH_FAILED`` when no step decreases ``fn``, ``MAX_STEPS`` after
    ``max_iterations``. Memory is ``n^2`` floats: use L-BFGS beyond ~20,000 parameters.

    Args:
        fn: Scalar objective ``(params, args) -> float``; ``params`` any pytree of floats.
        max_iterations: Iterations before ``MAX_STEPS``.
        gtol: Gradient max-norm tolerance.
        ftol: Relative-reduction tolerance (0 disables it).
        self_scaling: Use the self-scaled update above instead of plain BFGS.
        max_linesearch_steps: Evaluations one line search may spend.
        c1: Sufficient-decrease constant.
        c2: Strong-Wolfe curvature constant.
        curvature_eps: Skip threshold of the curvature test.

    Returns:
        A :class:`~opifex.optimization.core.Solver` whose state is :class:`BFGSState`.

    Raises:
        ValueError: In ``init``, if ``fn`` does not return a scalar.

    References:
        Nocedal & Wright, Numerical Optimization (2006), Sec. 6.1. Al-Baali, "Numerical
        experience with a class of self-scaling quasi-Newton algorithms", JOTA 96 (1998).
    """
    BFGSConfig(**{k: v for k, v in locals().items() if k != "fn"})

    def flat_value_and_grad(unravel, args):
        return jax.value_and_grad(lambda xf: fn(unravel(xf), args))

    def status_of(count, grad):
        return gradient_status(count, grad, gtol=gtol, max_iterations=max_iterations)

    def init(params, args) -> BFGSState:
        out = jax.eval_shape(fn, params, args)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"fn must return a scalar, got an output of shape {getattr(out, 'shape', out)}."
            )
        x, unravel = ravel_pytree(params)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"params must be floating point, got dtype {x.dtype}.")
        value, grad = flat_value_and_grad(unravel, args)(x)
        norm = jnp.sqrt(jnp.vdot(grad, grad))
        # The first step is capped to the unit ball, as in L-BFGS, until a pair gives scale.
        c0 = jnp.where(norm > 0, jnp.minimum(1.0, 1.0 / norm), 1.0).astype(x.dtype)
        return BFGSState(
            count=jnp.zeros((), jnp.int32),
            status=status_of(jnp.int32(0), grad),
            value=jnp.asarray(value, x.dtype),
            grad=grad,
            inverse_hessian=c0 * jnp.eye(x.size, dtype=x.dtype),
            hg=c0 * grad,
            stepsize=jnp.zeros((), x.dtype),
            num_fun_evals=jnp.ones((), jnp.int32),
            num_skipped=jnp.zeros((), jnp.int32),
        )

    def step(params, state: BFGSState, args):
        x, unravel = ravel_pytree(params)
        g, h = state.grad, state.inverse_hessian
        d = -state.hg
        slope = jnp.vdot(g, d)
        descent = slope < 0
        d = jnp.where(descent, d, -g)
        slope = jnp.where(descent, slope, -jnp.vdot(g, g))
        ls = line_search(
            flat_value_and_grad(unravel, args),
            x,
            state.value,
            g,
            d,
            slope=slope,
            c1=c1,
            c2=c2,
            max_steps=max_linesearch_steps,
        )
        s = ls.stepsize * d
        g1 = ls.grad
        y = g1 - g
        # Until a pair is accepted, H_0 takes the scale s'y / y'y (N&W eq. 6.20).
        first = state.count == state.num_skipped
        sy, yy = jnp.vdot(s, y), jnp.vdot(y, y)
        scale = jnp.where(first & (sy > 0) & (yy > 0), sy / jnp.where(yy > 0, yy, 1.0), 0.0)
        rescale = scale > 0
        # The one product with H per step: H g+. Then H y = H g+ - H g with H g from the state.
        h, hg1, hg0 = jax.lax.cond(
            rescale,
            lambda: (scale * jnp.eye(x.size, dtype=x.dtype), scale * g1, scale * g),
            lambda: (h, h @ g1, state.hg),
        )
        # tau needs the H that made the step (s'Bs = -a s'g), so the rescaled first update and
        # a steepest-descent fallback step are plain BFGS.
        scaled = self_scaling & ~first & descent
        tau, u, coef, ok = _correction(s, y, hg1 - hg0, g, ls.stepsize, scaled, curvature_eps)
        h = jax.lax.cond(ok, lambda: _apply_correction(h, tau, u, coef), lambda: h)
        hg = hg1 / tau + u @ (coef * (u.T @ g1))
        count = state.count + 1
        status = status_after_step(
            ls, state.value, g, count, gtol=gtol, ftol=ftol, max_iterations=max_iterations
        )
        new_state = BFGSState(
            count=count,
            status=status,
            value=ls.value,
            grad=ls.grad,
            inverse_hessian=h,
            hg=hg,
            stepsize=ls.stepsize,
            num_fun_evals=state.num_fun_evals + ls.num_evals,
            num_skipped=state.num_skipped + (~ok).astype(jnp.int32),
        )
        return unravel(x + s), new_state

    return Solver(init, step, optimality_fn=jax.grad(fn), max_steps=max_iterations)
