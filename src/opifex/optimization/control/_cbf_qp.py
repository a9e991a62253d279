"""The small dense QP behind a control-barrier-function safety filter.

Problem (``m`` barrier rows, ``n`` inputs, diagonal weight ``W = diag(w)``)::

    min_u  1/2 (u - u_nom)' W (u - u_nom)   s.t.   A u >= b,   lower <= u <= upper.

One row and no input bounds has the closed form (Ames et al. 2017, Eq. 19)
``u = u_nom + max(0, b - a u_nom) / (a W^-1 a') W^-1 a'``. Otherwise a fixed number of
rounds (until the multipliers stop moving), each a sweep of exact cyclic coordinate minimisation
(Hildreth 1957) and one Newton step on the positive multipliers, on the dual of the slack-relaxed
problem

    min_{u, s}  1/2 |u - u_nom|_W^2 + rho/2 |s|^2   s.t.   A u + s >= b,   lower <= u <= upper

find the active set: its dual ``d(l) = min_{u in box} L(u, s, l)`` over ``l >= 0`` is smooth
and strongly concave, with ``u(l) = clip(u_nom + W^-1 A' l, lower, upper)`` and ``s = l / rho``;
along any line its derivative is piecewise linear, so every line search is exact.
The relaxed problem is always feasible, so an infeasible barrier set (the input bounds cannot
satisfy it) yields the least-violating control instead of NaN. Then a polish step solves the
equality-constrained KKT system of that active set exactly (as OSQP's solution polishing,
Stellato et al. 2020): if it satisfies every KKT condition it is the exact optimum, otherwise
the relaxed optimum is returned and ``feasible`` reports the violation. The iterations
run under ``stop_gradient``; the derivative flows through the polish's linear solve, which is
the implicit derivative of the KKT conditions at a non-degenerate solution (Amos & Kolter 2017,
OptNet). Rows are scaled to unit ``W^-1``-norm first, so ``slack_penalty`` and
``feasibility_tol`` are dimensionless (a distance in ``W^(1/2) u``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class QPInfo(NamedTuple):
    """What the barrier QP reports next to the filtered control."""

    multipliers: jax.Array  # (m,) float: Lagrange multipliers of the barrier rows, >= 0
    residual: jax.Array  # (m,) float: A u - b in the rows' own units; >= 0 means satisfied
    feasible: jax.Array  # () bool: every row holds to within feasibility_tol


def cbf_qp(
    u_nom: jax.Array,
    A: jax.Array,
    b: jax.Array,
    lower: jax.Array | None = None,
    upper: jax.Array | None = None,
    weight: jax.Array | None = None,
    *,
    max_iter: int = 10,
    slack_penalty: float = 1e6,
    feasibility_tol: float = 1e-6,
) -> tuple[jax.Array, QPInfo]:
    """Project ``u_nom`` onto ``{u : A u >= b, lower <= u <= upper}`` in the ``W``-norm.

    Args:
        u_nom: Nominal control, shape ``(n,)``.
        A: Constraint rows, shape ``(m, n)`` (``L_g h`` of each barrier).
        b: Right-hand sides, shape ``(m,)`` (``-(L_f h + alpha(h))``).
        lower: Lower input bounds ``(n,)`` or ``None`` (unbounded below).
        upper: Upper input bounds ``(n,)`` or ``None``.
        weight: Positive diagonal of ``W``, shape ``(n,)``; ``None`` means ones.
        max_iter: Most dual rounds, each a coordinate sweep and a Newton step (unused by the
            closed form; with one row and bounds a single exact line search solves the dual
            when ``max_iter >= 1``).
        slack_penalty: ``rho`` of the relaxed problem (dimensionless after row scaling);
            sets the trade-off between rows when they cannot all hold.
        feasibility_tol: A row violated by more than this (dimensionless, plus a rounding
            allowance of ``100 eps`` times the problem's size) clears ``feasible``.

    Returns:
        ``(u, QPInfo)``.
    """
    u_nom = jnp.asarray(u_nom)
    dtype = jnp.result_type(u_nom, A, b, float)
    u_nom, A, b = (jnp.asarray(t, dtype) for t in (u_nom, A, b))
    n = u_nom.shape[0]
    w = jnp.ones(n, dtype) if weight is None else jnp.broadcast_to(jnp.asarray(weight, dtype), n)
    tiny = jnp.finfo(dtype).eps ** 2
    norms = jnp.sqrt(jnp.sum(A * A / w, axis=1))
    # Rows that no input can move (L_g h = 0) keep their units; they hold or they don't.
    scale = 1.0 / jnp.where(norms > tiny, norms, 1.0)
    An, bn = A * scale[:, None], b * scale
    # Rounding allowance: float32 controls of size 1e3 cannot meet 1e-6 to the letter.
    size = 1.0 + jnp.max(jnp.abs(u_nom) * jnp.sqrt(w)) + jnp.max(jnp.abs(bn))
    tol = feasibility_tol + 100.0 * jnp.finfo(dtype).eps * lax.stop_gradient(size)
    if A.shape[0] == 1 and lower is None and upper is None:
        u, lam = _closed_form(u_nom, An[0], bn[0], w)
        lam = lam[None]
    else:
        lo = jnp.full(n, -jnp.inf, dtype) if lower is None else jnp.asarray(lower, dtype)
        hi = jnp.full(n, jnp.inf, dtype) if upper is None else jnp.asarray(upper, dtype)
        u, lam = _box_qp(u_nom, An, bn, lo, hi, w, max_iter, slack_penalty, tol)
    residual_n = An @ u - bn
    info = QPInfo(
        multipliers=lam * scale,
        residual=residual_n / scale,
        feasible=jnp.all(residual_n >= -tol),
    )
    return u, info


def _closed_form(u_nom, a, b, w):
    denom = jnp.sum(a * a / w)
    movable = denom > jnp.finfo(u_nom.dtype).eps
    lam = jnp.where(movable, jnp.maximum(0.0, b - a @ u_nom) / jnp.where(movable, denom, 1.0), 0.0)
    return u_nom + lam * a / w, lam


def _box_qp(u_nom, A, b, lo, hi, w, max_iter, rho, tol):
    sg = lax.stop_gradient
    if max_iter == 0:
        lam = jnp.zeros(A.shape[0], A.dtype)
    else:
        lam = _dual_solve(*(sg(t) for t in (u_nom, A, b, lo, hi, w)), rho, max_iter)
    z = sg(u_nom + (A.T @ lam) / w)
    at_lo, at_hi = z <= sg(lo), z >= sg(hi)
    rows = lam > 0
    eps = 10 * jnp.finfo(A.dtype).eps
    u_exact, l_exact = _polish(u_nom, A, b, lo, hi, w, at_lo, at_hi, rows, eps)
    u_relax, l_relax = _polish(u_nom, A, b, lo, hi, w, at_lo, at_hi, rows, 1.0 / rho)
    # KKT of the exact problem: primal feasibility, dual feasibility, and the box multipliers'
    # signs, the last expressed as u == clip(u_nom + W^-1 A' l).
    z_exact = u_nom + (A.T @ l_exact) / w
    kkt = (
        jnp.all(A @ u_exact - b >= -tol)
        & jnp.all(l_exact >= -tol)
        & jnp.all(jnp.abs(jnp.clip(z_exact, lo, hi) - u_exact) * jnp.sqrt(w) <= tol)
    )
    u = jnp.clip(jnp.where(kkt, u_exact, u_relax), lo, hi)
    lam = jnp.maximum(jnp.where(kkt, l_exact, l_relax), 0.0)
    return u, lam


def _polish(u_nom, A, b, lo, hi, w, at_lo, at_hi, rows, reg):
    """Solve the KKT equations of one active set; differentiable in the problem data."""
    free = ~(at_lo | at_hi)
    u0 = jnp.where(at_lo, lo, jnp.where(at_hi, hi, u_nom))
    Am = jnp.where(rows[:, None], A, 0.0)
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    K = (Am * jnp.where(free, 1.0 / w, 0.0)) @ Am.T + jnp.where(rows, reg, 1.0) * eye
    lam = _solve(K, jnp.where(rows, b - A @ u0, 0.0))
    return u0 + jnp.where(free, (A.T @ lam) / w, 0.0), lam


def _dual_solve(u_nom, A, b, lo, hi, w, rho, max_iter):
    """Minimise ``phi(l) = -d(l)`` over ``l >= 0``: per iteration a sweep of exact coordinate
    steps (steady progress) and one Newton step on the positive multipliers (fast when rows
    are nearly parallel, where coordinate steps crawl), each with an exact line search."""
    m = A.shape[0]
    eye = jnp.eye(m, dtype=A.dtype)

    def line_min(lam, d, t_max):
        """Exact ``argmin_{0 <= t <= t_max} phi(lam + t d)``."""
        z, c, ad = u_nom + (A.T @ lam) / w, (A.T @ d) / w, A.T @ d

        def slope(t):  # d phi / dt: piecewise linear and non-decreasing in t
            return d @ (A @ jnp.clip(z + t * c, lo, hi) + (lam + t * d) / rho - b)

        # u bends where a coordinate meets a bound; between bends the slope is linear, so its
        # root is found exactly by interpolating between the two bends that bracket it.
        bends = jnp.concatenate([(lo - z) / c, (hi - z) / c, t_max[None]])
        bends = jnp.sort(jnp.where(jnp.isfinite(bends) & (bends > 0), bends, jnp.inf))
        t = jnp.concatenate([jnp.zeros(1, A.dtype), bends])
        finite = jnp.isfinite(t)
        s = jax.vmap(slope)(jnp.where(finite, t, 0.0))
        up = finite & (s >= 0)
        k = jnp.argmax(up)
        k0 = jnp.maximum(k - 1, 0)
        inside = t[k0] + (t[k] - t[k0]) * (-s[k0]) / jnp.where(k > 0, s[k] - s[k0], 1.0)
        last = jnp.sum(finite) - 1
        zl = z + (t[last] + 1.0) * c
        beyond = (zl > lo) & (zl < hi)
        curvature = jnp.sum(jnp.where(beyond, ad * c, 0.0)) + d @ d / rho
        tail = t[last] - s[last] / curvature
        root = jnp.where(jnp.any(up), jnp.where(k > 0, inside, 0.0), tail)
        return lam + jnp.clip(root, 0.0, t_max) * d

    def newton_direction(lam):
        z = u_nom + (A.T @ lam) / w
        grad = A @ jnp.clip(z, lo, hi) + lam / rho - b
        moving = (lam > 0) | (grad < 0)
        H = (A * jnp.where((z > lo) & (z < hi), 1.0 / w, 0.0)) @ A.T + eye / rho
        Hm = jnp.where(moving[:, None] & moving[None, :], H, eye)
        d = -_solve(Hm, jnp.where(moving, grad, 0.0))
        d = jnp.where(moving & jnp.isfinite(d), d, 0.0)
        # Stop where the first multiplier reaches zero; the next sweep may drop it.
        hits = jnp.where(d < 0, lam / jnp.where(d < 0, -d, 1.0), jnp.inf)
        return d, jnp.min(hits)

    def step(j, lam):
        # Steps 0..m-1 of each round are exact coordinate minimisations (l_j restarts from 0),
        # step m the Newton step; one line search serves all, to keep the compiled code small.
        i = j % (m + 1)
        newton = i == m
        d_newton, t_newton = newton_direction(lam)
        start = jnp.where(newton, lam, lam * (1.0 - eye[i % m]))
        d = jnp.where(newton, d_newton, eye[i % m])
        return line_min(start, d, jnp.where(newton, t_newton, jnp.inf))

    zero = jnp.zeros(m, A.dtype)
    if m == 1:  # one exact line minimisation is the exact dual optimum
        return line_min(zero, eye[0], jnp.asarray(jnp.inf, A.dtype))

    def round_(carry):
        k, lam, _ = carry
        new = lax.fori_loop(0, m + 1, step, lam)
        return k + 1, new, jnp.max(jnp.abs(new - lam)) > 1e-12 * (1.0 + jnp.max(jnp.abs(new)))

    def going(carry):
        k, _, moved = carry
        return (k < max_iter) & moved

    return lax.while_loop(going, round_, (jnp.asarray(0), zero, jnp.asarray(True)))[1]


def _solve(K, r):
    # One row is a division; LAPACK's batched LU costs far more than that under vmap.
    if K.shape[0] == 1:
        return r / K[0, 0]
    return jnp.linalg.solve(K, r)
