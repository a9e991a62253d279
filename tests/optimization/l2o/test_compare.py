"""``compare``: every figure checked on stub solvers with a scripted clock and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opifex.optimization.l2o.compare import compare


class _Clock:
    """A clock that only moves when a stub solver says it spent time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _case():
    clock = _Clock()
    # Instances x in R^1; constraints y_0 = x (A = [1, 0]) and y_1 <= 1 (G = [0, 1], h = 1).
    X = np.linspace(-1.0, 1.0, 10)[:, None]
    A, G, h = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([1.0])
    exact = np.column_stack([X[:, 0], np.full(10, 0.5)])
    calls = {"learned": 0}

    def learned(Xb):
        # 2 s for the first (compiling) call of each shape, then 0.5 s a batch, 0.1 s for one.
        calls["learned"] += 1
        first = calls["learned"] in (1, 1 + 1 + 5)
        clock.now += 2.0 if first else (0.5 if len(Xb) > 1 else 0.1)
        Y = exact[: len(Xb)].copy()
        Y[:, 1] *= 1.1  # objective 10% off on every instance...
        if len(Xb) == len(exact):
            Y[3, 1] = 1.2  # ...and instance 3 violates y_1 <= 1 by 0.2 (objective +140%)
        return Y

    def classical(x):
        clock.now += 0.3
        i = int(np.argmin(np.abs(X[:, 0] - x[0])))
        return exact[i]

    def objective(y, x):
        return float(y[1])  # = 0.5 for the classical answers

    return clock, X, (A, G, h), learned, classical, objective


def test_compare_figures_on_a_scripted_case():
    clock, X, cons, learned, classical, objective = _case()
    report = compare(
        learned,
        classical,
        X,
        objective_fn=objective,
        constraints=cons,
        training_s=10.0,
        repeats=5,
        clock=clock,
    )
    assert report.num_instances == 10
    assert report.learned_compile_s == pytest.approx(2.0)
    assert report.learned_batch_s == pytest.approx(0.5)
    assert report.learned_latency_s == pytest.approx(0.1)
    # 10 timed classical calls (the warm-up call on X[0] is not counted).
    assert report.classical_total_s == pytest.approx(3.0)
    assert report.classical_latency_s == pytest.approx(0.3)
    assert report.speedup == pytest.approx(6.0)
    assert report.latency_ratio == pytest.approx(3.0)
    # (training 10 s + compile 2 s) / (0.3 - 0.05 s saved per instance) = 48 instances.
    assert report.break_even_instances == 48
    gaps = np.full(10, 0.1)
    gaps[3] = 1.4
    np.testing.assert_allclose(report.rel_gaps, gaps)
    assert report.mean_rel_gap == pytest.approx(0.23)
    assert report.max_rel_gap == pytest.approx(1.4)
    assert report.learned_feasible_fraction == pytest.approx(0.9)
    assert report.classical_feasible_fraction == 1.0
    assert report.learned_max_ineq == pytest.approx(0.2)
    assert report.learned_max_eq == 0.0 and report.classical_max_ineq == 0.0
    np.testing.assert_allclose(report.classical_objective, 0.5)


def test_compare_break_even_is_infinite_when_learning_does_not_pay():
    clock, X, cons, _, classical, objective = _case()

    def slow(Xb):
        clock.now += 10.0
        return np.column_stack([Xb[:, 0], np.full(len(Xb), 0.5)])

    report = compare(slow, classical, X, objective_fn=objective, constraints=cons, clock=clock)
    assert math.isinf(report.break_even_instances)
    assert report.speedup == pytest.approx(0.3)
    assert report.mean_rel_gap == 0.0 and report.learned_feasible_fraction == 1.0


def test_compare_rejects_bad_input():
    _, X, _, learned, classical, objective = _case()
    with pytest.raises(ValueError, match=r"X must be a non-empty \(N, m\) array.*\(10,\)"):
        compare(learned, classical, X[:, 0], objective_fn=objective)
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        compare(learned, classical, X, objective_fn=objective, repeats=0)
