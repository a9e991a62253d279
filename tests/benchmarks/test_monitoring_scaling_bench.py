"""Seconds-long smoke run of the scaling part of ``opifex bench monitoring --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.monitoring import _scaling


def test_scaling_bench_quick(tmp_path):
    ctx = Context(suite="monitoring", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _scaling.run(ctx)}
    for trace in ("azure_conv", "alibaba_cpu", "nyc_taxi"):
        overloads = next(
            r for n, r in records.items() if n.startswith(f"{trace}: overloaded steps")
        )
        assert overloads.peer.startswith("Kubernetes HPA (target 0.7")
        assert overloads.value >= 0 and overloads.peer_value >= 0
        cost = records[f"{trace}: replica-hours"]
        ratio = records[f"{trace}: replica-hours ours / HPA"]
        assert cost.value > 0 and cost.peer_value > 0
        assert math.isclose(ratio.value, cost.value / cost.peer_value)
        assert ratio.target == "<= 1.1" and ratio.met is not None
        assert records[f"{trace}: overloaded-step reduction vs HPA"].target == ">= 0.5"
        assert 0 < records[f"{trace}: 1-step forecast WAPE (scored steps)"].value < 1
    assert (tmp_path / "scaling_tradeoff.png").stat().st_size > 0
