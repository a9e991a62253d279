"""One line search shared by the L-BFGS solver and the L-BFGS optax transformation.

Along a descent direction ``d`` from ``x`` it looks for a step ``a`` meeting the strong Wolfe
conditions on ``phi(a) = f(x + a d)`` (Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
Alg. 3.5 bracketing and Alg. 3.6 zoom, with safeguarded cubic/quadratic interpolation)::

    phi(a) <= phi(0) + c1 a phi'(0), phi(a) < phi(0)   (sufficient decrease, Armijo)
    |phi'(a)| <= c2 |phi'(0)|                (strong curvature)

When the zoom cannot meet both (its budget runs out or its bracket collapses, as happens with
inexact gradients or at the limit of floating-point precision) it falls back to the best
sufficient-decrease point it has seen, or, if it has none, to Armijo backtracking with
safeguarded quadratic interpolation. Every trial evaluates the value *and* gradient, and the
accepted point's value and gradient are returned so the caller's next iteration reuses them.

Everything runs on flat vectors inside one ``lax.while_loop`` whose body makes exactly one
evaluation; the phase (bracket, zoom, backtrack) is carried in the loop state, so there is no
nested loop and no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from opifex.optimization.core import Status

_BRACKET, _ZOOM, _BACKTRACK, _DONE = 0, 1, 2, 3
METHODS = ("zoom", "backtracking")


class LineSearchResult(NamedTuple):
    """Outcome of :func:`line_search`."""

    stepsize: jax.Array  # float [], accepted step (0 when the search failed)
    value: jax.Array  # float [], f(x + stepsize * d)
    grad: jax.Array  # float [n], gradient at x + stepsize * d
    num_evals: jax.Array  # int32 [], value-and-gradient evaluations spent
    success: jax.Array  # bool [], a step with sufficient decrease was found
    wolfe: jax.Array  # bool [], the accepted step also meets the strong curvature condition


class _State(NamedTuple):
    phase: jax.Array  # int32 [], _BRACKET / _ZOOM / _BACKTRACK / _DONE
    num_evals: jax.Array  # int32 [], evaluations so far
    alpha: jax.Array  # float [], next trial step
    a_lo: jax.Array  # float [], best sufficient-decrease step so far (0 = none)
    f_lo: jax.Array  # float [], phi(a_lo)
    d_lo: jax.Array  # float [], phi'(a_lo)
    g_lo: jax.Array  # float [n], gradient at x + a_lo d
    a_hi: jax.Array  # float [], other end of the zoom bracket
    f_hi: jax.Array  # float [], phi(a_hi)
    d_hi: jax.Array  # float [], phi'(a_hi)
    success: jax.Array  # bool []
    wolfe: jax.Array  # bool []


def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic through (a, fa, da), (b, fb, db); NaN when it has none."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    d2 = jnp.sign(b - a) * jnp.sqrt(d1 * d1 - da * db)
    return b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2)


def _quad_min(a, fa, da, b, fb):
    """Minimiser of the quadratic through (a, fa, da) and (b, fb)."""
    h = b - a
    return a - 0.5 * da * h * h / (fb - fa - da * h)


def _inside(t, lo, hi):
    return jnp.isfinite(t) & (t >= lo) & (t <= hi)


def _zoom_trial(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi):
    """Cubic, else quadratic, else bisection, kept 10% away from the bracket's ends."""
    left, right = jnp.minimum(a_lo, a_hi), jnp.maximum(a_lo, a_hi)
    margin = 0.1 * (right - left)
    lo, hi = left + margin, right - margin
    cubic = _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi)
    quad = _quad_min(a_lo, f_lo, d_lo, a_hi, f_hi)
    mid = 0.5 * (left + right)
    return jnp.where(_inside(cubic, lo, hi), cubic, jnp.where(_inside(quad, lo, hi), quad, mid))


def _extrapolate(a_prev, f_prev, d_prev, a, f, da):
    """Next bracketing trial beyond ``a``: the cubic's minimiser, grown by 1.1x to 5x."""
    width = a - a_prev
    lo, hi = a + 0.1 * width, a + 4.0 * width
    t = _cubic_min(a_prev, f_prev, d_prev, a, f, da)
    return jnp.where(jnp.isfinite(t), jnp.clip(t, lo, hi), a + 2.0 * width)


def _backtrack(f0, dphi0, a, f):
    """Armijo backtracking step: the quadratic's minimiser, clipped to [0.1 a, 0.5 a]."""
    t = -0.5 * dphi0 * a * a / (f - f0 - dphi0 * a)
    return jnp.where(jnp.isfinite(t), jnp.clip(t, 0.1 * a, 0.5 * a), 0.5 * a)


def line_search(
    value_and_grad: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    x: jax.Array,
    value: jax.Array,
    grad: jax.Array,
    direction: jax.Array,
    *,
    initial_step: jax.Array | float = 1.0,
    slope: jax.Array | None = None,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_steps: int = 30,
    method: str = "zoom",
) -> LineSearchResult:
    """Find a step along ``direction`` from ``x`` (all flat 1-D arrays of one dtype).

    Args:
        value_and_grad: ``x -> (f(x), grad f(x))`` on flat vectors.
        x: Current point.
        value: ``f(x)``.
        grad: ``grad f(x)``.
        direction: Search direction; must be a descent direction (``grad . direction < 0``),
            otherwise the search fails at once without evaluating.
        initial_step: First trial step.
        slope: ``grad . direction`` if the caller has it already.
        c1: Sufficient-decrease constant.
        c2: Strong-curvature constant (``method="zoom"`` only).
        max_steps: Evaluations the zoom may spend; the backtracking fallback may spend as
            many again. With ``method="backtracking"``, the evaluations of the only phase.
        method: ``"zoom"`` (strong Wolfe) or ``"backtracking"`` (Armijo only).

    Returns:
        A :class:`LineSearchResult`; on failure the step is 0 and the value and gradient
        are those at ``x``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    dtype = x.dtype
    eps = jnp.finfo(dtype).eps
    f0 = jnp.asarray(value, dtype)
    dphi0 = jnp.vdot(grad, direction) if slope is None else jnp.asarray(slope, dtype)
    alpha0 = jnp.asarray(initial_step, dtype)
    start = _BRACKET if method == "zoom" else _BACKTRACK
    search_budget = max_steps
    total_budget = 2 * max_steps if method == "zoom" else max_steps
    zero = jnp.zeros((), dtype)

    init = _State(
        phase=jnp.where(dphi0 < 0, start, _DONE).astype(jnp.int32),
        num_evals=jnp.zeros((), jnp.int32),
        alpha=alpha0,
        a_lo=zero,
        f_lo=f0,
        d_lo=dphi0,
        g_lo=grad,
        a_hi=zero,
        f_hi=f0,
        d_hi=dphi0,
        success=jnp.zeros((), bool),
        wolfe=jnp.zeros((), bool),
    )

    def cond(s):
        return s.phase != _DONE

    def body(s):
        a = s.alpha
        f, g = value_and_grad(x + a * direction)
        f = jnp.asarray(f, dtype)
        da = jnp.vdot(g, direction)
        n = s.num_evals + 1
        finite = jnp.isfinite(f) & jnp.isfinite(da)
        # Strict decrease too: for steps so small that c1 a phi'(0) is below rounding, the
        # Armijo test alone would accept f == f0 and the caller would stall.
        armijo = finite & (f <= f0 + c1 * a * dphi0) & (f < f0)
        curvature = jnp.abs(da) <= -c2 * dphi0
        in_bracket = s.phase == _BRACKET
        in_backtrack = s.phase == _BACKTRACK

        # Nocedal & Wright Alg. 3.5/3.6: a trial without sufficient decrease (or no better
        # than a_lo) closes the bracket from above; one with decrease but too steep a slope
        # becomes the new a_lo, and if the slope has turned, the old a_lo becomes a_hi.
        too_high = ~armijo | (f >= s.f_lo)
        accept = jnp.where(in_backtrack, armijo, ~too_high & curvature)
        to_hi = ~in_backtrack & too_high
        to_lo = ~in_backtrack & ~too_high & ~curvature
        turned = jnp.where(in_bracket, da >= 0, da * (s.a_hi - s.a_lo) >= 0)
        flip = to_lo & turned
        extrapolating = in_bracket & to_lo & ~turned

        a_hi = jnp.where(to_hi, a, jnp.where(flip, s.a_lo, s.a_hi))
        f_hi = jnp.where(to_hi, f, jnp.where(flip, s.f_lo, s.f_hi))
        d_hi = jnp.where(to_hi, da, jnp.where(flip, s.d_lo, s.d_hi))
        new_lo = to_lo | accept
        a_lo = jnp.where(new_lo, a, s.a_lo)
        f_lo = jnp.where(new_lo, f, s.f_lo)
        d_lo = jnp.where(new_lo, da, s.d_lo)
        g_lo = jnp.where(new_lo, g, s.g_lo)

        searching = ~in_backtrack & ~accept
        zooming = searching & ~extrapolating
        collapsed = zooming & (jnp.abs(a_hi - a_lo) <= 10.0 * eps * jnp.maximum(a_hi, a_lo))
        give_up = searching & (collapsed | (n >= search_budget))
        # Fallback 1: the best sufficient-decrease point seen (a_lo > 0) is accepted.
        take_lo = give_up & (a_lo > 0)
        # Fallback 2: none seen, so backtrack from below the smallest rejected step.
        start_backtrack = give_up & ~take_lo
        out_of_budget = in_backtrack & ~accept & (n >= total_budget)

        next_alpha = jnp.where(
            extrapolating,
            _extrapolate(s.a_lo, s.f_lo, s.d_lo, a, f, da),
            _zoom_trial(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi),
        )
        next_alpha = jnp.where(start_backtrack, _backtrack(f0, dphi0, a_hi, f_hi), next_alpha)
        next_alpha = jnp.where(in_backtrack, _backtrack(f0, dphi0, a, f), next_alpha)

        done = accept | take_lo | out_of_budget
        phase = jnp.where(in_bracket & ~extrapolating, _ZOOM, s.phase)
        phase = jnp.where(start_backtrack, _BACKTRACK, phase)
        phase = jnp.where(done, _DONE, phase).astype(jnp.int32)
        return _State(
            phase=phase,
            num_evals=n,
            alpha=next_alpha,
            a_lo=a_lo,
            f_lo=f_lo,
            d_lo=d_lo,
            g_lo=g_lo,
            a_hi=a_hi,
            f_hi=f_hi,
            d_hi=d_hi,
            success=accept | take_lo,
            wolfe=accept & ~in_backtrack,
        )

    s = jax.lax.while_loop(cond, body, init)
    # a_lo stays 0 (with f0, grad) unless a step was accepted, so it is the answer either way.
    return LineSearchResult(s.a_lo, s.f_lo, s.g_lo, s.num_evals, s.success, s.wolfe)


def gradient_status(count, grad, *, gtol: float, max_iterations: int) -> jax.Array:
    """``CONVERGED`` if ``max|grad| <= gtol``, else ``MAX_STEPS`` once ``count`` reaches the
    budget, else ``RUNNING`` (the stopping rule shared by the line-search solvers)."""
    done = jnp.max(jnp.abs(grad)) <= gtol
    status = jnp.where(count >= max_iterations, Status.MAX_STEPS, Status.RUNNING)
    return jnp.where(done, Status.CONVERGED, status).astype(jnp.int32)


def status_after_step(
    ls: LineSearchResult, value, grad, count, *, gtol: float, ftol: float, max_iterations: int
) -> jax.Array:
    """Status after a line-search step from ``(value, grad)`` to ``(ls.value, ls.grad)``.

    ``CONVERGED`` on the gradient test, or (``ftol > 0``) on a relative reduction
    ``(f - f+) / max(|f|, |f+|, 1) <= ftol``; a failed search is ``LINESEARCH_FAILED`` unless
    ``max|grad| <= sqrt(eps) max(1, |f|)``, the gradient being as small as precision allows.
    """
    status = gradient_status(count, ls.grad, gtol=gtol, max_iterations=max_iterations)
    if ftol > 0:
        size = jnp.maximum(jnp.maximum(jnp.abs(value), jnp.abs(ls.value)), 1.0)
        small = (value - ls.value) <= ftol * size
        status = jnp.where(ls.success & small, Status.CONVERGED, status)
    eps = jnp.finfo(grad.dtype).eps
    tiny = jnp.max(jnp.abs(grad)) <= jnp.sqrt(eps) * jnp.maximum(1.0, jnp.abs(value))
    failed = jnp.where(tiny, Status.CONVERGED, Status.LINESEARCH_FAILED)
    return jnp.where(ls.success, status, failed).astype(jnp.int32)
