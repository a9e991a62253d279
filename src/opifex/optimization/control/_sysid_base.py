"""What every system-identification model shares: the model protocol, RK4 and a small MLP.

A model *description* is a static object (hashable by identity, never traced) holding the
structure of a model; its numbers live in a separate parameter pytree, so that
``dynamics(x, u, params)`` is a pure function that ``jit``, ``grad`` and ``vmap`` accept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _check_dim(name: str, value, *, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}.")
    return value


def check_positive(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is not a finite number > 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 < float(value) < float("inf")):
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}.")
    return float(value)


def rk4_step(vector_field: Callable, x, u, params, dt, substeps: int):
    """Advance ``dx/dt = vector_field(x, u, params)`` by ``dt`` with ``substeps`` RK4 steps.

    The input is held constant over the sample (zero-order hold). Classical fourth-order
    Runge-Kutta (Hairer, Norsett & Wanner, *Solving ODEs I*, Sec. II.1).
    """
    h = dt / substeps

    def one(x):
        k1 = vector_field(x, u, params)
        k2 = vector_field(x + 0.5 * h * k1, u, params)
        k3 = vector_field(x + 0.5 * h * k2, u, params)
        k4 = vector_field(x + h * k3, u, params)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    for _ in range(substeps):
        x = one(x)
    return x


class Model:
    """Base of the model descriptions used by :class:`~.system_id.SystemIdentifier`.

    Subclasses set ``state_dim``, ``input_dim``, ``output_dim``, ``dt`` and implement
    :meth:`init_params` and either :meth:`vector_field` (continuous time, ``continuous =
    True``, integrated by RK4 over one sample) or :meth:`dynamics` (discrete time).
    """

    state_dim: int
    input_dim: int
    output_dim: int
    dt: float = 1.0
    continuous: bool = False
    substeps: int = 1
    # Whether least_squares() is the exact minimiser of the one-step loss.
    exact_least_squares: bool = False

    def init_params(self, key: jax.Array):
        """Initial parameter pytree (``key`` seeds neural parts)."""
        raise NotImplementedError

    def vector_field(self, x, u, params):
        """``dx/dt`` of a continuous-time model."""
        raise NotImplementedError

    def dynamics(self, x, u, params):
        """One sample ahead: ``x_{k+1} = f(x_k, u_k; params)`` (RK4 for continuous time)."""
        if not self.continuous:
            raise NotImplementedError
        return rk4_step(self.vector_field, x, u, params, self.dt, self.substeps)

    def output(self, x, params):
        """Measured output ``y = h(x; params)``; the state itself by default."""
        del params
        return x

    def initial_state(self, y0, params):
        """A guess of the state from the first measured output (the output where it is the
        state, zero-padded otherwise)."""
        del params
        x0 = jnp.zeros((self.state_dim,), jnp.result_type(y0))
        n = min(self.state_dim, self.output_dim)
        return x0.at[:n].set(y0[:n])

    def state_from_history(self, outputs, inputs):
        """The state at the last of ``n`` measured samples, read off ``outputs`` (n, ny) and
        ``inputs`` (n, nu), where the state is made of such data; ``None`` otherwise."""
        del outputs, inputs
        return None

    def least_squares(self, outputs, inputs):
        """Closed-form least-squares parameters from ``(B, T, ny)`` outputs and ``(B, T, nu)``
        inputs, or ``None`` where the model has none."""
        del outputs, inputs
        return None

    @property
    def full_state(self) -> bool:
        """Whether the measured output is the whole state (``y = x``)."""
        return type(self).output is Model.output

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(state_dim={self.state_dim}, input_dim={self.input_dim}, "
            f"output_dim={self.output_dim}, dt={self.dt})"
        )


class MLP(nnx.Module):
    """Tanh multilayer perceptron whose last layer starts at ``last_scale`` times its
    default initialisation (0 makes a residual network start as the identity correction)."""

    def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs, last_scale: float = 1.0) -> None:
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        last = self.layers[-1]
        last.kernel[...] = last.kernel[...] * last_scale

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


def make_mlp(sizes: Sequence[int], seed_key: jax.Array, last_scale: float = 1.0):
    """``(graphdef, params)`` of an :class:`MLP`; apply with :func:`apply_mlp`."""
    seed = int(jax.random.randint(seed_key, (), 0, 2**31 - 1))
    graphdef, state = nnx.split(MLP(sizes, rngs=nnx.Rngs(seed), last_scale=last_scale))
    return graphdef, state


def apply_mlp(graphdef, params, x):
    """Evaluate the MLP ``graphdef`` with parameters ``params`` at ``x`` (pure)."""
    return nnx.merge(graphdef, params)(x)


def check_hidden(hidden) -> tuple[int, ...]:
    """``hidden`` layer widths as a tuple of ints >= 1."""
    if isinstance(hidden, int):
        hidden = (hidden,)
    hidden = tuple(hidden)
    for h in hidden:
        _check_dim("hidden layer width", h)
    return hidden


check_dim = _check_dim
