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
  regression on the stored ``(features, solution)`` pairs (Hastie, Tibshirani & Friedman,
  *Elements of Statistical Learning*, Sec. 3.4.1; the intercept is not penalized, so the
  data are centred first). The penalty is ``(ridge + 1e-12) * mean(||f - mu_f||^2)``
  (scale-free); ``ridge=0`` is least squares up to that floor, and recovers an affine
  solution map from ``d + 1`` points in general position (``d`` features) to about 1e-12
  relative.

Cost: the ridge fit is redone when a problem is recorded and kept in the memory, so a
``"learned"`` proposal is one affine map, ``O(num_features * num_params)``, and a
``"nearest_neighbor"`` one a search, ``O(capacity * num_features)``. :func:`warm_start`'s
functions are compiled (use them inside ``jit``); :class:`WarmStarter`, for host loops around
solvers, runs the same formulas in NumPy, so a proposal costs microseconds rather than a
compiled call's dispatch, and recording costs one small QR (``capacity + num_features`` by
``num_features``) for ``"learned"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

STRATEGIES = ("previous_params", "nearest_neighbor", "learned")
# float32 so that it never asks for float64 when x64 is off.
_NO_FEATURES = np.zeros((0,), np.float32)


def check_strategy(strategy: str, name: str = "strategy", extra: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming the valid strategies unless ``strategy`` is one of them."""
    valid = (*extra, *STRATEGIES)
    if strategy not in valid:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(s) for s in valid)}; got {strategy!r}."
        )


class WarmStartMemory(NamedTuple):
    """Bounded memory of solved problems (a ring buffer) and, for ``"learned"``, its fit.

    The three fit fields have a zero-length axis for the other strategies.
    """

    features: jax.Array  # float (capacity, num_features), one row per stored problem
    solutions: jax.Array  # float (capacity, num_params), the raveled solutions
    count: jax.Array  # int32 [], problems recorded so far; the next goes to count % capacity
    feature_mean: jax.Array  # float (num_features,), mu_f of the stored problems
    solution_mean: jax.Array  # float (num_params,), mu_s of the stored problems
    dual: jax.Array  # float (capacity, num_features), M with B = M' Sc (see _ridge_fit)


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


def _features(features, num_features: int, strategy: str):
    """``features`` as an array of shape ``(num_features,)``, checked on the host."""
    if features is None:
        if strategy != "previous_params" and num_features:
            raise ValueError(
                f"strategy {strategy!r} needs the problem's features (a 1-D vector), got None; "
                "pass features=... or use strategy='previous_params'."
            )
        return _NO_FEATURES if num_features == 0 else np.zeros(num_features, np.float32)
    if not isinstance(features, (jax.Array, np.ndarray)):
        features = np.asarray(features)
    if features.shape != (num_features,):
        raise ValueError(
            f"features must have shape ({num_features},) like the memory's, got "
            f"{features.shape}; describe every problem of a family by a vector of the same length."
        )
    return features


def _num_params(tree, name: str, memory: WarmStartMemory) -> None:
    size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))
    if size != memory.solutions.shape[1]:
        raise ValueError(
            f"{name} has {size} entries but the memory stores solutions of "
            f"{memory.solutions.shape[1]}; use one memory per problem family."
        )


def _valid(xp, count, capacity: int):
    return xp.arange(capacity) < xp.minimum(count, capacity)


def _ridge_fit(xp, solve_upper: Callable, feats, sols, count, ridge: float):
    """``(mu_f, mu_s, M)`` of the ridge regression of the stored solutions on features.

    The slope is ``B = M' Sc`` with ``Sc`` the centred stored solutions, so a prediction is
    ``mu_s + ((f - mu_f) M') Sc``: two matrix-vector products, and no product of two
    matrices as large as the memory (NumPy hands those to several BLAS threads, which stall
    for milliseconds on a CPU shared with XLA's thread pool). ``xp`` is ``numpy`` or
    ``jax.numpy``; ``solve_upper(r, b)`` solves ``r x = b`` for an upper-triangular ``r``.
    """
    w = _valid(xp, count, feats.shape[0]).astype(sols.dtype)
    n = xp.maximum(xp.sum(w), 1.0)
    mu_f = (w @ feats) / n
    mu_s = (w @ sols) / n
    fc = (feats - mu_f) * w[:, None]
    d = feats.shape[1]
    # QR of the augmented system [Fc; sqrt(lam) I] B = [Sc; 0] is the ridge solution without
    # squaring Fc's condition number: B = R^-1 Q1' Sc with Q1 the first rows of Q, so
    # M = Q1 R^-T. The 1e-12 floor keeps it defined when fewer problems than features are
    # stored; in the directions the data do not span, Fc'Sc vanishes, so the floor adds no
    # spurious slope there.
    scale = xp.sum(fc**2) / n
    lam = (ridge + 1e-12) * scale + xp.finfo(fc.dtype).tiny
    q, r = xp.linalg.qr(xp.concatenate([fc, xp.sqrt(lam) * xp.eye(d, dtype=fc.dtype)]))
    r_inv = solve_upper(r, xp.eye(d, dtype=r.dtype))
    return mu_f, mu_s, (q[: feats.shape[0]] @ r_inv.T) * w[:, None]


def _guess(xp, memory: WarmStartMemory, f, strategy: str):
    """The strategy's proposal (raveled) from a non-empty memory."""
    capacity = memory.solutions.shape[0]
    if strategy == "previous_params":
        return memory.solutions[(memory.count - 1) % capacity]
    if strategy == "nearest_neighbor":
        dist = xp.sum((memory.features - f) ** 2, axis=1)
        return memory.solutions[
            xp.argmin(xp.where(_valid(xp, memory.count, capacity), dist, xp.inf))
        ]
    u = memory.dual @ (f - memory.feature_mean)
    return memory.solution_mean * (1.0 - xp.sum(u)) + u @ memory.solutions


def _jax_solve_upper(r, b):
    return jax.scipy.linalg.solve_triangular(r, b, lower=False)


@functools.partial(jax.jit, static_argnames=("strategy",))
def _propose(memory: WarmStartMemory, f, default, strategy: str):
    flat, unravel = ravel_pytree(default)
    guess = _guess(jnp, memory, f, strategy).astype(flat.dtype)
    return unravel(jnp.where(memory.count > 0, guess, flat))


@functools.partial(jax.jit, static_argnames=("strategy", "ridge"))
def _record(memory: WarmStartMemory, f, solution, strategy: str, ridge: float):
    flat, _ = ravel_pytree(solution)
    slot = memory.count % memory.solutions.shape[0]
    feats = memory.features.at[slot].set(f.astype(memory.features.dtype))
    sols = memory.solutions.at[slot].set(flat.astype(memory.solutions.dtype))
    count = memory.count + 1
    fit = memory[3:]
    if strategy == "learned":
        fit = _ridge_fit(jnp, _jax_solve_upper, feats, sols, count, ridge)
    return WarmStartMemory(feats, sols, count, *fit)


def _empty_memory(
    xp, strategy: str, capacity: int, num_features: int, num_params: int, dtype, fdtype
):
    learned = strategy == "learned"
    fit_c, fit_f, fit_p = (capacity, num_features, num_params) if learned else (0, 0, 0)
    return WarmStartMemory(
        xp.zeros((capacity, num_features), fdtype),
        xp.zeros((capacity, num_params), dtype),
        xp.zeros((), xp.int32),
        xp.zeros((fit_f,), fdtype),
        xp.zeros((fit_p,), dtype),
        xp.zeros((fit_c, fit_f), fdtype),
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
        >>> from opifex.optimization.meta_optimization.warm_start import warm_start
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
            _features(None, 1, strategy)
            num_features, dtype = 0, flat.dtype
        else:
            f = jnp.asarray(features_like)
            if f.ndim != 1:
                raise ValueError(
                    f"features must be a 1-D vector, got shape {f.shape}; ravel them first."
                )
            num_features, dtype = f.shape[0], jnp.result_type(f.dtype, flat.dtype)
        return _empty_memory(jnp, strategy, capacity, num_features, flat.size, flat.dtype, dtype)

    def propose(memory: WarmStartMemory, features, default):
        _num_params(default, "default", memory)
        f = _features(features, memory.features.shape[1], strategy)
        return _propose(memory, f, default, strategy)

    def record(memory: WarmStartMemory, features, solution) -> WarmStartMemory:
        _num_params(solution, "solution", memory)
        f = _features(features, memory.features.shape[1], strategy)
        return _record(memory, f, solution, strategy, ridge)

    return WarmStart(init, propose, record, strategy, capacity)


def _ravel_host(tree) -> tuple[np.ndarray, list, Any]:
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.asarray(leaf) for leaf in leaves]
    dtype = np.result_type(*arrays) if arrays else np.float32
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, dtype)
    return flat.astype(dtype, copy=False), leaves, treedef


def _unravel_host(flat: np.ndarray, leaves: list, treedef) -> Any:
    """``flat`` split into ``leaves``' shapes and dtypes (JAX arrays stay JAX arrays)."""
    out, start = [], 0
    for leaf in leaves:
        shape = np.shape(leaf)
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
        piece = flat[start : start + int(np.prod(shape))].reshape(shape).astype(dtype)
        out.append(jnp.asarray(piece) if isinstance(leaf, jax.Array) else piece)
        start += piece.size
    return jax.tree.unflatten(treedef, out)


class WarmStarter:
    """Host-side holder of a :func:`warm_start` strategy and its memory.

    Same strategies and results as :func:`warm_start`, evaluated in NumPy on a NumPy memory
    (see the module docstring for the cost): the memory is created at the first
    :meth:`record` (from that problem's shapes); before it, :meth:`propose` returns the
    default. Proposals keep ``default``'s structure, dtypes and array kinds.

    Args:
        strategy: As for :func:`warm_start`.
        capacity: As for :func:`warm_start`.
        ridge: As for :func:`warm_start`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import create_levenberg_marquardt_solver
        >>> from opifex.optimization.meta_optimization import WarmStarter
        >>> res = lambda p, data: p[0] * jnp.exp(p[1] * data[0]) - data[1]
        >>> lm, starter = create_levenberg_marquardt_solver(res), WarmStarter("learned")
        >>> t, steps = jnp.linspace(0.0, 1.0, 20), []
        >>> for s in (0.0, 0.5, 1.0, 0.25):  # y = (2 + s) exp(-(1 + s) t)
        ...     y = (2.0 + s) * jnp.exp(-(1.0 + s) * t)
        ...     start = starter.propose(jnp.array([s]), jnp.array([1.0, 1.0]))
        ...     sol = solve(lm, start, (t, y))
        ...     starter.record(jnp.array([s]), sol.params)
        ...     steps.append(int(sol.num_steps))
        >>> steps[-1] < steps[0]
        True
    """

    def __init__(self, strategy: str, *, capacity: int = 64, ridge: float = 1e-8):
        self.rule = warm_start(strategy, capacity=capacity, ridge=ridge)
        self.ridge = float(ridge)
        self.memory: WarmStartMemory | None = None

    @property
    def size(self) -> int:
        """Number of problems held (at most ``capacity``)."""
        if self.memory is None:
            return 0
        return min(int(self.memory.count), self.rule.capacity)

    def propose(self, features, default):
        """A start for the problem described by ``features`` (``default`` if nothing is held)."""
        strategy = self.rule.strategy
        if self.memory is None:
            _features(features, 0 if features is None else np.size(features), strategy)
            return default
        _num_params(default, "default", self.memory)
        f = np.asarray(_features(features, self.memory.features.shape[1], strategy))
        leaves, treedef = jax.tree.flatten(default)
        return _unravel_host(_guess(np, self.memory, f, strategy), leaves, treedef)

    def record(self, features, solution) -> None:
        """Store a solved problem (replacing the oldest once full)."""
        flat, _, _ = _ravel_host(solution)
        if self.memory is None:
            if features is None:
                _features(None, 1, self.rule.strategy)
            f0 = np.zeros(0, flat.dtype) if features is None else np.asarray(features)
            if f0.ndim != 1:
                raise ValueError(
                    f"features must be a 1-D vector, got shape {f0.shape}; ravel them first."
                )
            fdtype = np.result_type(f0.dtype, flat.dtype)
            self.memory = _empty_memory(
                np, self.rule.strategy, self.rule.capacity, f0.size, flat.size, flat.dtype, fdtype
            )
        memory = self.memory
        _num_params(solution, "solution", memory)
        f = _features(features, memory.features.shape[1], self.rule.strategy)
        slot = int(memory.count) % self.rule.capacity
        # The host memory is private to this object, so the ring buffer is written in place.
        memory.features[slot] = np.asarray(f)
        memory.solutions[slot] = flat
        count = np.int32(memory.count + 1)
        fit = memory[3:]
        if self.rule.strategy == "learned":
            fit = _ridge_fit(
                np, np.linalg.solve, memory.features, memory.solutions, count, self.ridge
            )
        self.memory = WarmStartMemory(memory.features, memory.solutions, count, *fit)

    def reset(self) -> None:
        """Forget every stored problem."""
        self.memory = None
