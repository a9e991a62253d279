"""Small box-constrained quadratic programs, solved by projected Newton.

``min_x 0.5 x' H x + g' x  s.t.  lower <= x <= upper`` with ``H`` positive definite: the
per-stage subproblem of box-DDP (Tassa, Mansard & Todorov, "Control-limited differential
dynamic programming", ICRA 2014, Alg. 3, after Bertsekas 1982). Each iteration fixes the
variables at a bound whose gradient pushes outward (the clamped set), takes the Newton step
on the free ones and backtracks along the projected arc. A fixed iteration count keeps it
jit/vmap friendly; for one variable the solution is the clipped unconstrained minimiser.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_BACKTRACK = 0.5 ** jnp.arange(8)
_ARMIJO = 0.1


class BoxQPResult(NamedTuple):
    x: jax.Array  # float [n], the minimiser
    free: jax.Array  # bool [n], variables not clamped at a bound
    free_hessian: jax.Array  # float [n, n], H on the free block, identity elsewhere


def _clamped(x, grad, lower, upper):
    return ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))


def _masked(hess, free):
    eye = jnp.eye(hess.shape[0], dtype=hess.dtype)
    both = free[:, None] & free[None, :]
    return jnp.where(both, hess, eye)


def box_qp(hess, grad, lower, upper, x0, *, iterations: int = 8) -> BoxQPResult:
    """Minimise ``0.5 x' H x + g' x`` over ``lower <= x <= upper`` by projected Newton.

    Args:
        hess: ``H``, positive definite ``[n, n]``.
        grad: ``g``, ``[n]``.
        lower, upper: Bounds ``[n]`` (``-inf``/``inf`` allowed), ``lower <= upper``.
        x0: Starting point (projected onto the box).
        iterations: Projected Newton iterations (ignored when ``n == 1``).

    Returns:
        :class:`BoxQPResult` with the minimiser, the free set at it, and ``H`` restricted to
        the free set (identity on clamped rows and columns), which the DDP feedback gain uses.

    Example:
        >>> import jax.numpy as jnp
        >>> r = box_qp(jnp.eye(2), jnp.array([-2.0, 0.5]), -jnp.ones(2), jnp.ones(2), jnp.zeros(2))
        >>> [round(float(v), 3) for v in r.x], [bool(f) for f in r.free]
        ([1.0, -0.5], [False, True])
    """
    if grad.shape[0] == 1:
        x = jnp.clip(-grad / hess[0, 0], lower, upper)
        free = ~_clamped(x, grad + hess[0] * x, lower, upper)
        return BoxQPResult(x, free, _masked(hess, free))

    def value(x):
        return 0.5 * x @ hess @ x + grad @ x

    def body(_, x):
        g = grad + hess @ x
        free = ~_clamped(x, g, lower, upper)
        step = jnp.linalg.solve(_masked(hess, free), jnp.where(free, -g, 0.0))
        trial = jnp.clip(x[None] + _BACKTRACK[:, None].astype(x.dtype) * step[None], lower, upper)
        values = jax.vmap(value)(trial)
        # Armijo along the projected arc (Bertsekas 1982, eq. (32)).
        decrease = value(x) - values >= _ARMIJO * jnp.sum(g * (x - trial), axis=1)
        pick = jnp.argmax(decrease)
        return jnp.where(decrease[pick], trial[pick], x)

    x = jax.lax.fori_loop(0, iterations, body, jnp.clip(x0, lower, upper))
    free = ~_clamped(x, grad + hess @ x, lower, upper)
    return BoxQPResult(x, free, _masked(hess, free))
