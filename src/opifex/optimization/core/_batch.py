"""Solving a batch of problems: ``vmap`` on one device, sharded over all local devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from opifex.optimization.core._solver import Solution, Solver, solve


def solve_batch(
    solver: Solver,
    params,
    args=None,
    *,
    max_steps: int = 256,
    devices=None,
) -> Solution:
    """Solve a batch of independent problems stacked along the leading axis of every leaf.

    The batch is split evenly over ``devices`` (all local devices by default) with a
    one-axis ``jax.sharding.Mesh``; on one device this is plain ``vmap``. A batch whose size
    is not a multiple of the device count is padded with copies of its last problem, and the
    padding is dropped from the result.

    Args:
        solver: A :class:`Solver`.
        params: Initial guesses, each leaf with a leading batch axis.
        args: Problem data, each leaf with the same leading batch axis (or ``None``).
        max_steps: Step budget per problem.
        devices: Devices to shard over; defaults to ``jax.local_devices()``.

    Returns:
        A batched :class:`Solution` (every field has the leading batch axis).

    Raises:
        ValueError: If the leaves disagree on the batch size.
    """
    leaves = jax.tree.leaves((params, args))
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"every leaf of params and args needs the same leading batch axis; got sizes {sizes}."
        )
    (batch,) = sizes
    devices = list(jax.local_devices() if devices is None else devices)
    n_dev = len(devices)
    pad = (-batch) % n_dev

    def pad_leaf(x):
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x

    params, args = jax.tree.map(pad_leaf, (params, args))
    batched = jax.vmap(lambda p, a: solve(solver, p, a, max_steps=max_steps, implicit_diff=False))
    if n_dev > 1:
        mesh = Mesh(np.asarray(devices), ("batch",))
        sharding = NamedSharding(mesh, PartitionSpec("batch"))
        params, args = jax.device_put((params, args), sharding)
        sol = jax.jit(batched, out_shardings=sharding)(params, args)
    else:
        sol = jax.jit(batched)(params, args)
    return jax.tree.map(lambda x: x[:batch], sol)
