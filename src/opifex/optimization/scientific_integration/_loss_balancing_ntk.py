"""Trace of a residual's neural tangent kernel, for
:func:`opifex.optimization.scientific_integration.loss_balancing.ntk_weights`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from opifex.optimization.scientific_integration._loss_balancing_utils import check_int_at_least


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _ntk_trace(
    residual_fn: Callable[[Any, Any], jax.Array],
    params,
    points,
    num_probes: int | None,
    key: jax.Array | None,
    chunk_size: int,
) -> jax.Array:
    """Exact ``||J||_F^2`` by chunked per-point gradients, or Hutchinson with ``num_probes``."""
    if num_probes is None:
        # Row j of J is the gradient of residual j alone, so each point is pushed through
        # residual_fn as a batch of one; lax.map vmaps chunk_size points at a time, which
        # bounds memory by chunk_size * num_params instead of N * num_params.
        def row_sq_norm(point):
            batch = jax.tree.map(lambda x: x[None], point)
            grad = jax.grad(lambda p: residual_fn(p, batch)[0])(params)
            return _sq_norm(grad)

        return jnp.sum(jax.lax.map(row_sq_norm, points, batch_size=chunk_size))

    residuals, vjp_fn = jax.vjp(lambda p: residual_fn(p, points), params)
    probes = jax.random.rademacher(key, (num_probes, *residuals.shape), dtype=residuals.dtype)
    # E_v ||J^T v||^2 = tr(J J^T) = ||J||_F^2 for Rademacher v (Hutchinson 1990).
    sq = jax.lax.map(lambda v: _sq_norm(vjp_fn(v)), probes, batch_size=chunk_size)
    return jnp.mean(sq)


def ntk_trace(
    residual_fn: Callable[[Any, Any], jax.Array],
    params,
    points,
    *,
    num_probes: int | None = None,
    key: jax.Array | None = None,
    chunk_size: int = 64,
) -> jax.Array:
    """Trace of a residual's neural tangent kernel, ``tr(J J^T) = ||d r / d theta||_F^2``.

    Exact by default: row ``j`` of ``J`` is the gradient of ``residual_fn(params,
    points[j:j+1])[0]``, computed ``chunk_size`` points at a time with ``lax.map``, so memory
    is bounded by ``chunk_size * num_params``; this assumes residual ``j`` depends only on
    point ``j`` (true of pointwise PDE residuals). With ``num_probes``, Hutchinson's unbiased
    estimator ``mean_v ||J^T v||^2`` over Rademacher probes ``v`` via one ``jax.vjp`` (no
    pointwise assumption); its variance is ``2 (||J J^T||_F^2 - sum_j (J J^T)_jj^2) /
    num_probes``.

    Args:
        residual_fn: ``residual_fn(params, points) -> (N,)`` residual vector.
        params: Pytree of parameters.
        points: Array (or pytree of arrays) with a leading axis of N points.
        num_probes: Number of Hutchinson probes (>= 1); ``None`` for the exact trace.
        key: PRNG key for the probes; required when ``num_probes`` is given.
        chunk_size: Points (or probes) processed together.

    Returns:
        The trace, a float scalar.

    Raises:
        ValueError: If the residual is not a vector, or ``num_probes`` is given without a key.

    Example:
        >>> import jax.numpy as jnp
        >>> r = lambda w, x: w[0] * x + w[1] * x**2
        >>> print(round(float(ntk_trace(r, jnp.ones(2), jnp.array([1.0, 2.0]))), 3))
        22.0
    """
    out = jax.eval_shape(residual_fn, params, points)
    if not hasattr(out, "shape") or len(out.shape) != 1:
        raise ValueError(
            "residual_fn must return a 1-D residual vector (N,), got "
            f"{getattr(out, 'shape', type(out))}."
        )
    chunk_size = check_int_at_least("chunk_size", chunk_size, 1)
    if num_probes is not None:
        num_probes = check_int_at_least("num_probes", num_probes, 1)
        if key is None:
            raise ValueError("key is required when num_probes is given (Hutchinson probes).")
    return _ntk_trace(residual_fn, params, points, num_probes, key, chunk_size)
