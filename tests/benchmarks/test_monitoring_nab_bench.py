"""Seconds-long smoke run of the NAB part of ``opifex bench monitoring --quick``."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.monitoring import _nab


def test_nested_hold_out_picks_config_and_threshold_on_the_other_groups():
    # curves[config, file, threshold]; config 0 is best on files 1-2, config 1 on file 0
    curves = np.array(
        [
            [[0.0, 5.0], [1.0, 0.0], [1.0, 0.0]],
            [[0.0, 9.0], [0.0, 0.2], [0.0, 0.2]],
        ]
    )
    # file 0 held out: others favour (config 0, thr 0) -> 0.0; file 1 held out: others sum to
    # [[1, 5], [0, 9.2]] -> (config 1, thr 1) -> 0.2; file 2 likewise -> 0.2
    total, picks = _nab._held_out_total(curves, [0, 1, 2])
    assert math.isclose(total, 0.4) and picks.tolist() == [0, 1, 1]
    # files 1 and 2 as one group: held out together they see only file 0 -> (config 1, thr 1)
    total, picks = _nab._held_out_total(curves, [0, 1, 1])
    assert math.isclose(total, 0.0 + 0.4) and picks.tolist() == [0, 1]


def test_nab_part_quick(tmp_path):
    ctx = Context(suite="monitoring", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _nab.run(ctx)}
    assert records["nab scorer: null detector, max |ours - stored| per file"].met is True
    assert records["nab scorer: windowedGaussian raw outputs, max |ours - stored| per file"].met
    normalised = records["nab scorer: windowedGaussian stored total, normalised"]
    assert abs(normalised.value - normalised.peer_value) < 0.1
    nested = records["nab standard: detector grid, config+threshold nested leave-one-file-out"]
    assert math.isfinite(nested.value) and nested.peer_value > 70
    default = records["nab standard: default ensemble, threshold leave-one-file-out"]
    assert math.isfinite(default.value)
    assert records["nab detection throughput, one core"].value > 0
    assert (tmp_path / "nab_detections.png").stat().st_size > 0


def test_grid_scores_equal_the_public_ensemble():
    rng = np.random.default_rng(0)
    x = np.tile([0.0, 1.0, 2.0, 1.0], 150) + 0.05 * rng.normal(size=600)
    x[450] = 6.0
    grid = [{"bins": 10, "lags": 4, "suppress": 15, "robust_weight": 0.5}]
    (ours,) = _nab._grid_scores(x, grid)
    expected = _nab.det.ensemble_scores(x, weights=(1.0, 0.5, 0.0), bins=10, lags=4, suppress=15)
    np.testing.assert_allclose(ours, expected)
