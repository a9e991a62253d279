"""Causal weighting of time-sliced residual losses (Wang, Sankaran & Perdikaris)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def causal_weights(slice_losses: ArrayLike, epsilon: ArrayLike) -> jax.Array:
    """Causal weights ``w_i = exp(-epsilon * sum_{k<i} L_k)`` (Wang, Sankaran & Perdikaris 2023).

    ``slice_losses`` are the residual losses of M time slices in time order; ``w_1 = 1`` and a
    slice gets weight only once the earlier slices are resolved. The weights carry no gradient
    (``stop_gradient``).

    Args:
        slice_losses: ``(M,)`` residual losses ordered by time slice.
        epsilon: Causality parameter (>= 0); may be a traced scalar (annealed).

    Returns:
        The ``(M,)`` weights.

    Raises:
        ValueError: If ``slice_losses`` is not 1-D or a concrete ``epsilon`` is negative.

    Example:
        >>> import jax.numpy as jnp
        >>> print([round(w, 4) for w in causal_weights(jnp.array([1.0, 2.0, 3.0]), 1.0).tolist()])
        [1.0, 0.3679, 0.0498]

    References:
        S. Wang, S. Sankaran, P. Perdikaris, "Respecting causality for training
        physics-informed neural networks", Comput. Methods Appl. Mech. Engrg. 421 (2024).
    """
    losses = jnp.asarray(slice_losses)
    if losses.ndim != 1:
        raise ValueError(f"slice_losses must be a 1-D vector (M,), got shape {losses.shape}.")
    try:
        negative = float(epsilon) < 0
    except jax.errors.ConcretizationTypeError:
        negative = False  # traced (e.g. an annealed schedule): cannot be checked here
    if negative:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}.")
    before = jnp.cumsum(losses) - losses
    return jax.lax.stop_gradient(jnp.exp(-epsilon * before))


def causal_loss(slice_losses: ArrayLike, epsilon: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Causally weighted residual loss ``(1/M) sum_i w_i L_i`` and its weights.

    See :func:`causal_weights` for ``w_i``; the gradient flows through ``L_i`` only.

    Args:
        slice_losses: ``(M,)`` residual losses ordered by time slice.
        epsilon: Causality parameter (>= 0).

    Returns:
        ``(loss, weights)``: the scalar weighted mean and the ``(M,)`` weights.

    Example:
        >>> import jax.numpy as jnp
        >>> loss, w = causal_loss(jnp.array([1.0, 2.0]), 0.0)
        >>> print(round(float(loss), 3))
        1.5
    """
    losses = jnp.asarray(slice_losses)
    weights = causal_weights(losses, epsilon)
    return jnp.mean(weights * losses), weights
