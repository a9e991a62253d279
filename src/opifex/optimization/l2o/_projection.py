"""Projections onto ``{A y = x}`` and along a ray from an interior point onto ``{G y <= h}``.

Pure ``jnp`` on one instance; the host-side checks live in ``constraint_learning``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular


class EqualityProjector(NamedTuple):
    """Thin QR factors of ``A^T = Q R``; the projection is ``y - Q (Q^T y - R^{-T} x)``."""

    q: jax.Array  # (n, m) float: orthonormal basis of the row space of A
    r: jax.Array  # (m, m) float: upper triangular, A = R^T Q^T


def equality_projector(A: jax.Array) -> EqualityProjector:
    q, r = jnp.linalg.qr(A.T, mode="reduced")
    return EqualityProjector(q, r)


def project_equality(proj: EqualityProjector, y: jax.Array, x: jax.Array) -> jax.Array:
    # Through QR rather than (A A^T)^{-1}: the normal equations square A's condition number.
    target = solve_triangular(proj.r, x, trans="T", lower=False)
    return y - proj.q @ (proj.q.T @ y - target)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0``, else ``inf``; NaN-free in value and gradient."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), jnp.inf)


def ray_fraction(y: jax.Array, y_interior: jax.Array, G: jax.Array, h: jax.Array) -> jax.Array:
    """Largest ``t`` in ``[0, 1]`` with ``G (y0 + t (y - y0)) <= h`` (the ratio test)."""
    slack = h - G @ y_interior
    rate = G @ (y - y_interior)
    t = jnp.min(_safe_ratio(slack, rate), initial=jnp.inf)
    return jnp.clip(t, 0.0, 1.0)


@jax.jit
def ray_project(y: jax.Array, y_interior: jax.Array, G: jax.Array, h: jax.Array) -> jax.Array:
    t = ray_fraction(y, y_interior, G, h)
    # A feasible y comes back bit for bit: y0 + 1 * (y - y0) need not round to y.
    return jnp.where(t >= 1.0, y, y_interior + t * (y - y_interior))


@functools.partial(jax.jit, static_argnames=("constraint_fn", "steps"))
def bisect_project(
    y: jax.Array,
    y_interior: jax.Array,
    args: Any,
    constraint_fn: Callable[[jax.Array, Any], jax.Array],
    *,
    steps: int,
) -> jax.Array:
    """Bisection on ``t`` along ``y0 + t (y - y0)``; returns the last feasible ``t``.

    ``constraint_fn(point, args)`` is feasible where every entry is ``<= 0``. For a convex
    feasible set the feasible ``t`` form an interval ``[0, t*]``, so keeping ``lo`` feasible and
    ``hi`` infeasible brackets ``t*`` to ``2^-steps`` and ``lo`` is always feasible. The
    fraction is piecewise constant in ``y``, so it is held fixed under differentiation: the
    gradient is that of ``y0 + t (y - y0)`` at the found ``t``.
    """
    direction = y - y_interior

    def feasible(point):
        return jnp.all(jnp.asarray(constraint_fn(point, args)) <= 0)

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        ok = feasible(y_interior + mid * direction)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    zero = jnp.zeros((), y.dtype)
    lo, _ = lax.fori_loop(0, steps, body, (zero, zero + 1.0))
    lo = lax.stop_gradient(lo)
    return jnp.where(feasible(y), y, y_interior + lo * direction)


def linear_residual(point: jax.Array, args: tuple[jax.Array, jax.Array]) -> jax.Array:
    """``G y - h`` with ``args = (G, h)``: a module-level function, so jit caches on it."""
    G, h = args
    return G @ point - h


@jax.jit
def project_equality_from_matrix(y: jax.Array, x: jax.Array, A: jax.Array) -> jax.Array:
    return project_equality(equality_projector(A), y, x)
