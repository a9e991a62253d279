"""Shared pieces of :mod:`opifex.optimization.scientific_integration.loss_balancing`.

Argument validation, the stacked-gradient shape checks and the weighted sum.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp


def check_num_terms(num_terms) -> int:
    """Return ``num_terms`` as an int >= 1 or raise."""
    try:
        k = operator.index(num_terms)
    except TypeError:
        raise TypeError(f"num_terms must be an int, got {num_terms!r}.") from None
    if k < 1:
        raise ValueError(f"num_terms must be >= 1 (one per loss term), got {k}.")
    return k


def check_int_at_least(name: str, value, lo: int) -> int:
    """Return ``value`` as an int >= ``lo`` or raise."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}.") from None
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}.")
    return v


def check_unit_interval(name: str, value, *, closed: bool) -> float:
    """Return ``value`` as a float in [0, 1) (``closed``: [0, 1]) or raise."""
    v = float(value)
    ok = 0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0
    if not ok:
        rule = "[0, 1]" if closed else "[0, 1) (it is the weight of the old value)"
        raise ValueError(f"{name} must be in {rule}, got {value!r}.")
    return v


def float_dtype(params) -> jnp.dtype:
    """Floating dtype for the weights: the promoted dtype of params' float leaves."""
    dtypes = [
        jnp.result_type(leaf)
        for leaf in jax.tree.leaves(params)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    ]
    if not dtypes:
        return jnp.result_type(float)
    return jnp.result_type(*dtypes)


def check_stacked(updates, num_terms: int, params=None) -> None:
    """Raise (at trace time, shapes are static) unless every leaf is ``(num_terms, *shape)``."""
    leaves = jax.tree.leaves(updates)
    if not leaves:
        raise ValueError("updates is an empty pytree; pass the stacked per-term gradients.")
    for leaf in leaves:
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num_terms:
            raise ValueError(
                f"every leaf of updates must have a leading axis of {num_terms} stacked "
                f"per-term gradients, got a leaf of shape {jnp.shape(leaf)}; use "
                "term_gradients (jax.jacrev of the (K,) term-loss vector) to build them."
            )
    if params is not None:
        p_shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]
        g_shapes = [jnp.shape(g)[1:] for g in leaves]
        if p_shapes != g_shapes:
            raise ValueError(
                f"stacked gradients do not match params: expected leaf shapes {p_shapes} "
                f"after the leading axis, got {g_shapes}."
            )


def check_vector(name: str, value, num_terms: int) -> jax.Array:
    """Return ``value`` as an array of shape ``(num_terms,)`` or raise (shapes are static)."""
    v = jnp.asarray(value)
    if v.shape != (num_terms,):
        raise ValueError(
            f"{name} must have shape ({num_terms},), one entry per loss term, got shape {v.shape}."
        )
    return v


def weighted_sum(updates, weights: jax.Array):
    """``sum_i w_i g_i`` over the leading axis of every leaf, keeping each leaf's dtype."""
    return jax.tree.map(lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), updates)


def per_term_abs_stats(updates) -> tuple[jax.Array, jax.Array]:
    """``(max_theta |g_i|, mean_theta |g_i|)`` over all parameter scalars, each ``(K,)``."""
    leaves = [g for g in jax.tree.leaves(updates) if math.prod(g.shape[1:])]
    maxes = [jnp.max(jnp.abs(g).reshape(g.shape[0], -1), axis=1) for g in leaves]
    sums = [jnp.sum(jnp.abs(g).reshape(g.shape[0], -1), axis=1) for g in leaves]
    count = sum(math.prod(g.shape[1:]) for g in leaves)
    return jnp.max(jnp.stack(maxes), axis=0), jnp.sum(jnp.stack(sums), axis=0) / count
