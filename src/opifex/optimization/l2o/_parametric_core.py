"""Amortized (parametric) solvers: a network from problem parameters to a solution.

The functional core behind :mod:`opifex.optimization.l2o.parametric_solver`: the MLP, the
self-supervised training loop (``lax.scan`` over chunks of Adam steps, one compile) and the
batched solve pipeline ``network -> decoder -> refine -> project``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

_ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}
_CHUNK = 128


def _check(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {rule}, got {value!r}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class ParametricSolverConfig:
    """Network and training settings of a :class:`ParametricSolver`.

    Attributes:
        hidden_sizes: Widths of the MLP's hidden layers (each >= 1).
        activation: Hidden activation, one of ``relu``, ``tanh``, ``gelu``, ``silu``.
        learning_rate: Adam step size (> 0).
        train_steps: Adam steps taken by ``fit`` (>= 1).
        batch_size: Instances drawn (with replacement) per step (>= 1).
        penalty_weight: Weight of the squared constraint violation added to the objective in
            the training loss (DC3's soft loss); >= 0, unused without a ``violation_fn``.
        seed: Seed of the network initialisation and of the minibatch draws.
    """

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    learning_rate: float = 1e-3
    train_steps: int = 2000
    batch_size: int = 256
    penalty_weight: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = self.hidden_sizes
        ok = isinstance(sizes, tuple) and all(_is_int(s) and s >= 1 for s in sizes)
        _check(ok, "hidden_sizes", sizes, "a tuple of ints >= 1, e.g. (256, 256)")
        _check(
            self.activation in _ACTIVATIONS,
            "activation",
            self.activation,
            f"one of {sorted(_ACTIVATIONS)}",
        )
        lr = self.learning_rate
        _check(isinstance(lr, (int, float)) and lr > 0, "learning_rate", lr, "a float > 0")
        for name in ("train_steps", "batch_size"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, name, value, "an int >= 1")
        w = self.penalty_weight
        _check(isinstance(w, (int, float)) and w >= 0, "penalty_weight", w, "a float >= 0")
        _check(_is_int(self.seed), "seed", self.seed, "an int")

    def replace(self, **changes) -> ParametricSolverConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


class MLP(nnx.Module):
    """Fully connected network ``R^num_inputs -> R^num_outputs`` with a linear last layer.

    It computes in its parameters' dtype (float32) even under x64, which halves the cost of the
    cheap-but-wide part of the pipeline; the output comes back in the input's dtype so the
    stages after it (completion, refinement, projection) keep float64 accuracy.
    """

    def __init__(
        self,
        num_inputs: int,
        num_outputs: int,
        hidden_sizes: Sequence[int],
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        sizes = (num_inputs, *hidden_sizes, num_outputs)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        dtype = x.dtype
        x = x.astype(self.layers[0].kernel[...].dtype)
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x).astype(dtype)


def _init_mlp(num_inputs, num_outputs, hidden_sizes, activation, seed):
    """``(graphdef, params)`` of a fresh MLP: LeCun-normal kernels, zero biases.

    Drawn with NumPy from ``seed``: a new architecture then costs no compilation (flax's own
    initializers run as a dozen small eager JAX programs, each compiled on first use).
    """
    graphdef, abstract = nnx.split(
        nnx.eval_shape(
            lambda: MLP(num_inputs, num_outputs, hidden_sizes, activation, rngs=nnx.Rngs(0))
        )
    )
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if any(getattr(k, "key", None) == "bias" for k in path):
            return jnp.asarray(np.zeros(leaf.shape), leaf.dtype)
        return jnp.asarray(rng.normal(0.0, np.sqrt(1.0 / leaf.shape[0]), leaf.shape), leaf.dtype)

    return graphdef, jax.tree.map_with_path(draw, abstract)


class TrainingHistory(NamedTuple):
    """What ``fit`` did.

    Attributes:
        loss: Training loss (minibatch mean) after every step, shape ``(train_steps,)``.
        seconds: Wall-clock seconds of the whole ``fit``, compilation included.
    """

    loss: np.ndarray
    seconds: float


def _identity_decoder(out, x, data):
    return out


TRACES = {"solve_batch": 0}  # traces of solve_batch, for tests of "one compile per shape"


@functools.partial(jax.jit, static_argnames=("graphdef", "decoder", "refine", "project"))
def solve_batch(params, X, data, *, graphdef, decoder, refine, project):
    """The batched pipeline ``network -> decoder -> refine -> project`` on ``X (N, m)``."""
    TRACES["solve_batch"] += 1

    def one(x):
        y = decoder(nnx.merge(graphdef, params)(x), x, data)
        if refine is not None:
            y = refine(y, x, data)
        if project is not None:
            y = project(y, x, data)
        return y

    return jax.vmap(one)(X)


def _adam(learning_rate):
    # The step size lives in the optimizer state, so solvers differing only in it (or in the
    # penalty weight, or the seed) share one compiled training loop.
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "objective_fn", "violation_fn", "decoder", "batch_size", "length"),
)
def train_chunk(
    params,
    opt_state,
    X,
    data,
    key,
    first_step,
    total_steps,
    penalty_weight,
    *,
    graphdef,
    objective_fn,
    violation_fn,
    decoder,
    batch_size,
    length,
):
    """Adam steps ``first_step .. first_step + length - 1`` by ``lax.scan``.

    Step ``i`` draws its minibatch with ``fold_in(key, i)``, so a run is reproducible whatever
    the chunking; steps at or past ``total_steps`` leave the parameters and optimizer state as
    they are, so runs of different lengths share one compiled loop.
    """
    optimizer = _adam(0.0)

    def loss_fn(params, xb):
        net = nnx.merge(graphdef, params)
        y = jax.vmap(decoder, in_axes=(0, 0, None))(net(xb), xb, data)
        per = jax.vmap(objective_fn, in_axes=(0, 0, None))(y, xb, data)
        if violation_fn is not None:
            v = jax.vmap(violation_fn, in_axes=(0, 0, None))(y, xb, data)
            per = per + penalty_weight * jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)
        return jnp.mean(per)

    def one_step(carry, step):
        params, opt_state = carry
        idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, X.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, X[idx])
        updates, new_state = optimizer.update(grads, opt_state, params)
        new = (optax.apply_updates(params, updates), new_state)
        active = step < total_steps
        return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, (params, opt_state)), loss

    steps = first_step + jnp.arange(length)
    (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), steps)
    return params, opt_state, losses


class ParametricSolver:
    """An amortized solver: an MLP maps problem parameters ``x`` to a solution ``y``.

    Trained self-supervised (no solver labels) by Adam on the mean over instances of
    ``objective_fn(y, x, data) + penalty_weight * ||violation_fn(y, x, data)||^2`` with
    ``y = decoder(net(x), x, data)`` (Donti, Rolnick & Kolter 2021, "DC3", Sec. 3; the soft
    loss of their Eq. 1). At solve time the decoded output is optionally refined (a few steps
    of a real solver, ``refine(y, x, data)``) and projected (``project(y, x, data)``, e.g. an
    exact feasibility projection). Every stage is a pure single-instance function; ``solve``
    vmaps and jits the pipeline once per batch shape. ``data`` (any pytree of arrays) carries
    the fixed problem data into every stage as an argument, never as a closure.

    Args:
        objective_fn: ``(y, x, data) -> scalar`` to minimize.
        num_params: Size of the parameter vector ``x``.
        num_outputs: Size of the network output (the decoder maps it to ``y``).
        config: A :class:`ParametricSolverConfig`; defaults if ``None``.
        data: Fixed problem data passed to every stage.
        violation_fn: ``(y, x, data) -> array`` of constraint violations (0 when feasible).
        decoder: ``(out, x, data) -> y``, differentiable, used in training and solving.
        refine: ``(y, x, data) -> y``, solve-time refinement (see ``solver_refinement``).
        project: ``(y, x, data) -> y``, solve-time projection.

    Raises:
        ValueError: If ``num_params`` or ``num_outputs`` is not a positive int.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from opifex.optimization.l2o.parametric_solver import (
        ...     ParametricSolver, ParametricSolverConfig)
        >>> fn = lambda y, x, data: jnp.sum((y - 2.0 * x) ** 2)
        >>> cfg = ParametricSolverConfig(hidden_sizes=(16,), train_steps=256, learning_rate=1e-2)
        >>> solver = ParametricSolver(fn, num_params=2, num_outputs=2, config=cfg)
        >>> X = np.random.default_rng(0).uniform(-1, 1, (256, 2))
        >>> history = solver.fit(X)
        >>> bool(history.loss[-1] < 0.05 * history.loss[0])
        True
    """

    def __init__(
        self,
        objective_fn: Callable,
        *,
        num_params: int,
        num_outputs: int,
        config: ParametricSolverConfig | None = None,
        data: Any = None,
        violation_fn: Callable | None = None,
        decoder: Callable | None = None,
        refine: Callable | None = None,
        project: Callable | None = None,
    ):
        for name, value in (("num_params", num_params), ("num_outputs", num_outputs)):
            _check(_is_int(value) and value >= 1, name, value, "an int >= 1")
        self.config = ParametricSolverConfig() if config is None else config
        self.num_params = num_params
        self.num_outputs = num_outputs
        self.objective_fn = objective_fn
        self.violation_fn = violation_fn
        self.decoder = _identity_decoder if decoder is None else decoder
        self.data = data
        cfg = self.config
        self.graphdef, self.params = _init_mlp(
            num_params, num_outputs, cfg.hidden_sizes, cfg.activation, cfg.seed
        )
        self.training_seconds = 0.0
        stages = {"graphdef": self.graphdef, "decoder": self.decoder}
        self._solve = functools.partial(solve_batch, **stages, refine=refine, project=project)
        self._predict = functools.partial(solve_batch, **stages, refine=None, project=None)

    def _check_x(self, X) -> tuple[jax.Array, bool]:
        X = jnp.asarray(X)
        single = X.ndim == 1
        Xb = X[None] if single else X
        if Xb.ndim != 2 or Xb.shape[1] != self.num_params:
            got = Xb.shape[-1] if Xb.ndim >= 1 else 0
            raise ValueError(
                f"x must have {self.num_params} entries (num_params of this trained solver), got "
                f"{got} (array shape {tuple(X.shape)}); pass x of shape ({self.num_params},) or "
                f"a batch of shape (N, {self.num_params})."
            )
        return Xb, single

    def fit(
        self, X_train, *, callback: Callable[[int, float], None] | None = None, progress=None
    ) -> TrainingHistory:
        """Train the network on the parameter samples ``X_train`` (shape ``(N, num_params)``).

        Args:
            X_train: Training parameters; no solutions are needed.
            callback: Called as ``callback(steps_done, last_loss)`` after every chunk of
                (at most) 128 steps (e.g. to log progress).
            progress: A ``rich.progress.Progress``; a task advancing with the steps is added.

        Returns:
            A :class:`TrainingHistory`.
        """
        Xb, _ = self._check_x(X_train)
        cfg = self.config
        t0 = time.perf_counter()
        # One compiled call instead of an eager zeros_like (a compilation) per leaf shape.
        opt_state = jax.jit(_adam(cfg.learning_rate).init)(self.params)
        static = {
            "graphdef": self.graphdef,
            "objective_fn": self.objective_fn,
            "violation_fn": self.violation_fn,
            "decoder": self.decoder,
            "batch_size": cfg.batch_size,
        }
        weight = jnp.asarray(cfg.penalty_weight, Xb.dtype)
        key = jax.random.key(cfg.seed + 1)
        task = progress.add_task("parametric solver", total=cfg.train_steps) if progress else None
        losses, params, done = [], self.params, 0
        # Chunks of a power-of-two length (at most _CHUNK) keep the number of compiled loops
        # small; the steps past train_steps in the last chunk are no-ops.
        length = min(_CHUNK, 1 << (cfg.train_steps - 1).bit_length())
        while done < cfg.train_steps:
            n = min(length, cfg.train_steps - done)
            params, opt_state, loss = train_chunk(
                params,
                opt_state,
                Xb,
                self.data,
                key,
                done,
                cfg.train_steps,
                weight,
                length=length,
                **static,
            )
            losses.append(np.asarray(loss)[:n])
            done += n
            if progress is not None:
                progress.update(task, advance=n, description=f"train loss {float(loss[-1]):.4g}")
            if callback is not None:
                callback(done, float(loss[-1]))
        self.params = params
        self.training_seconds = time.perf_counter() - t0
        return TrainingHistory(np.concatenate(losses), self.training_seconds)

    def predict(self, X) -> jax.Array:
        """Network and decoder only (no refinement, no projection), batched like ``solve``."""
        Xb, single = self._check_x(X)
        Y = self._predict(self.params, Xb, self.data)
        return Y[0] if single else Y

    def solve(self, X) -> jax.Array:
        """Solutions for one ``x`` (shape ``(num_params,)``) or a batch ``(N, num_params)``.

        Raises:
            ValueError: If ``x`` does not have ``num_params`` entries (both sizes are named).
        """
        Xb, single = self._check_x(X)
        Y = self._solve(self.params, Xb, self.data)
        return Y[0] if single else Y

    def solve_fn(self) -> Callable:
        """The pure batched pipeline ``(params, X, data) -> Y`` (for timing or embedding)."""
        return self._solve
