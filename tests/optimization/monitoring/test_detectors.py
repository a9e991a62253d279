"""Detectors find injected spikes, level shifts and variance changes at known positions."""

from __future__ import annotations

import numpy as np
import pytest

from opifex.optimization._monitoring import _detectors as det


def _seasonal(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return 10 + np.sin(2 * np.pi * np.arange(n) / 50) + 0.1 * rng.normal(size=n)


def test_spikes_found_by_robust_baseline_and_ensemble():
    x = _seasonal()
    spikes = [700, 1200, 1700]
    x[spikes] += 4.0
    s = det.robust_baseline_scores(x, window=50)
    assert set(np.argsort(s)[-3:]) == set(spikes)
    result = det.detect(x, threshold=0.35, weights=(0.0, 1.0, 0.0), window=50)
    found = {a.index for a in result.alerts if a.index >= 300}
    assert set(spikes) <= found and len(found) <= 6
    assert all("robust SDs above" in a.reason for a in result.alerts if a.index in spikes)


def test_level_shift_found_by_cusum_within_a_few_points():
    x = _seasonal(seed=1) - np.sin(2 * np.pi * np.arange(2000) / 50)
    x[1000:] += 1.0
    s = det.cusum_scores(x, window=64)
    first = int(np.argmax(s > 0.5))
    assert 1000 <= first <= 1010
    assert s[200:995].max() < 0.5


def test_variance_change_found_by_contextual_detector():
    rng = np.random.default_rng(2)
    x = np.tile(np.repeat([0.0, 1.0, 2.0, 1.0], 5), 100)
    x[1500:] += rng.normal(scale=1.0, size=500)
    s = det.contextual_novelty_scores(x, bins=10, lags=4, learn=300)
    assert s[300:1500].max() < 0.2
    assert 1500 <= int(np.argmax(s[300:] > 0.5)) + 300 <= 1505


def test_suppression_keeps_only_new_maxima():
    s = det.suppress_repeats(np.array([0.0, 0.5, 0.5, 0.4, 0.9, 0.0, 0.0, 0.2]), period=2)
    np.testing.assert_allclose(s, [0.0, 0.5, 0.0, 0.0, 0.9, 0.0, 0.0, 0.2])


def test_scores_are_causal():
    x = _seasonal(600)
    x[400] += 3.0
    full = det.robust_baseline_scores(x)
    prefix = det.robust_baseline_scores(x[:450])
    np.testing.assert_allclose(full[:450], prefix)


def test_bad_input_is_reported_clearly():
    x = _seasonal(300)
    x[[100, 200]] = np.nan
    with pytest.raises(ValueError, match=r"2 NaN/inf point\(s\), first at index 100"):
        det.detect(x)
    result = det.detect(x, nan_policy="fill", threshold=0.99)
    flagged = [a for a in result.alerts if a.reason == "non-finite value"]
    assert [a.index for a in flagged] == [100, 200] and np.isfinite(result.scores).all()
    with pytest.raises(ValueError, match="series too short: got 5 points"):
        det.robust_baseline_scores(np.ones(5))
    with pytest.raises(ValueError, match="1-D"):
        det.detect(np.ones((10, 10)))
    with pytest.raises(ValueError, match="nan_policy"):
        det.detect(x, nan_policy="skip")


def test_context_set_detector_flags_an_injected_novel_pattern():
    rng = np.random.default_rng(3)
    x = np.sin(2 * np.pi * np.arange(3000) / 40) + 0.02 * rng.normal(size=3000)
    # a zig-zag inside the normal range: every value is familiar, its context is not
    x[2000:2010] = np.tile([0.8, -0.8], 5)
    s = det.context_set_scores(x, levels=8, max_left=7)
    peak = int(np.argmax(s[1000:])) + 1000
    assert 2000 <= peak < 2012 and s[peak] >= 0.75
    # the rest period (CAD OSE: 0.03 n = 90 points) silences the aftermath of the alert
    assert s[peak + 1 : peak + 90].max() == 0.0
    assert s[1000:1990].max() < 0.5


def test_context_set_detector_is_causal_and_rejects_bad_levels():
    rng = np.random.default_rng(4)
    x = rng.normal(size=600).cumsum()
    full = det.context_set_scores(x, rest_period=20)
    np.testing.assert_array_equal(det.context_set_scores(x[:400], rest_period=20), full[:400])
    with pytest.raises(ValueError, match=r"levels must be in 2\.\.32"):
        det.context_set_scores(x, levels=40)


def test_context_set_probation_bins_are_causal_past_the_probation_window():
    rng = np.random.default_rng(5)
    x = rng.normal(size=600).cumsum()
    full = det.context_set_scores(x, rest_period=20, probation=90)
    for m in (91, 250, 599):
        prefix = det.context_set_scores(x[:m], rest_period=20, probation=90)
        np.testing.assert_array_equal(prefix, full[:m])
    # the running-range variant differs: the walk leaves the probation range after point 90
    assert not np.array_equal(full, det.context_set_scores(x, rest_period=20))
    with pytest.raises(ValueError, match="probation must be None or >= 2"):
        det.context_set_scores(x, probation=1)
