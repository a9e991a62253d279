"""Seconds-long smoke run of the system-identification benchmark part, and its ARX baseline
on a case with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.control import _sysid


def test_arx_baseline_is_exact_on_noise_free_arx_data():
    rng = np.random.default_rng(0)
    u = rng.normal(size=400)
    y = np.zeros(400)
    for k in range(1, 399):
        y[k + 1] = 1.1 * y[k] - 0.4 * y[k - 1] + 0.5 * u[k] + 0.2 * u[k - 1] + 0.05
    fitted, pred, rmse = _sysid.arx_baseline(
        y[:200], u[:200], y[200:], u[200:], na=2, nb=2, n_init=5
    )
    np.testing.assert_allclose(fitted.params["theta"][:, 0], [1.1, -0.4, 0.5, 0.2, 0.05], atol=1e-9)
    assert rmse < 1e-9 and pred.shape == (200, 1)


def test_sysid_bench_quick(tmp_path):
    try:
        from opifex._data import data_path

        data_path(*_sysid.TANKS_FILE), data_path(*_sysid.SILVERBOX_FILE)
    except FileNotFoundError as exc:
        pytest.skip(f"reference data missing: {exc}")
    ctx = Context("control", True, tmp_path, Console(quiet=True))
    records = _sysid.run(ctx)
    by_name = {r.name: r for r in records}
    tanks = by_name["cascaded tanks: test simulation RMSE, grey box"]
    assert tanks.unit == "V" and tanks.target == "<= 0.30" and tanks.peer == _sysid.PEER
    assert 0 < tanks.value < 5 and 0 < tanks.peer_value < 5
    multisine = by_name["silverbox multisine: test simulation RMSE, polynomial NARX"]
    assert multisine.unit == "mV" and multisine.target == "<= 1.5"
    assert "silverbox arrow no-extrapolation: test simulation RMSE, polynomial NARX" in by_name
    for r in records:
        assert (math.isfinite(r.value) and r.value >= 0) or r.unit == "%", r
        assert r.peer_value is None or math.isfinite(r.peer_value)
    assert (tmp_path / "cascaded_tanks_test.png").stat().st_size > 0
    assert (tmp_path / "silverbox_multisine_test.png").stat().st_size > 0
