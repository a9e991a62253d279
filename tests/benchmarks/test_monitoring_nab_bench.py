"""Seconds-long smoke run of the NAB part of ``opifex bench monitoring --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.monitoring import _nab


def test_nab_part_quick(tmp_path):
    ctx = Context(suite="monitoring", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _nab.run(ctx)}
    assert records["nab scorer: null detector, max |ours - stored| per file"].met is True
    assert records["nab scorer: windowedGaussian raw outputs, max |ours - stored| per file"].met
    normalised = records["nab scorer: windowedGaussian stored total, normalised"]
    assert abs(normalised.value - normalised.peer_value) < 0.1
    lofo = records["nab standard: ensemble, threshold leave-one-file-out"]
    assert math.isfinite(lofo.value) and lofo.peer_value > 70
    assert records["nab detection throughput, one core"].value > 0
    assert (tmp_path / "nab_detections.png").stat().st_size > 0
