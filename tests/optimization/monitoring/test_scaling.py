"""Predictive scaling: Holt-Winters forecasts, the HPA rule, the simulator and the scaler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opifex.optimization._monitoring._scaling import (
    HPAConfig,
    KubernetesHPA,
    PredictiveScaler,
    PredictiveScalerConfig,
    fit_holt_winters,
    holt_winters_forecast,
    rolling_holt_winters,
    simulate_scaling,
)

SEASON = np.array([4.0, -1.0, 2.5, -3.0, -2.5])  # zero mean


def _seasonal(n: int, a: float = 3.0, b: float = 0.2) -> np.ndarray:
    t = np.arange(n, dtype=float)
    return a + b * t + SEASON[np.arange(n) % SEASON.size]


def test_forecaster_exact_on_noiseless_seasonal_series():
    y = _seasonal(60)
    truth = _seasonal(63)
    rng = np.random.default_rng(0)
    for smoothing in [(0.3, 0.1, 0.2), tuple(rng.uniform(0, 1, 3))]:
        f = np.asarray(holt_winters_forecast(y, smoothing, season_length=5, horizon=3))
        assert np.isnan(f[:9]).all()
        for h in (1, 2, 3):
            np.testing.assert_allclose(f[9:, h - 1], truth[9 + h : 60 + h], atol=1e-9)


def test_rolling_forecasts_exact_and_use_only_the_past():
    y = _seasonal(80)
    f, w = rolling_holt_winters(y, season_length=5, horizon=2, fit_window=20, refit_every=7)
    np.testing.assert_allclose(np.asarray(f)[9:-2, 0], y[10:-1], atol=1e-9)
    changed = y.copy()
    changed[50:] += np.random.default_rng(1).normal(0, 5, 30)
    g, v = rolling_holt_winters(changed, season_length=5, horizon=2, fit_window=20, refit_every=7)
    # Rows up to 49 and the smoothing used up to step 49 never see steps >= 50.
    np.testing.assert_array_equal(np.asarray(g)[:50], np.asarray(f)[:50])
    np.testing.assert_array_equal(np.asarray(v)[:50], np.asarray(w)[:50])


def test_fit_recovers_the_grid_point_with_least_one_step_error():
    y = _seasonal(40) + np.random.default_rng(2).normal(0, 0.5, 40)
    grid = ((0.1, 0.0, 0.1), (0.9, 0.2, 0.4), (0.5, 0.05, 0.0))
    best = np.asarray(fit_holt_winters(y, season_length=5, grid=grid))

    def sse(w):
        f = np.asarray(holt_winters_forecast(y, w, season_length=5))[:, 0]
        return np.sum((y[10:] - f[9:-1]) ** 2)

    np.testing.assert_allclose(best, min(grid, key=sse))


def test_hpa_ratio_rule_tolerance_and_unready_pods():
    hpa = KubernetesHPA(HPAConfig(target_utilization=0.5, capacity_per_replica=10.0))
    assert hpa.decide(30.0, ready=2, requested=2) == 6  # ratio 3, ceil(3 * 2)
    assert hpa.decide(10.5, ready=2, requested=2) == 2  # ratio 1.05 inside the 0.1 band
    assert hpa.decide(11.1, ready=2, requested=2) == 3  # ratio 1.11: ceil(2.22)
    # Booting pods count with a zero metric when scaling up: ratio 40 / 60 / 0.5 = 4/3.
    assert KubernetesHPA(hpa.config).decide(40.0, ready=2, requested=6) == 8
    # 28 / 60 / 0.5 = 0.933: inside the band once booting pods count, so no change.
    assert KubernetesHPA(hpa.config).decide(28.0, ready=2, requested=6) == 6
    # Default scale-up policy: at most max(2 x current, current + 4) per 15 s sync.
    assert KubernetesHPA(hpa.config).decide(100.0, ready=1, requested=1) == 5
    hourly = KubernetesHPA(hpa.config.replace(step_seconds=3600.0))
    assert hourly.decide(100.0, ready=1, requested=1) == 20  # 240 syncs per step


def test_hpa_scale_down_stabilization_window():
    hpa = KubernetesHPA(HPAConfig(target_utilization=0.5, capacity_per_replica=10.0))
    assert hpa.config.window_steps == 20  # 300 s / 15 s
    assert hpa.decide(40.0, ready=8, requested=8) == 8  # ratio 1: recommendation 8
    decisions = [hpa.decide(10.0, ready=8, requested=8) for _ in range(20)]
    # Recommendation 2 from then on; the 8 leaves the 20-sync window after 19 more syncs.
    assert decisions == [8] * 19 + [2]
    hourly = KubernetesHPA(hpa.config.replace(step_seconds=3600.0))
    hourly.decide(40.0, ready=8, requested=8)
    assert hourly.decide(10.0, ready=8, requested=8) == 2


def test_simulator_hand_example():
    sim = simulate_scaling(
        [1.0, 3.0, 3.0, 3.0, 1.0],
        np.array([3, 3, 3, 1, 1]),
        capacity_per_replica=1.0,
        provisioning_delay=2,
        step_seconds=1800.0,
    )
    np.testing.assert_array_equal(sim.ready, [1, 1, 3, 3, 1])
    np.testing.assert_array_equal(sim.overloaded, [False, True, False, False, False])
    assert sim.overloaded_steps == 1 and sim.replica_hours == pytest.approx(11 * 0.5)
    # Scale-in cancels booting replicas first; warm-up steps are not scored.
    sim = simulate_scaling(
        [1.0, 1.0, 2.5, 2.0],
        lambda t, y, ready, requested: [4, 2, 2, 2][t],
        capacity_per_replica=1.0,
        provisioning_delay=2,
        score_from=1,
    )
    np.testing.assert_array_equal(sim.ready, [1, 1, 2, 2])
    np.testing.assert_array_equal(sim.requested, [1, 4, 2, 2])
    assert sim.overloaded_steps == 1 and sim.replica_hours == pytest.approx(8.0)


def _config(**changes):
    base = {
        "capacity_per_replica": 2.0,
        "season_length": 5,
        "fit_window": 15,
        "refit_every": 5,
        "error_window": 10,
    }
    return PredictiveScalerConfig(**{**base, **changes})


def test_scaler_is_ahead_of_demand_on_a_noiseless_series():
    y = _seasonal(60, a=12.0)
    plan = PredictiveScaler(_config(provisioning_delay=2)).plan(y)
    t = np.arange(30, 58)
    expected = np.ceil(np.maximum(y[t + 1], y[t + 2]) / 2.0 - 1e-9)
    np.testing.assert_array_equal(plan.replicas[t], expected)


def test_reactive_floor_keeps_what_the_last_load_needs():
    y = _seasonal(60, a=12.0)
    t = np.arange(30, 59)
    for floor in (1.0, 0.8):
        plan = PredictiveScaler(_config(floor_utilization=floor)).plan(y)
        # Exact forecasts (zero errors): the forecast term is y[t + 1].
        need = np.maximum(y[t + 1], y[t] / floor)
        np.testing.assert_array_equal(plan.replicas[t], np.ceil(need / 2.0 - 1e-9))
    plain = PredictiveScaler(_config()).plan(y).replicas[t]
    assert (plan.replicas[t] > plain).any()


def test_phase_conditioned_headroom_matches_a_plain_quantile():
    m, window, q, cap = 5, 20, 0.8, 2.0
    y = _seasonal(90, a=20.0) * (1 + 0.2 * np.random.default_rng(5).standard_normal(90))
    cfg = _config(phase_window=1, error_window=window, headroom_quantile=q)
    plan = PredictiveScaler(cfg).plan(y)
    fc = plan.forecasts[:, 0]
    for t in range(40, 89):
        errs = []
        for u in range(t - window + 1, t + 1):
            gap = (u - t - 1) % m
            if np.isfinite(fc[u - 1]) and min(gap, m - gap) <= 1:
                errs.append((y[u] - fc[u - 1]) / max(fc[u - 1], cap))
        assert len(errs) == 12  # 3 of 5 phases in 20 steps
        np.testing.assert_allclose(plan.upper[t, 0], fc[t] * (1 + np.quantile(errs, q)))
    wide = PredictiveScaler(cfg.replace(phase_window=2)).plan(y)
    np.testing.assert_allclose(
        wide.upper, PredictiveScaler(cfg.replace(phase_window=None)).plan(y).upper
    )
    assert not np.allclose(plan.upper[40:], wide.upper[40:])


def test_scaler_never_scales_in_within_the_stabilization_window():
    y = _seasonal(80, a=12.0) + np.random.default_rng(3).normal(0, 1.0, 80)
    y[50] += 30.0  # a spike the forecaster will chase
    window = 6
    plan = PredictiveScaler(_config(stabilization_steps=window)).plan(y)
    raw, reps = plan.recommended, plan.replicas
    for t in range(len(y)):
        assert reps[t] == raw[max(0, t - window + 1) : t + 1].max()
    assert (np.diff(reps) < 0).any()  # it does scale in once the window has passed
    free = PredictiveScaler(_config(stabilization_steps=1)).plan(y)
    np.testing.assert_array_equal(free.replicas, raw)
    assert free.replicas.sum() < reps.sum()


def test_headroom_quantile_trades_replicas_for_overloads():
    y = _seasonal(120, a=20.0) + np.random.default_rng(4).normal(0, 2.0, 120)
    low = PredictiveScaler(_config(headroom_quantile=0.2)).plan(y).replicas
    high = PredictiveScaler(_config(headroom_quantile=0.95)).plan(y).replicas
    assert (high >= low).all() and high.sum() > low.sum()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"capacity_per_replica": 0.0}, "capacity_per_replica must be a number > 0, got 0.0"),
        ({"headroom_quantile": 1.5}, "headroom_quantile must be a float in"),
        ({"fit_window": 10}, "fit_window must be an int >= 11, got 10"),
        ({"provisioning_delay": 0}, "provisioning_delay must be an int >= 1"),
        ({"max_replicas": 0}, "max_replicas must be an int >= 1"),
        ({"stabilization_steps": 2.5}, "stabilization_steps must be an int"),
        ({"floor_utilization": 0.0}, "floor_utilization must be a number > 0, got 0.0"),
        ({"phase_window": -1}, "phase_window must be an int >= 0, got -1"),
    ],
)
def test_bad_scaler_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)


def test_bad_input_raises_clearly():
    with pytest.raises(ValueError, match="tolerance must be a float in"):
        HPAConfig(target_utilization=0.7, capacity_per_replica=1.0, tolerance=1.5)
    with pytest.raises(ValueError, match="target_utilization must be a number > 0"):
        HPAConfig(target_utilization=-1, capacity_per_replica=1.0)
    with pytest.raises(TypeError, match="config must be an HPAConfig"):
        KubernetesHPA({"target_utilization": 0.7})
    with pytest.raises(ValueError, match="load must be a non-empty finite 1-D series"):
        simulate_scaling([1.0, math.nan], np.array([1, 1]), capacity_per_replica=1.0,
                         provisioning_delay=1)  # fmt: skip
    with pytest.raises(ValueError, match="policy array must have the load's shape"):
        simulate_scaling([1.0, 2.0], np.array([1]), capacity_per_replica=1.0,
                         provisioning_delay=1)  # fmt: skip
    with pytest.raises(ValueError, match="load must be a finite 1-D series of length >= 10"):
        PredictiveScaler(_config()).plan(np.ones(6))
