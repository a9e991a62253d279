"""A minimal solver on the core protocol, used in docs and tests of the driver itself."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from opifex.optimization.core._solver import Solver
from opifex.optimization.core._status import Status
from opifex.optimization.core._tree import tree_norm


class GradientDescentState(NamedTuple):
    count: jax.Array  # int32 [], steps taken
    status: jax.Array  # int32 [], Status code
    value: jax.Array  # float [], objective at params
    grad: object  # pytree like params, gradient at params


def gradient_descent(fn, learning_rate: float = 0.1, gtol: float = 1e-8) -> Solver:
    """Fixed-step gradient descent ``x <- x - lr * grad f(x)``; stops at ``||grad|| <= gtol``."""
    value_and_grad = jax.value_and_grad(fn)

    def status_of(grad):
        done = tree_norm(grad) <= gtol
        return jnp.where(done, Status.CONVERGED, Status.RUNNING).astype(jnp.int32)

    def init(params, args):
        value, grad = value_and_grad(params, args)
        return GradientDescentState(jnp.int32(0), status_of(grad), value, grad)

    def step(params, state, args):
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, state.grad)
        value, grad = value_and_grad(params, args)
        return params, GradientDescentState(state.count + 1, status_of(grad), value, grad)

    return Solver(init, step, optimality_fn=jax.grad(fn))
