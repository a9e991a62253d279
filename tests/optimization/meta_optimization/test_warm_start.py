"""Warm starts: each strategy's proposal against a hand-computed answer, memory bound, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization import solve
from opifex.optimization.meta_optimization import STRATEGIES, WarmStarter, warm_start
from opifex.optimization.second_order import (
    LBFGSConfig,
    LevenbergMarquardtConfig,
    create_lbfgs_solver,
    create_levenberg_marquardt_solver,
)


def _filled(strategy, feats, sols, **kw):
    ws = warm_start(strategy, **kw)
    memory = ws.init(feats[0], sols[0])
    for f, s in zip(feats, sols, strict=True):
        memory = ws.record(memory, f, s)
    return ws, memory


def test_empty_memory_returns_default_and_previous_returns_last():
    ws = warm_start("previous_params", capacity=4)
    default = {"a": jnp.ones(2), "b": jnp.array(5.0)}
    memory = ws.init(None, default)
    assert jax.tree.map(float, ws.propose(memory, None, default)["b"]) == 5.0
    for k in range(3):
        memory = ws.record(memory, None, {"a": jnp.full(2, k), "b": jnp.array(-k)})
    out = ws.propose(memory, None, default)
    assert out["a"].tolist() == [2.0, 2.0] and float(out["b"]) == -2.0


def test_nearest_neighbor_picks_the_closest_stored_solution():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(6, 3)))
    sols = jnp.asarray(rng.normal(size=(6, 4)))
    ws, memory = _filled("nearest_neighbor", feats, sols, capacity=8)
    for i in range(6):
        query = feats[i] + 1e-3 * jnp.asarray(rng.normal(size=3))
        np.testing.assert_array_equal(ws.propose(memory, query, jnp.zeros(4)), sols[i])
    # Under jit too (pure function of arrays).
    np.testing.assert_array_equal(jax.jit(ws.propose)(memory, feats[2], jnp.zeros(4)), sols[2])


def test_learned_predictor_recovers_an_affine_map_exactly():
    rng = np.random.default_rng(1)
    m, c = rng.normal(size=(3, 5)), rng.normal(size=5)
    feats = rng.normal(size=(7, 3))
    sols = feats @ m + c
    query = rng.normal(size=3)
    ws, memory = _filled("learned", jnp.asarray(feats), jnp.asarray(sols), ridge=0.0)
    got = ws.propose(memory, jnp.asarray(query), jnp.zeros(5))
    np.testing.assert_allclose(got, query @ m + c, rtol=0, atol=1e-10)
    # The default relative ridge 1e-8 shrinks the slope by about that much.
    ws, memory = _filled("learned", jnp.asarray(feats), jnp.asarray(sols))
    got = ws.propose(memory, jnp.asarray(query), jnp.zeros(5))
    np.testing.assert_allclose(got, query @ m + c, rtol=0, atol=1e-6)


def test_learned_with_one_entry_proposes_that_entry():
    ws, memory = _filled("learned", jnp.ones((1, 2)), jnp.array([[3.0, 4.0]]))
    assert ws.propose(memory, jnp.array([9.0, -9.0]), jnp.zeros(2)).tolist() == [3.0, 4.0]


def test_memory_is_bounded_and_forgets_the_oldest():
    feats = jnp.arange(5.0)[:, None]
    sols = 10.0 * jnp.arange(5.0)[:, None]
    ws, memory = _filled("nearest_neighbor", feats, sols, capacity=3)
    assert memory.features.shape == (3, 1) and memory.solutions.shape == (3, 1)
    assert int(memory.count) == 5
    # Problems 0 and 1 were overwritten: the nearest stored to feature 0 is now problem 2.
    assert ws.propose(memory, jnp.array([0.0]), jnp.zeros(1)).tolist() == [20.0]
    starter = WarmStarter("previous_params", capacity=2)
    for k in range(4):
        starter.record(None, jnp.array([float(k)]))
    assert starter.size == 2 and starter.propose(None, jnp.zeros(1)).tolist() == [3.0]


def test_bad_input_is_rejected_with_what_and_how():
    with pytest.raises(ValueError, match="'previous_params', 'nearest_neighbor', 'learned'"):
        warm_start("closest")
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
    assert STRATEGIES == ("previous_params", "nearest_neighbor", "learned")


# A fixed family of exponential fits y_s(t) = (2 + s) exp(-(1 + s) t) + 0.3 s, solved in a
# shuffled order from the cold guess (1, 1, 0); features are the data y themselves.
_T = jnp.linspace(0.0, 3.0, 25)
_S = np.random.default_rng(3).permutation(np.linspace(0.0, 1.0, 12))


def _residual(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def _objective(p, args):
    return 0.5 * jnp.sum(_residual(p, args) ** 2)


def _iterations(solver, strategy):
    starter = WarmStarter(strategy) if strategy else None
    x0, steps = jnp.array([1.0, 1.0, 0.0]), []
    for s in _S:
        y = (2.0 + s) * jnp.exp(-(1.0 + s) * _T) + 0.3 * s
        start = starter.propose(y, x0) if starter else x0
        sol = solve(solver, start, (_T, y))
        assert sol.converged
        np.testing.assert_allclose(sol.params, [2.0 + s, 1.0 + s, 0.3 * s], atol=1e-5)
        if starter:
            starter.record(y, sol.params)
        steps.append(int(sol.num_steps))
    return np.array(steps[1:])  # the first problem has nothing to start from


@pytest.mark.parametrize("which", ["lm", "lbfgs"])
def test_warm_start_reduces_iterations_on_a_fixed_family(which):
    if which == "lm":
        cfg = LevenbergMarquardtConfig(ftol=1e-10, xtol=1e-10, gtol=1e-10)
        solver = create_levenberg_marquardt_solver(_residual, cfg)
    else:
        solver = create_lbfgs_solver(_objective, LBFGSConfig(gtol=1e-8))
    cold = _iterations(solver, None)
    # Measured: LM median 6 -> 4 (nearest) and 2 (learned); L-BFGS 14 -> 8 and 5.
    for strategy, factor in (("nearest_neighbor", 1.4), ("learned", 2.5)):
        warm = _iterations(solver, strategy)
        assert np.median(cold) >= factor * np.median(warm), (which, strategy)
