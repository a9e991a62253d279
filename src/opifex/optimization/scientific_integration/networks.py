"""Fully connected networks as plain pytrees, and NNX models as ``(params, apply)`` pairs.

A physics-informed objective needs the network as a function ``u(params, points)`` of a
batch of points; a plain list of ``{"w", "b"}`` layers is the leanest such form (it ravels to
one vector for BFGS and Newton-CG), and :func:`from_nnx` gives the same form for any
``flax.nnx`` model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def init_mlp(key: jax.Array, sizes: Sequence[int], *, dtype=None) -> list[dict]:
    """Glorot-normal weights and zero biases for layer sizes ``(in, hidden..., out)``.

    This is the initialisation of Raissi et al. (2019) and Rathore et al. (2024).

    Args:
        key: PRNG key.
        sizes: Layer widths, input first, output last (at least two entries, all >= 1).
        dtype: Parameter dtype (default: JAX's default float).

    Returns:
        A list of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts.

    Raises:
        ValueError: If ``sizes`` has fewer than two entries or a non-positive width.

    Example:
        >>> import jax
        >>> params = init_mlp(jax.random.PRNGKey(0), (2, 20, 1))
        >>> [p["w"].shape for p in params]
        [(2, 20), (20, 1)]
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 2 positive ints (input ... output), got {sizes}.")
    dtype = dtype or jnp.result_type(float)
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        std = np.sqrt(2.0 / (n_in + n_out))
        layers.append(
            {
                "w": std * jax.random.normal(k, (n_in, n_out), dtype),
                "b": jnp.zeros((n_out,), dtype),
            }
        )
    return layers


def apply_mlp(
    params: Sequence[dict],
    points: jax.Array,
    *,
    lower: jax.Array | None = None,
    upper: jax.Array | None = None,
    activation: Callable = jnp.tanh,
) -> jax.Array:
    """Evaluate the MLP on a batch of points ``(N, d)``, returning ``(N,)`` for one output.

    Inputs are mapped from the box ``[lower, upper]`` to ``[-1, 1]`` first when both are
    given, which keeps ``tanh`` out of saturation whatever the physical units.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> params = init_mlp(jax.random.PRNGKey(0), (2, 8, 1))
        >>> apply_mlp(params, jnp.zeros((5, 2))).shape
        (5,)
    """
    h = points
    if lower is not None and upper is not None:
        h = 2.0 * (h - lower) / (upper - lower) - 1.0
    for layer in params[:-1]:
        h = activation(h @ layer["w"] + layer["b"])
    out = h @ params[-1]["w"] + params[-1]["b"]
    return out[..., 0] if out.shape[-1] == 1 else out


def from_nnx(model: nnx.Module) -> tuple[nnx.State, Callable[[nnx.State, jax.Array], jax.Array]]:
    """Split an NNX model into trainable parameters and a pure ``apply(params, points)``.

    Non-parameter state (batch statistics, RNG counters) is frozen at its current value.

    Returns:
        ``(params, apply)``; :func:`to_nnx` puts trained parameters back into a model.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> params, apply = from_nnx(model)
        >>> apply(params, jnp.ones((4, 2))).shape
        (4,)
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(p, points):
        out = nnx.merge(graphdef, p, rest)(points)
        return out[..., 0] if out.ndim == points.ndim and out.shape[-1] == 1 else out

    return params, apply


def to_nnx(model: nnx.Module, params: nnx.State) -> nnx.Module:
    """Write trained ``params`` (from :func:`from_nnx`) back into ``model`` and return it."""
    nnx.update(model, params)
    return model
