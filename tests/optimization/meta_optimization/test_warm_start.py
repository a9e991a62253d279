"""Warm starts: each strategy's proposal against a hand-computed answer, memory bound, errors.

The compiled functions of ``warm_start`` and the NumPy ``WarmStarter`` share the formulas;
each test checks one against a known answer and the other against it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization import solve
from opifex.optimization.meta_optimization import STRATEGIES, WarmStarter, warm_start
from opifex.optimization.second_order import (
    LevenbergMarquardtConfig,
    create_levenberg_marquardt_solver,
)


def _filled(strategy, feats, sols, **kw):
    """The same problems recorded in the compiled memory and in a ``WarmStarter``."""
    ws, starter = warm_start(strategy, **kw), WarmStarter(strategy, **kw)
    memory = ws.init(None if feats is None else feats[0], sols[0])
    for k, s in enumerate(sols):
        f = None if feats is None else feats[k]
        memory = ws.record(memory, f, s)
        starter.record(f, s)
    return ws, memory, starter


def test_empty_memory_returns_default_and_previous_returns_last():
    default = {"a": jnp.ones(2), "b": jnp.array(5.0)}
    ws = warm_start("previous_params", capacity=4)
    assert float(ws.propose(ws.init(None, default), None, default)["b"]) == 5.0
    assert WarmStarter("previous_params").propose(None, default) is default
    sols = [{"a": jnp.full(2, k), "b": jnp.array(-k)} for k in range(3)]
    ws, memory, starter = _filled("previous_params", None, sols, capacity=4)
    for out in (ws.propose(memory, None, default), starter.propose(None, default)):
        assert out["a"].tolist() == [2.0, 2.0] and float(out["b"]) == -2.0


def test_host_proposal_keeps_structure_dtypes_and_array_kinds():
    default = {"w": jnp.zeros((2, 2), jnp.float32), "b": np.zeros(3, np.float64)}
    starter = WarmStarter("previous_params")
    starter.record(None, {"w": jnp.arange(4.0).reshape(2, 2), "b": np.array([4.0, 5.0, 6.0])})
    out = starter.propose(None, default)
    assert isinstance(out["w"], jax.Array) and out["w"].dtype == jnp.float32
    assert isinstance(out["b"], np.ndarray) and out["b"].dtype == np.float64
    assert out["w"].tolist() == [[0.0, 1.0], [2.0, 3.0]] and out["b"].tolist() == [4.0, 5.0, 6.0]


def test_nearest_neighbor_picks_the_closest_stored_solution():
    rng = np.random.default_rng(0)
    feats, sols = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    ws, memory, starter = _filled("nearest_neighbor", feats, sols, capacity=8)
    for i in range(6):
        query = feats[i] + 1e-3 * rng.normal(size=3)
        np.testing.assert_array_equal(starter.propose(query, np.zeros(4)), sols[i])
    np.testing.assert_array_equal(ws.propose(memory, feats[4], jnp.zeros(4)), sols[4])


def test_learned_predictor_recovers_an_affine_map_exactly():
    rng = np.random.default_rng(1)
    m, c = rng.normal(size=(3, 4)), rng.normal(size=4)
    feats = rng.normal(size=(7, 3))
    query = rng.normal(size=3)
    ws, memory, starter = _filled("learned", feats, feats @ m + c, capacity=8, ridge=0.0)
    host = starter.propose(query, np.zeros(4))
    np.testing.assert_allclose(host, query @ m + c, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ws.propose(memory, query, jnp.zeros(4)), host, rtol=0, atol=1e-12)
    # The default relative ridge 1e-8 shrinks the slope by about that much.
    starter = WarmStarter("learned")
    for f in feats:
        starter.record(f, f @ m + c)
    np.testing.assert_allclose(starter.propose(query, np.zeros(4)), query @ m + c, atol=1e-6)


def test_learned_with_one_entry_proposes_that_entry():
    starter = WarmStarter("learned")
    starter.record(np.ones(2), np.array([3.0, 4.0]))
    assert starter.propose(np.array([9.0, -9.0]), np.zeros(2)).tolist() == [3.0, 4.0]


def test_learned_fit_uses_only_the_stored_problems():
    # Capacity 3 keeps the last three points of y = 2 f (the first two lie on y = -f): the
    # ridge fit on them alone is exact.
    starter = WarmStarter("learned", capacity=3, ridge=0.0)
    for f, s in ((1.0, -1.0), (2.0, -2.0), (3.0, 6.0), (4.0, 8.0), (5.0, 10.0)):
        starter.record(np.array([f]), np.array([s]))
    assert starter.size == 3
    np.testing.assert_allclose(starter.propose(np.array([0.5]), np.zeros(1)), [1.0], atol=1e-12)


def test_memory_is_bounded_and_forgets_the_oldest():
    feats = np.arange(10.0)[:, None] * np.ones(3)
    ws, memory, starter = _filled(
        "nearest_neighbor", feats, 10.0 * feats[:, [0, 0, 0, 0]], capacity=8
    )
    assert memory.features.shape == (8, 3) and memory.solutions.shape == (8, 4)
    assert int(memory.count) == 10 and starter.size == 8
    # Problems 0 and 1 were overwritten: the nearest stored to problem 0 is now problem 2.
    assert ws.propose(memory, np.zeros(3), jnp.zeros(4)).tolist() == [20.0] * 4
    assert starter.propose(np.zeros(3), np.zeros(4)).tolist() == [20.0] * 4
    starter.reset()
    assert starter.size == 0 and starter.propose(np.zeros(3), np.zeros(4)).tolist() == [0.0] * 4


def test_bad_input_is_rejected_with_what_and_how():
    with pytest.raises(ValueError, match="'previous_params', 'nearest_neighbor', 'learned'"):
        warm_start("closest")
    with pytest.raises(ValueError, match="'previous_params', 'nearest_neighbor', 'learned'"):
        WarmStarter("closest")
    with pytest.raises(ValueError, match="capacity must be an int >= 1, got 0"):
        warm_start("learned", capacity=0)
    with pytest.raises(ValueError, match="ridge must be a float >= 0"):
        warm_start("learned", ridge=-1.0)
    ws = warm_start("nearest_neighbor")
    with pytest.raises(ValueError, match="needs the problem's features"):
        ws.init(None, jnp.zeros(2))
    memory = ws.init(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        ws.record(memory, jnp.zeros(4), jnp.zeros(2))
    with pytest.raises(ValueError, match="solutions of 2"):
        ws.propose(memory, jnp.zeros(3), jnp.zeros(5))
    starter = WarmStarter("learned")
    with pytest.raises(ValueError, match="needs the problem's features"):
        starter.record(None, np.zeros(2))
    starter.record(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        starter.propose(np.zeros(4), np.zeros(2))
    with pytest.raises(ValueError, match="solutions of 2"):
        starter.record(np.zeros(3), np.zeros(5))
    assert STRATEGIES == ("previous_params", "nearest_neighbor", "learned")


# A fixed family of exponential fits y_s(t) = (2 + s) exp(-(1 + s) t) + 0.3 s, s on a grid of
# [0, 1], solved by Levenberg-Marquardt from the cold guess (1, 1, 0); features are the data.
_T = np.linspace(0.0, 3.0, 25)
_GRID = np.linspace(0.0, 1.0, 10)


def _residual(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def _iterations(solver, strategy, order):
    starter = WarmStarter(strategy) if strategy else None
    x0, steps = np.array([1.0, 1.0, 0.0]), []
    for s in order:
        y = (2.0 + s) * np.exp(-(1.0 + s) * _T) + 0.3 * s
        start = starter.propose(y, x0) if starter else x0
        sol = solve(solver, start, (_T, y))
        assert sol.converged
        np.testing.assert_allclose(sol.params, [2.0 + s, 1.0 + s, 0.3 * s], atol=1e-5)
        if starter:
            starter.record(y, sol.params)
        steps.append(int(sol.num_steps))
    return np.array(steps[1:])  # the first problem has nothing to start from


def test_warm_start_reduces_iterations_on_a_fixed_family():
    cfg = LevenbergMarquardtConfig(ftol=1e-10, xtol=1e-10, gtol=1e-10)
    solver = create_levenberg_marquardt_solver(_residual, cfg)
    shuffled = np.random.default_rng(3).permutation(_GRID)
    # Measured medians: cold 6; in order, previous 4, nearest 4, learned 2; shuffled,
    # nearest 4 and learned 2.
    for order, strategies in (
        (_GRID, (("previous_params", 1.4), ("learned", 2.5))),
        (shuffled, (("nearest_neighbor", 1.4), ("learned", 2.5))),
    ):
        cold = np.median(_iterations(solver, None, order))
        for strategy, factor in strategies:
            assert cold >= factor * np.median(_iterations(solver, strategy, order)), strategy
