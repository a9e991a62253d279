"""NAB scorer: hand-computed sigmoid scores, and NAB's stored null / windowedGaussian results."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from opifex._data import data_path
from opifex.optimization._monitoring import _nab as nab

STD = nab.NAB_PROFILES["standard"]


def _sig(y):
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def _layout(n=100, windows=(("2020-01-01T00:40:00", "2020-01-01T00:49:00"),)):
    stamps = np.datetime64("2020-01-01T00:00:00") + np.arange(n) * np.timedelta64(60, "s")
    wins = [(a.replace("T", " "), b.replace("T", " ")) for a, b in windows]
    return nab.prepare_file(stamps, wins, probation_percent=0.0)


def test_hand_computed_scores():
    layout = _layout()
    assert nab.score_file(layout, np.zeros(100), 0.5, STD).score == -1.0
    a = np.zeros(100)
    a[40] = 1.0  # left edge earns exactly tp
    assert nab.score_file(layout, a, 0.5, STD).score == pytest.approx(1.0)
    a[45] = 1.0  # a later detection in the same window adds nothing
    assert nab.score_file(layout, a, 0.5, STD).score == pytest.approx(1.0)
    b = np.zeros(100)
    b[45] = 1.0
    expected = _sig(-(49 - 45 + 1) / 10) / _sig(-1.0)
    assert nab.score_file(layout, b, 0.5, STD).score == pytest.approx(expected)
    c = np.zeros(100)
    c[[10, 60]] = 1.0  # FP before any window costs fp; after the window it is sigmoid-weighted
    fp_after = 0.11 * _sig((60 - 49) / 9)
    assert nab.score_file(layout, c, 0.5, STD).score == pytest.approx(-1.0 - 0.11 + fp_after)
    low_fn = nab.NAB_PROFILES["reward_low_FN_rate"]
    assert nab.score_file(layout, np.zeros(100), 0.5, low_fn).score == -2.0


def test_curve_equals_pointwise_scoring():
    layout = _layout(300, (("2020-01-01T01:40:00", "2020-01-01T01:59:00"),))
    a = np.random.default_rng(0).uniform(size=300)
    t = np.linspace(0, 1, 23)
    for profile in nab.NAB_PROFILES.values():
        direct = [nab.score_file(layout, a, ti, profile).score for ti in t]
        np.testing.assert_allclose(nab.score_curve(layout, a, t, profile), direct, atol=1e-12)


def _rows(*parts):
    with open(data_path("nab", "results", *parts)) as f:
        return {r["File"] or r["Detector"]: r for r in csv.DictReader(f)}


def test_null_detector_reproduces_every_stored_file_and_the_total():
    windows = nab.load_windows()
    stored = _rows("null", "null_standard_scores.csv")
    layouts, total = [], 0.0
    for name in sorted(windows):
        layout = nab.prepare_file(nab.read_series(name)[0], windows[name])
        layouts.append(layout)
        s = nab.score_file(layout, np.zeros(layout.n), 0.6, STD)
        r = stored[name]
        assert abs(s.score - float(r["Score"])) < 0.1
        assert (s.tp, s.tn, s.fp, s.fn, s.total) == tuple(
            int(r[k]) for k in ("TP", "TN", "FP", "FN", "Total_Count")
        )
        total += s.score
    assert abs(total - float(stored["Totals"]["Score"])) < 0.1
    null, perfect = nab.null_and_perfect(layouts, STD)
    assert nab.normalized_score(total, null, perfect) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["nyc_taxi", "machine_temperature_system_failure"])
def test_windowed_gaussian_raw_outputs_reproduce_stored_scores(name):
    rel = f"realKnownCause/{name}.csv"
    with open(
        data_path(
            "nab", "results", "windowedGaussian", "realKnownCause", f"windowedGaussian_{name}.csv"
        )
    ) as f:
        rows = list(csv.DictReader(f))
    a = np.array([float(r["anomaly_score"]) for r in rows])
    layout = nab.prepare_file(nab.read_series(rel)[0], nab.load_windows()[rel])
    stored = _rows("windowedGaussian", "windowedGaussian_standard_scores.csv")[rel]
    threshold = float(stored["Threshold"])
    s = nab.score_file(layout, a, threshold, STD)
    assert abs(s.score - float(stored["Score"])) < 0.1
    assert (s.tp, s.tn, s.fp, s.fn) == tuple(int(stored[k]) for k in ("TP", "TN", "FP", "FN"))
    for profile_name, profile in nab.NAB_PROFILES.items():
        per_row = np.array([float(r[f"S(t)_{profile_name}"]) for r in rows])
        got = nab.score_file(layout, a, threshold, profile).contributions
        np.testing.assert_allclose(got, per_row, atol=1e-9)


def test_stored_totals_normalise_to_published_scores():
    published = json.loads(data_path("nab", "results", "final_results.json").read_text())
    total = float(
        _rows("windowedGaussian", "windowedGaussian_standard_scores.csv")["Totals"]["Score"]
    )
    score = nab.normalized_score(total, -116.0, 116.0)
    assert abs(score - published["windowedGaussian"]["standard"]) < 0.1


def test_bad_input_is_rejected():
    layout = _layout()
    with pytest.raises(ValueError, match="shape"):
        nab.score_file(layout, np.zeros(5), 0.5, STD)
    with pytest.raises(ValueError, match="NaN"):
        nab.score_file(layout, np.full(100, np.nan), 0.5, STD)
    with pytest.raises(ValueError, match="not timestamps"):
        _layout(windows=(("2021-01-01T00:00:00", "2021-01-01T00:01:00"),))
    with pytest.raises(ValueError, match="fp_weight"):
        nab.NABProfile(fp_weight=-1.0)
