"""Lanczos iteration with full reorthogonalisation on Hessian-vector products.

The Hessian is never formed: the iteration touches it only through ``hvp(v) = H v``, one
forward-over-reverse product per step, so the cost of ``m`` steps is ``m`` gradient-sized
products plus ``O(m^2 n)`` for the reorthogonalisation. All shapes are fixed by ``m`` and
``n``, so the whole iteration is one ``lax.fori_loop`` and can sit under ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

_WHICH = ("largest", "smallest", "both")


def hessian_vector_product(
    fn: Callable[[Any, Any], jax.Array], params: Any, args: Any = None
) -> Callable[[jax.Array], jax.Array]:
    """Flat Hessian-vector product ``v -> H v`` of ``fn(params, args)`` at ``params``.

    ``params`` is flattened once with :func:`jax.flatten_util.ravel_pytree`; the product is
    forward-over-reverse (``jax.jvp`` of ``jax.grad``), which costs about two gradient
    evaluations and never forms ``H`` (Pearlmutter, 1994).

    Args:
        fn: Scalar objective ``fn(params, args)``.
        params: Pytree of float arrays at which the Hessian is taken.
        args: Data passed unchanged to ``fn``.

    Returns:
        A function mapping a flat vector of size ``n`` (the number of scalars in ``params``) to
        the flat vector ``H v``.

    Example:
        >>> import jax.numpy as jnp
        >>> fn = lambda p, a: 0.5 * jnp.sum(a * p["x"] ** 2)
        >>> hvp = hessian_vector_product(fn, {"x": jnp.ones(3)}, jnp.array([1.0, 2.0, 3.0]))
        >>> [round(float(t), 3) for t in hvp(jnp.ones(3))]
        [1.0, 2.0, 3.0]

    References:
        B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6
        (1994).
    """
    flat, unravel = ravel_pytree(params)

    def flat_grad(x):
        return ravel_pytree(jax.grad(fn)(unravel(x), args))[0]

    def hvp(v: jax.Array) -> jax.Array:
        return jax.jvp(flat_grad, (flat,), (jnp.asarray(v, flat.dtype),))[1]

    return hvp


def _dim_and_dtype(dim_or_params: Any) -> tuple[int, Any]:
    if isinstance(dim_or_params, bool):
        raise TypeError("dim_or_params must be an int or a pytree of arrays, got a bool.")
    if isinstance(dim_or_params, int):
        if dim_or_params < 1:
            raise ValueError(f"dim_or_params must be >= 1 when an int, got {dim_or_params}.")
        return dim_or_params, jnp.result_type(float)
    flat, _ = ravel_pytree(dim_or_params)
    if flat.size == 0:
        raise ValueError("dim_or_params holds no scalars; Lanczos needs a dimension >= 1.")
    dtype = flat.dtype if jnp.issubdtype(flat.dtype, jnp.floating) else jnp.result_type(float)
    return int(flat.size), dtype


def _orthogonalise(w: jax.Array, basis: jax.Array) -> jax.Array:
    # Classical Gram-Schmidt applied twice ("twice is enough", Giraud et al. 2005) keeps the
    # basis orthogonal to working precision; rows of ``basis`` not filled yet are zero.
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


def lanczos_ritz_values(
    hvp: Callable[[jax.Array], jax.Array], start: jax.Array, num_iterations: int
) -> jax.Array:
    """All ``m = min(num_iterations, n)`` Ritz values in ascending order (private core).

    ``start`` is a ``(2, n)`` float array of random vectors: the first starts the iteration,
    the second supplies fresh directions after a breakdown. Taking them as an argument keeps
    random-number generation (slow to compile on CPU) out of the compiled loop.
    """
    dim, dtype = start.shape[1], start.dtype
    m = min(num_iterations, dim)
    eps = jnp.finfo(dtype).eps

    def unit(x):
        return x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(dtype).tiny)

    spare = start[1]
    basis = jnp.zeros((m + 1, dim), dtype).at[0].set(unit(start[0]))
    alphas = jnp.zeros((m,), dtype)
    betas = jnp.zeros((m,), dtype)  # betas[j] couples basis rows j and j + 1

    def body(j, carry):
        basis, alphas, betas, scale = carry
        v = basis[j]
        w = jnp.asarray(hvp(v), dtype)
        alpha = jnp.vdot(v, w)
        w = _orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        # beta ~ 0 means the Krylov space is invariant: the Ritz values found so far are exact
        # eigenvalues, and a fresh random direction orthogonal to the basis continues the
        # search with a zero coupling (T becomes block diagonal) instead of dividing by ~0.
        breakdown = beta <= 100.0 * eps * scale

        def restart(_):
            r = jnp.roll(spare, j)
            return unit(_orthogonalise(r, basis)), jnp.zeros((), dtype)

        def proceed(_):
            return w / beta, beta

        nxt, beta = jax.lax.cond(breakdown, restart, proceed, None)
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta), scale

    init = (basis, alphas, betas, jnp.zeros((), dtype))
    _, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init)
    off = betas[: m - 1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tridiagonal)


class _ByIdentity:
    """Hashable stand-in for an unhashable callable (e.g. a method of a mutable object)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def hashable(fn: Callable) -> Callable:
    """``fn`` itself if hashable (so ``jax.jit`` caches on it), else an identity wrapper."""
    try:
        hash(fn)
    except TypeError:
        return _ByIdentity(fn)
    return fn


# One compiled program per (operator, n, m) instead of dozens of eagerly compiled small ops.
_jitted_ritz_values = jax.jit(lanczos_ritz_values, static_argnums=(0, 2))


def lanczos_eigenvalues(
    hvp: Callable[[jax.Array], jax.Array],
    dim_or_params: Any,
    *,
    num_iterations: int = 30,
    k: int = 5,
    key: jax.Array | None = None,
    which: str = "largest",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Extreme eigenvalues of a symmetric operator from ``m`` Lanczos steps.

    Lanczos builds an orthonormal basis ``V`` of the Krylov space
    ``span{v, Hv, ..., H^{m-1} v}`` from a random unit ``v`` in which ``T = V' H V`` is
    tridiagonal; the eigenvalues of ``T`` (Ritz values) approximate the extreme eigenvalues
    of ``H``, the outermost ones first. Each new vector is reorthogonalised against the
    whole basis (full reorthogonalisation), which prevents the spurious copies of converged
    eigenvalues plain Lanczos produces in floating point (Golub & Van Loan, Sec. 10.3). For
    ``m = n`` the Ritz values are all eigenvalues; for ``m < n`` the largest Ritz value is a
    lower bound on ``lambda_max`` and the smallest an upper bound on ``lambda_min``.

    Args:
        hvp: Flat ``v -> H v`` for a symmetric ``H`` (e.g. from
            :func:`hessian_vector_product`); must be traceable by JAX.
        dim_or_params: The dimension ``n`` as an int, or a pytree (flattened with
            ``ravel_pytree``) whose size and float dtype give ``n`` and the dtype.
        num_iterations: Lanczos steps; clipped to ``n``.
        k: Number of eigenvalues returned from each requested end of the spectrum.
        key: PRNG key of the random start vector; if None a fixed numpy-generated start
            (seed 0) is used, which avoids compiling JAX's random-number generator.
        which: ``"largest"`` (top-``k``, descending), ``"smallest"`` (bottom-``k``,
            ascending) or ``"both"`` (a tuple of the two).

    Returns:
        Array of ``k`` Ritz values, or a tuple ``(largest, smallest)`` for ``"both"``.

    Raises:
        ValueError: If ``num_iterations`` or ``k`` is below 1, ``k`` exceeds
            ``min(num_iterations, n)``, or ``which`` is unknown.

    Example:
        >>> import jax.numpy as jnp
        >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0, 10.0]))
        >>> top = lanczos_eigenvalues(lambda v: a @ v, 4, num_iterations=4, k=2)
        >>> [round(float(t), 3) for t in top]
        [10.0, 3.0]

    References:
        G. H. Golub and C. F. Van Loan, "Matrix Computations", 4th ed., Sec. 10.1-10.3.
    """
    for name, value in (("num_iterations", num_iterations), ("k", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}.")
    dim, dtype = _dim_and_dtype(dim_or_params)
    m = min(num_iterations, dim)
    if k > m:
        raise ValueError(
            f"k must be <= min(num_iterations, n) = {m}, got {k}; raise num_iterations or lower k."
        )
    if key is None:
        # numpy's generator: jax.random adds about a second of compilation per shape on CPU.
        start = jnp.asarray(np.random.default_rng(0).standard_normal((2, dim)), dtype)
    else:
        start = jax.random.normal(key, (2, dim), dtype)
    ritz = _jitted_ritz_values(hashable(hvp), start, num_iterations)
    largest, smallest = ritz[::-1][:k], ritz[:k]
    if which == "largest":
        return largest
    if which == "smallest":
        return smallest
    return largest, smallest
