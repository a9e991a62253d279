"""Small pytree helpers used by the solvers (all jit-safe)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_select(pred, on_true, on_false):
    """Leafwise ``jnp.where(pred, on_true, on_false)`` for a scalar boolean ``pred``."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def tree_all_finite(tree) -> jax.Array:
    """True when every inexact leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    if not leaves:
        return jnp.asarray(True)
    return jnp.stack(leaves).all()


def tree_vdot(a, b) -> jax.Array:
    """Real inner product of two pytrees with the same structure."""
    parts = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y).real, a, b))
    return sum(parts[1:], parts[0]) if parts else jnp.asarray(0.0)


def tree_norm(a) -> jax.Array:
    """Euclidean norm of a pytree."""
    return jnp.sqrt(tree_vdot(a, a))
