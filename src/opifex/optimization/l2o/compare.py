"""Measured comparison of a learned (batched) solver with a classical (one-at-a-time) one.

:func:`compare` times both on the same held-out instances in the same run and evaluates the
answers with the caller's objective and constraints: nothing is stored or assumed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np


@dataclass(frozen=True)
class ComparisonReport:
    """Figures of one :func:`compare` run (times in seconds, gaps relative to the classical).

    Attributes:
        num_instances: Held-out instances solved by both.
        learned_batch_s: Median time of one batched call of the learned solver on all of them.
        learned_compile_s: Time of its first (compiling) call.
        learned_latency_s: Median time of the learned solver on a batch of one instance.
        classical_total_s: Sum of the classical solver's per-instance times.
        classical_latency_s: Median per-instance time of the classical solver.
        speedup: ``classical_total_s / learned_batch_s`` (throughput ratio).
        latency_ratio: ``classical_latency_s / learned_latency_s``.
        mean_rel_gap: Mean of ``|f_learned - f_classical| / max(|f_classical|, 1e-12)``.
        max_rel_gap: Maximum of the same.
        rel_gaps: Signed relative gaps ``(f_learned - f_classical) / |f_classical|``, ``(N,)``.
        learned_objective: ``(N,)`` objective values of the learned answers.
        classical_objective: ``(N,)`` objective values of the classical answers.
        learned_feasible_fraction: Share of learned answers within both tolerances.
        classical_feasible_fraction: Same for the classical answers.
        learned_max_eq: Largest equality residual ``max|A y - x|`` of the learned answers.
        learned_max_ineq: Largest inequality violation ``max(G y - h, 0)`` of them.
        classical_max_eq: Same as ``learned_max_eq`` for the classical answers.
        classical_max_ineq: Same as ``learned_max_ineq`` for the classical answers.
        training_s: Training time the caller charged to the learned solver.
        break_even_instances: Instances after which training plus compilation pays off:
            ``(training_s + learned_compile_s) / (classical per-instance - learned
            per-instance)``, rounded up; ``inf`` if the learned solver is not faster.
    """

    num_instances: int
    learned_batch_s: float
    learned_compile_s: float
    learned_latency_s: float
    classical_total_s: float
    classical_latency_s: float
    speedup: float
    latency_ratio: float
    mean_rel_gap: float
    max_rel_gap: float
    rel_gaps: np.ndarray
    learned_objective: np.ndarray
    classical_objective: np.ndarray
    learned_feasible_fraction: float
    classical_feasible_fraction: float
    learned_max_eq: float
    learned_max_ineq: float
    classical_max_eq: float
    classical_max_ineq: float
    training_s: float
    break_even_instances: float


def _timed(fn, arg, clock):
    t0 = clock()
    out = jax.block_until_ready(fn(arg))
    return out, clock() - t0


def _residuals(Y, X, constraints):
    if constraints is None:
        zeros = np.zeros(len(Y))
        return zeros, zeros
    A, G, h = (np.asarray(a, np.float64) for a in constraints)
    eq = np.abs(Y @ A.T - X).max(axis=1) if A.size else np.zeros(len(Y))
    ineq = np.maximum(Y @ G.T - h, 0.0).max(axis=1) if G.size else np.zeros(len(Y))
    return eq, ineq


def compare(
    learned: Callable,
    classical: Callable,
    X,
    *,
    objective_fn: Callable,
    constraints=None,
    training_s: float = 0.0,
    repeats: int = 5,
    eq_tol: float = 1e-8,
    ineq_tol: float = 1e-4,
    clock: Callable[[], float] = time.perf_counter,
) -> ComparisonReport:
    """Run ``learned`` (batched) and ``classical`` (one instance at a time) on ``X`` and compare.

    The learned solver is called once on all of ``X`` to compile (``learned_compile_s``), then
    ``repeats`` more times (median = ``learned_batch_s``); its latency is measured the same way
    on ``X[:1]``. The classical solver is called once on ``X[0]`` as a warm-up, then on every
    instance in turn, each timed. Answers are evaluated on the host in float64.

    Args:
        learned: ``X (N, m) -> Y (N, n)`` (any array type; results are waited for).
        classical: ``x (m,) -> y (n,)``.
        X: Held-out parameters, ``(N, m)``.
        objective_fn: ``(y, x) -> float``, evaluated per instance on numpy arrays.
        constraints: ``(A, G, h)`` of ``A y = x, G y <= h`` (e.g. a ``LinearConstraints``),
            or ``None`` when unconstrained; empty ``A`` or ``G`` are allowed.
        training_s: Training time charged to the learned solver in the break-even count.
        repeats: Timed repetitions of the learned calls (>= 1).
        eq_tol: Equality tolerance of the feasibility fraction.
        ineq_tol: Inequality tolerance of the feasibility fraction.
        clock: Time source (seconds); injectable for tests.

    Returns:
        A :class:`ComparisonReport`.

    Raises:
        ValueError: If ``X`` is not a non-empty 2-D array or ``repeats < 1``.

    Example:
        >>> import numpy as np
        >>> from opifex.optimization.l2o.compare import compare
        >>> X = np.linspace(-1, 1, 8)[:, None]
        >>> report = compare(lambda X: 2 * np.asarray(X), lambda x: 2 * x, X,
        ...                  objective_fn=lambda y, x: float((y[0] - 2 * x[0]) ** 2 - 1))
        >>> report.num_instances, report.max_rel_gap
        (8, 0.0)
    """
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (N, m) array of instances, got shape {X.shape}.")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}.")
    n = X.shape[0]
    Y_learned, compile_s = _timed(learned, X, clock)
    batch_s = statistics.median(_timed(learned, X, clock)[1] for _ in range(repeats))
    _timed(learned, X[:1], clock)
    latency_s = statistics.median(_timed(learned, X[:1], clock)[1] for _ in range(repeats))
    classical(X[0])
    answers, times = [], []
    for x in X:
        y, dt = _timed(classical, x, clock)
        answers.append(np.asarray(y, np.float64))
        times.append(dt)
    Y_learned = np.asarray(Y_learned, np.float64)
    Y_classical = np.stack(answers)
    f_l = np.array([objective_fn(y, x) for y, x in zip(Y_learned, X, strict=True)], np.float64)
    f_c = np.array([objective_fn(y, x) for y, x in zip(Y_classical, X, strict=True)], np.float64)
    gaps = (f_l - f_c) / np.maximum(np.abs(f_c), 1e-12)
    eq_l, in_l = _residuals(Y_learned, X, constraints)
    eq_c, in_c = _residuals(Y_classical, X, constraints)
    total_s = float(np.sum(times))
    saving = total_s / n - batch_s / n
    fixed = training_s + compile_s
    break_even = math.ceil(fixed / saving) if saving > 0 else math.inf
    return ComparisonReport(
        num_instances=n,
        learned_batch_s=batch_s,
        learned_compile_s=compile_s,
        learned_latency_s=latency_s,
        classical_total_s=total_s,
        classical_latency_s=float(statistics.median(times)),
        speedup=total_s / batch_s if batch_s > 0 else math.inf,
        latency_ratio=float(statistics.median(times)) / latency_s if latency_s > 0 else math.inf,
        mean_rel_gap=float(np.mean(np.abs(gaps))),
        max_rel_gap=float(np.max(np.abs(gaps))),
        rel_gaps=gaps,
        learned_objective=f_l,
        classical_objective=f_c,
        learned_feasible_fraction=float(np.mean((eq_l <= eq_tol) & (in_l <= ineq_tol))),
        classical_feasible_fraction=float(np.mean((eq_c <= eq_tol) & (in_c <= ineq_tol))),
        learned_max_eq=float(eq_l.max()),
        learned_max_ineq=float(in_l.max()),
        classical_max_eq=float(eq_c.max()),
        classical_max_ineq=float(in_c.max()),
        training_s=float(training_s),
        break_even_instances=float(break_even),
    )
