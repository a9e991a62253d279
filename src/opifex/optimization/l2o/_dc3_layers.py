"""DC3's equality completion and inequality correction on precomputed operators.

Split the variables as ``y = (z, w)``: ``z`` the first ``n - m`` (free), ``w`` the last ``m``
(dependent), and ``A = [A_z | B]`` with ``B`` square and invertible. Then ``A y = x`` holds
exactly when ``w = B^{-1} (x - A_z z)``, and the inequality residual along that manifold is
``G y - h = G_eff z + G_w B^{-1} x - h`` with ``G_eff = G_z - G_w B^{-1} A_z``.

All functions here are pure ``jnp`` on one instance; the operators are built once per ``A``
(under ``vmap`` with an unbatched ``A`` the factorization is not repeated per instance).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import lu_factor, lu_solve


class CompletionOperators(NamedTuple):
    """The factorized dependent block of ``A`` and the pieces the completion needs."""

    lu: jax.Array  # (m, m) float: LU factors of B = A[:, n - m:]
    pivots: jax.Array  # (m,) int32: row pivots of the LU factorization
    a_free: jax.Array  # (m, n - m) float: A_z = A[:, : n - m]


def completion_operators(A: jax.Array) -> CompletionOperators:
    m, n = A.shape
    lu, piv = lu_factor(A[:, n - m :])
    return CompletionOperators(lu, piv, A[:, : n - m])


def complete(ops: CompletionOperators, z: jax.Array, x: jax.Array) -> jax.Array:
    """``y = (z, B^{-1}(x - A_z z))``: exactly on ``A y = x`` up to the LU solve's rounding."""
    w = lu_solve((ops.lu, ops.pivots), x - ops.a_free @ z)
    return jnp.concatenate([z, w])


def effective_inequality_matrix(ops: CompletionOperators, G: jax.Array) -> jax.Array:
    """``G_eff = G_z - G_w B^{-1} A_z``, the inequality Jacobian in the free variables."""
    m = ops.lu.shape[0]
    k = G.shape[1] - m
    return G[:, :k] - G[:, k:] @ lu_solve((ops.lu, ops.pivots), ops.a_free)


def lipschitz_step(g_eff: jax.Array) -> jax.Array:
    """``1 / ||G_eff||_2^2``: the gradient of ``0.5 ||relu(G_eff z - c)||^2`` is that Lipschitz."""
    sigma = jnp.linalg.norm(g_eff, ord=2)
    return 1.0 / jnp.maximum(sigma * sigma, jnp.finfo(g_eff.dtype).tiny)


@functools.partial(jax.jit, static_argnames=("steps",))
def correct(
    ops: CompletionOperators,
    g_eff: jax.Array,
    y: jax.Array,
    x: jax.Array,
    G: jax.Array,
    h: jax.Array,
    *,
    steps: int,
    step_size: jax.Array,
    momentum: float,
) -> jax.Array:
    """Heavy-ball steps on the free variables, then one exact completion.

    Along the completion ``G y - h = G_eff z - c`` with ``c = h - G_w B^{-1} x``, so the loop
    needs only ``G_eff`` (DC3's ``G_effective`` / ``h_effective``); completing once at the end
    (rather than stepping all of ``y`` along the null space of ``A``, as DC3's code does) keeps
    ``A y = x`` to rounding however many steps are taken. The iterates are DC3's.
    """
    m = ops.lu.shape[0]
    k = y.shape[0] - m
    c = h - G[:, k:] @ lu_solve((ops.lu, ops.pivots), x)

    def body(carry, _):
        z, velocity = carry
        grad = g_eff.T @ jnp.maximum(g_eff @ z - c, 0.0)
        velocity = step_size * grad + momentum * velocity
        return (z - velocity, velocity), None

    z0 = y[:k]
    (z, _), _ = lax.scan(body, (z0, jnp.zeros_like(z0)), None, length=steps)
    return complete(ops, z, x)


@jax.jit
def complete_from_matrix(z: jax.Array, x: jax.Array, A: jax.Array) -> jax.Array:
    """Factorize ``A`` and complete: one compiled program per shape, also for eager callers."""
    return complete(completion_operators(A), z, x)


@functools.partial(jax.jit, static_argnames=("steps",))
def correct_from_constraints(
    y: jax.Array,
    x: jax.Array,
    A: jax.Array,
    G: jax.Array,
    h: jax.Array,
    step_size: jax.Array | None,
    momentum: jax.Array,
    *,
    steps: int,
) -> jax.Array:
    """Build the operators and run :func:`correct`; ``step_size=None`` means ``1/||G_eff||^2``."""
    ops = completion_operators(A)
    g_eff = effective_inequality_matrix(ops, G)
    lr = lipschitz_step(g_eff) if step_size is None else step_size
    return correct(ops, g_eff, y, x, G, h, steps=steps, step_size=lr, momentum=momentum)
