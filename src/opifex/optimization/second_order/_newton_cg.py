"""Nyström-preconditioned damped Newton-CG (NysNewton-CG) on the core solver protocol.

Hessian-free: the Hessian only enters through Hessian-vector products of
``jax.linearize(jax.grad(f), x)``, so each product costs one forward-mode pass over the
already-linearised gradient, and the randomized Nyström sketch of the Hessian is refreshed
every ``precond_update_freq`` iterations from ``rank`` such products.
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
from opifex.optimization.second_order.config import NysNewtonCGConfig


class NysNewtonCGState(NamedTuple):
    """State of :func:`nys_newton_cg_solver` (``n`` scalars in params, sketch rank ``r``)."""

    count: jax.Array  # int32 [], iterations taken
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], objective at params
    grad: jax.Array  # float [n], flattened gradient at params
    eigvecs: jax.Array  # float [n, r], Nyström eigenvectors U of the Hessian sketch
    eigvals: jax.Array  # float [r], Nyström eigenvalues (descending, >= 0)
    direction: jax.Array  # float [n], last Newton direction (warm start of PCG)
    key: jax.Array  # uint32 [2], PRNG key of the sketches
    stepsize: jax.Array  # float [], step accepted by the last line search
    num_hvps: jax.Array  # int32 [], Hessian-vector products spent
    cg_iterations: jax.Array  # int32 [], PCG iterations of the last step


def nystrom_sketch(hvp: Callable, n: int, rank: int, key, dtype):
    """Randomized Nyström approximation ``H ~ U diag(lam) U'`` from ``rank`` products.

    Frangella, Tropp & Udell (2023), Alg. 2.1, with a shift that makes the small core
    matrix positive definite even when ``H`` is indefinite. Then ``lam`` is the sketch of the
    shifted ``H`` floored at 0, which may overestimate ``H``'s eigenvalues (up to about 2x
    was seen): still a fine preconditioner for the damped system, not an eigen-solver. If the
    core cannot be factorised the sketch is 0, i.e. no preconditioning.

    Returns:
        ``(U [n, rank], lam [rank])``.
    """
    omega = jax.random.normal(key, (n, rank), dtype)
    q, _ = jnp.linalg.qr(omega)
    y = jax.lax.map(hvp, q.T).T
    eps = jnp.finfo(dtype).eps
    core = q.T @ y
    core = 0.5 * (core + core.T)
    lowest = jnp.linalg.eigvalsh(core)[0]
    shift = eps * jnp.linalg.norm(y) + jnp.maximum(0.0, -2.0 * lowest)
    y_shift = y + shift * q
    chol = jnp.linalg.cholesky(q.T @ y_shift)
    factored = jnp.all(jnp.isfinite(chol))
    chol = jnp.where(factored, chol, jnp.eye(rank, dtype=dtype))
    b = jax.scipy.linalg.solve_triangular(chol, y_shift.T, lower=True).T
    u, sigma, _ = jnp.linalg.svd(b, full_matrices=False)
    lam = jnp.where(factored, jnp.maximum(sigma**2 - shift, 0.0), 0.0)
    return jnp.where(factored, u, q), lam


def _precondition(u, lam, mu, r):
    """Apply the inverse Nyström preconditioner ``P^-1`` (Frangella et al., eq. 5.3)."""
    utr = u.T @ r
    return (lam[-1] + mu) * (u @ (utr / (lam + mu))) + (r - u @ utr)


def _pcg(hvp, b, x0, mu, u, lam, tol, max_iterations):
    """Solve ``(H + mu I) x = b`` by preconditioned CG from ``x0``; stops on negative curvature
    and returns the last iterate (``x0`` itself if that happens at once: the caller then falls
    back to the gradient when the result is not a descent direction)."""

    def matvec(v):
        return hvp(v) + mu * v

    r0 = b - matvec(x0)
    z0 = _precondition(u, lam, mu, r0)
    bnorm = jnp.linalg.norm(b)

    def cond(c):
        i, _, r, _, _, stop = c
        return (i < max_iterations) & (jnp.linalg.norm(r) > tol * bnorm) & ~stop

    def body(c):
        i, x, r, z, p, _ = c
        v = matvec(p)
        curvature = jnp.vdot(p, v)
        negative = curvature <= 0
        rz = jnp.vdot(r, z)
        alpha = rz / jnp.where(negative, 1.0, curvature)
        x_new = x + alpha * p
        r_new = r - alpha * v
        z_new = _precondition(u, lam, mu, r_new)
        beta = jnp.vdot(r_new, z_new) / jnp.where(rz == 0, 1.0, rz)
        p_new = z_new + beta * p
        keep = lambda new, old: jnp.where(negative, old, new)  # noqa: E731
        return (i + 1, keep(x_new, x), keep(r_new, r), keep(z_new, z), keep(p_new, p), negative)

    init = (jnp.zeros((), jnp.int32), x0, r0, z0, z0, jnp.zeros((), bool))
    i, x, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    return x, i


def nys_newton_cg_solver(
    fn: Callable[[Any, Any], jax.Array],
    *,
    max_iterations: int = 100,
    rank: int = 60,
    mu: float = 1e-2,
    precond_update_freq: int = 20,
    cg_tol: float = 1e-10,
    cg_max_iterations: int = 100,
    learning_rate: float = 1.0,
    gtol: float = 1e-10,
    seed: int = 0,
) -> Solver:
    """NysNewton-CG (Rathore et al. 2024, Alg. 4) minimising the scalar ``fn(params, args)``.

    Each iteration solves the damped Newton system ``(H + mu I) d = g`` by CG preconditioned
    with the randomized Nyström approximation of ``H`` (Frangella, Tropp & Udell 2023),
    warm-started from the previous ``d``; the sketch is refreshed every
    ``precond_update_freq`` iterations. The step ``x+ = x - a d`` takes ``a`` from an Armijo
    backtracking search from ``learning_rate`` (falling back to ``d = g`` if ``d`` is not a
    descent direction). PCG stops at relative residual ``cg_tol``, after
    ``cg_max_iterations`` products or on negative curvature of ``H + mu I``.

    Stops ``CONVERGED`` on ``max|g| <= gtol``, ``LINESEARCH_FAILED`` when no step decreases
    ``fn``, ``MAX_STEPS`` after ``max_iterations``.

    Args:
        fn: Scalar objective ``(params, args) -> float``.
        max_iterations: Newton iterations before ``MAX_STEPS``.
        rank: Rank of the Nyström sketch (Hessian-vector products per refresh).
        mu: Damping ``mu`` added to the Hessian.
        precond_update_freq: Iterations between sketch refreshes.
        cg_tol: Relative residual tolerance of PCG.
        cg_max_iterations: Products PCG may spend per iteration.
        learning_rate: First trial step of the Armijo search.
        gtol: Gradient max-norm tolerance.
        seed: Seed of the random sketches.

    Returns:
        A :class:`~opifex.optimization.core.Solver` whose state is :class:`NysNewtonCGState`.

    References:
        Rathore, Lei, Frangella, Lu & Udell, "Challenges in training PINNs: a loss landscape
        perspective", ICML 2024. Frangella, Tropp & Udell, "Randomized Nyström
        preconditioning", SIAM J. Matrix Anal. Appl. 44 (2023).
    """

    NysNewtonCGConfig(**{k: v for k, v in locals().items() if k != "fn"})

    def flat(params, args):
        x, unravel = ravel_pytree(params)
        return x, unravel, (lambda xf: fn(unravel(xf), args))

    def status_of(count, grad):
        return gradient_status(count, grad, gtol=gtol, max_iterations=max_iterations)

    def init(params, args) -> NysNewtonCGState:
        out = jax.eval_shape(fn, params, args)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"fn must return a scalar, got an output of shape {getattr(out, 'shape', out)}."
            )
        x, _, f = flat(params, args)
        if rank > x.size:
            raise ValueError(f"rank must be <= the number of parameters {x.size}, got {rank}.")
        value, grad = jax.value_and_grad(f)(x)
        return NysNewtonCGState(
            count=jnp.zeros((), jnp.int32),
            status=status_of(jnp.int32(0), grad),
            value=jnp.asarray(value, x.dtype),
            grad=grad,
            eigvecs=jnp.zeros((x.size, rank), x.dtype),
            eigvals=jnp.zeros((rank,), x.dtype),
            direction=jnp.zeros_like(x),
            key=jax.random.PRNGKey(seed),
            stepsize=jnp.zeros((), x.dtype),
            num_hvps=jnp.zeros((), jnp.int32),
            cg_iterations=jnp.zeros((), jnp.int32),
        )

    def step(params, state: NysNewtonCGState, args):
        x, unravel, f = flat(params, args)
        g, hvp = jax.linearize(jax.grad(f), x)
        key, sub = jax.random.split(state.key)
        refresh = state.count % precond_update_freq == 0
        u, lam = jax.lax.cond(
            refresh,
            lambda: nystrom_sketch(hvp, x.size, rank, sub, x.dtype),
            lambda: (state.eigvecs, state.eigvals),
        )
        d, cg_its = _pcg(hvp, g, state.direction, mu, u, lam, cg_tol, cg_max_iterations)
        slope = -jnp.vdot(g, d)
        descent = jnp.isfinite(slope) & (slope < 0)
        d = jnp.where(descent, d, g)
        slope = jnp.where(descent, slope, -jnp.vdot(g, g))
        ls = line_search(
            jax.value_and_grad(f),
            x,
            state.value,
            g,
            -d,
            initial_step=learning_rate,
            slope=slope,
            c1=0.1,
            max_steps=30,
            method="backtracking",
        )
        count = state.count + 1
        status = status_after_step(
            ls, state.value, g, count, gtol=gtol, ftol=0.0, max_iterations=max_iterations
        )
        new_state = NysNewtonCGState(
            count=count,
            status=status,
            value=ls.value,
            grad=ls.grad,
            eigvecs=u,
            eigvals=lam,
            direction=d,
            key=key,
            stepsize=ls.stepsize,
            num_hvps=state.num_hvps + cg_its + 1 + refresh.astype(jnp.int32) * rank,
            cg_iterations=cg_its,
        )
        return unravel(x - ls.stepsize * d), new_state

    return Solver(init, step, optimality_fn=jax.grad(fn), max_steps=max_iterations)
