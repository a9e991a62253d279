"""Warm starts for sequences of related problems, usable with any solver of the project.

A warm start is three pure functions over a bounded memory of solved problems, in the
``init``/``step`` shape of the project's solvers::

    ws = warm_start("nearest_neighbor", capacity=64)
    memory = ws.init(features_like, solution_like)
    start = ws.propose(memory, features, default)  # default when the memory is empty
    ... solve from ``start`` with any solver ...
    memory = ws.record(memory, features, solution)

``features`` is a 1-D vector describing a problem (its parameters: data, right-hand side,
a physical constant...); solutions are any pytree, stored raveled. The memory is a ring
buffer: once ``capacity`` problems are recorded, each new one replaces the oldest.

Strategies:

- ``"previous_params"``: the most recently recorded solution (features are not needed).
- ``"nearest_neighbor"``: the stored solution whose features are closest in Euclidean norm.
- ``"learned"``: an affine predictor ``s(f) = mu_s + (f - mu_f) B`` fitted by ridge
  regression on the stored ``(features, solution)`` pairs, refitted at every proposal
  (Hastie, Tibshirani & Friedman, *Elements of Statistical Learning*, Sec. 3.4.1; the
  intercept is not penalized, so the data are centred first). The penalty is
  ``(ridge + 1e-12) * mean(||f - mu_f||^2)`` (scale-free); ``ridge=0`` is least squares up to
  that floor, and recovers an affine solution map from ``d + 1`` points in general position
  (``d`` features) to about 1e-12 relative.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

STRATEGIES = ("previous_params", "nearest_neighbor", "learned")


def check_strategy(strategy: str, name: str = "strategy", extra: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming the valid strategies unless ``strategy`` is one of them."""
    valid = (*extra, *STRATEGIES)
    if strategy not in valid:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(s) for s in valid)}; got {strategy!r}."
        )


class WarmStartMemory(NamedTuple):
    """Bounded memory of solved problems (a ring buffer)."""

    features: jax.Array  # float (capacity, num_features), one row per stored problem
    solutions: jax.Array  # float (capacity, num_params), the raveled solutions
    count: jax.Array  # int32 [], problems recorded so far; the next goes to count % capacity


class WarmStart(NamedTuple):
    """A warm-start strategy as pure functions over a :class:`WarmStartMemory`.

    Attributes:
        init: ``(features_like, solution_like) -> memory`` (empty; only shapes are read;
            ``features_like`` may be ``None`` for ``"previous_params"``).
        propose: ``(memory, features, default) -> params`` shaped like ``default``;
            ``default`` when the memory is empty.
        record: ``(memory, features, solution) -> memory``.
        strategy: The strategy's name.
        capacity: Most problems kept.
    """

    init: Callable[[Any, Any], WarmStartMemory]
    propose: Callable[[WarmStartMemory, Any, Any], Any]
    record: Callable[[WarmStartMemory, Any, Any], WarmStartMemory]
    strategy: str
    capacity: int


def _features(features, num_features: int, strategy: str) -> jax.Array:
    if features is None:
        if strategy != "previous_params" and num_features:
            raise ValueError(
                f"strategy {strategy!r} needs the problem's features (a 1-D vector), got None; "
                "pass features=... or use strategy='previous_params'."
            )
        return jnp.zeros((num_features,))
    f = jnp.asarray(features)
    if f.shape != (num_features,):
        raise ValueError(
            f"features must have shape ({num_features},) like the memory's, got {f.shape}; "
            "describe every problem of a family by a vector of the same length."
        )
    return f


def _valid(memory: WarmStartMemory) -> jax.Array:
    capacity = memory.solutions.shape[0]
    return jnp.arange(capacity) < jnp.minimum(memory.count, capacity)


def _ridge_predict(memory: WarmStartMemory, f: jax.Array, ridge: float) -> jax.Array:
    feats, sols = memory.features, memory.solutions
    w = _valid(memory).astype(sols.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mu_f = (w @ feats) / n
    mu_s = (w @ sols) / n
    fc = (feats - mu_f) * w[:, None]
    sc = (sols - mu_s) * w[:, None]
    d = feats.shape[1]
    # QR of the augmented system [Fc; sqrt(lam) I] B = [Sc; 0] is the ridge solution without
    # squaring Fc's condition number (and is far cheaper than an SVD on CPU). The 1e-12 floor
    # keeps it defined when fewer problems than features are stored; in the directions the
    # data do not span, Fc'Sc vanishes, so the floor adds no spurious slope there.
    scale = jnp.sum(fc**2) / n
    lam = (ridge + 1e-12) * scale + jnp.finfo(fc.dtype).tiny
    a = jnp.concatenate([fc, jnp.sqrt(lam) * jnp.eye(d, dtype=fc.dtype)])
    b = jnp.concatenate([sc, jnp.zeros((d, sc.shape[1]), sc.dtype)])
    q, r = jnp.linalg.qr(a)
    coef = jax.scipy.linalg.solve_triangular(r, q.T @ b)
    return mu_s + (f - mu_f) @ coef


@functools.partial(jax.jit, static_argnames=("strategy", "ridge"))
def _propose_flat(memory: WarmStartMemory, f, default_flat, strategy: str, ridge: float):
    capacity = memory.solutions.shape[0]
    if strategy == "previous_params":
        guess = memory.solutions[(memory.count - 1) % capacity]
    elif strategy == "nearest_neighbor":
        dist = jnp.sum((memory.features - f) ** 2, axis=1)
        guess = memory.solutions[jnp.argmin(jnp.where(_valid(memory), dist, jnp.inf))]
    else:
        guess = _ridge_predict(memory, f, ridge)
    guess = guess.astype(default_flat.dtype)
    return jnp.where(memory.count > 0, guess, default_flat)


@jax.jit
def _record_flat(memory: WarmStartMemory, f, solution_flat) -> WarmStartMemory:
    slot = memory.count % memory.solutions.shape[0]
    return WarmStartMemory(
        memory.features.at[slot].set(f.astype(memory.features.dtype)),
        memory.solutions.at[slot].set(solution_flat.astype(memory.solutions.dtype)),
        memory.count + 1,
    )


def warm_start(strategy: str, *, capacity: int = 64, ridge: float = 1e-8) -> WarmStart:
    """A warm-start strategy over a memory of at most ``capacity`` solved problems.

    The strategies are described in the module docstring. Every function is pure and may be
    called under ``jit`` (``strategy`` and shapes are static; ``propose`` and ``record``
    compile once per shape).

    Args:
        strategy: ``"previous_params"``, ``"nearest_neighbor"`` or ``"learned"``.
        capacity: Most problems kept (>= 1); older ones are overwritten first.
        ridge: Relative ridge penalty of the ``"learned"`` predictor (>= 0).

    Returns:
        A :class:`WarmStart`.

    Raises:
        ValueError: For an unknown strategy (the valid ones are listed), ``capacity < 1`` or
            ``ridge < 0``.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization.meta_optimization import warm_start
        >>> ws = warm_start("nearest_neighbor", capacity=8)
        >>> memory = ws.init(jnp.zeros(1), jnp.zeros(2))
        >>> for s in (0.0, 1.0, 2.0):  # solutions of problems with parameter s
        ...     memory = ws.record(memory, jnp.array([s]), jnp.array([s, -s]))
        >>> ws.propose(memory, jnp.array([1.2]), jnp.zeros(2)).tolist()
        [1.0, -1.0]
    """
    check_strategy(strategy)
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}.")
    if not isinstance(ridge, (int, float)) or ridge < 0:
        raise ValueError(f"ridge must be a float >= 0, got {ridge!r}.")
    ridge = float(ridge)

    def init(features_like, solution_like) -> WarmStartMemory:
        flat, _ = ravel_pytree(solution_like)
        if features_like is None:
            if strategy != "previous_params":
                _features(None, 1, strategy)
            num_features, dtype = 0, flat.dtype
        else:
            f = jnp.asarray(features_like)
            if f.ndim != 1:
                raise ValueError(
                    f"features must be a 1-D vector, got shape {f.shape}; ravel them first."
                )
            num_features, dtype = f.shape[0], jnp.result_type(f.dtype, flat.dtype)
        return WarmStartMemory(
            jnp.zeros((capacity, num_features), dtype),
            jnp.zeros((capacity, flat.size), flat.dtype),
            jnp.zeros((), jnp.int32),
        )

    def propose(memory: WarmStartMemory, features, default):
        flat, unravel = ravel_pytree(default)
        if flat.size != memory.solutions.shape[1]:
            raise ValueError(
                f"default has {flat.size} entries but the memory stores solutions of "
                f"{memory.solutions.shape[1]}; use one memory per problem family."
            )
        f = _features(features, memory.features.shape[1], strategy)
        return unravel(_propose_flat(memory, f, flat, strategy, ridge))

    def record(memory: WarmStartMemory, features, solution) -> WarmStartMemory:
        flat, _ = ravel_pytree(solution)
        if flat.size != memory.solutions.shape[1]:
            raise ValueError(
                f"solution has {flat.size} entries but the memory stores solutions of "
                f"{memory.solutions.shape[1]}; use one memory per problem family."
            )
        f = _features(features, memory.features.shape[1], strategy)
        return _record_flat(memory, f, flat)

    return WarmStart(init, propose, record, strategy, capacity)


class WarmStarter:
    """Host-side holder of a :func:`warm_start` strategy and its memory.

    The memory is created at the first :meth:`record` (from that problem's shapes); before
    it, :meth:`propose` returns the default.

    Args:
        strategy: As for :func:`warm_start`.
        capacity: As for :func:`warm_start`.
        ridge: As for :func:`warm_start`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import create_levenberg_marquardt_solver
        >>> from opifex.optimization.meta_optimization import WarmStarter
        >>> t = jnp.linspace(0.0, 1.0, 20)
        >>> res = lambda p, y: p[0] * jnp.exp(p[1] * t) - y
        >>> lm, starter = create_levenberg_marquardt_solver(res), WarmStarter("learned")
        >>> steps = []
        >>> for s in (0.0, 0.5, 1.0, 0.25):  # y = (2 + s) exp(-(1 + s) t)
        ...     y = (2.0 + s) * jnp.exp(-(1.0 + s) * t)
        ...     start = starter.propose(jnp.array([s]), jnp.array([1.0, 1.0]))
        ...     sol = solve(lm, start, y)
        ...     starter.record(jnp.array([s]), sol.params)
        ...     steps.append(int(sol.num_steps))
        >>> steps[-1] < steps[0]
        True
    """

    def __init__(self, strategy: str, *, capacity: int = 64, ridge: float = 1e-8):
        self.rule = warm_start(strategy, capacity=capacity, ridge=ridge)
        self.memory: WarmStartMemory | None = None

    @property
    def size(self) -> int:
        """Number of problems held (at most ``capacity``)."""
        if self.memory is None:
            return 0
        return min(int(self.memory.count), self.rule.capacity)

    def propose(self, features, default):
        """A start for the problem described by ``features`` (``default`` if nothing is held)."""
        if self.memory is None:
            _features(features, 0 if features is None else jnp.size(features), self.rule.strategy)
            return default
        return self.rule.propose(self.memory, features, default)

    def record(self, features, solution) -> None:
        """Store a solved problem (replacing the oldest once full)."""
        if self.memory is None:
            self.memory = self.rule.init(features, solution)
        self.memory = self.rule.record(self.memory, features, solution)

    def reset(self) -> None:
        """Forget every stored problem."""
        self.memory = None
