"""Seconds-long smoke run of the ``qp`` part of ``opifex bench l2o --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.l2o import _qp


def test_qp_bench_quick(tmp_path):
    ctx = Context(suite="l2o", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _qp.run(ctx)}
    tag = "qp dual+ADMM10+proj"
    # Exact feasibility holds whatever the (tiny) training did.
    assert records[f"{tag}: exactly feasible fraction (eq<=1e-8, ineq<=0)"].value == 1.0
    assert records[f"{tag}: max equality residual"].value <= 1e-10
    assert records[f"{tag}: max inequality violation"].value == 0.0
    # The certified gap bounds the true one: OSQP (eps 1e-4) cannot beat the bound by more
    # than its own tolerance allows.
    gap = records[f"{tag}: mean |rel gap| vs OSQP (48 test)"]
    cert = records[f"{tag}: mean certified gap (f - dual bound)/|bound|"]
    assert 0 <= gap.value <= cert.value + 1e-3 and gap.peer_value == 0.106
    osqp = records["qp OSQP eps 1e-4: mean objective (48 test)"]
    assert -15.5 < osqp.value < -14.5 and osqp.peer_value == -15.05
    for name in (
        f"{tag}: throughput speedup vs OSQP eps 1e-4, fresh setup",
        f"{tag}: throughput speedup vs OSQP eps 1e-4, reused setup",
        f"{tag}: single-instance latency (median)",
        f"{tag}: break-even instances vs OSQP eps 1e-4, reused setup",
    ):
        assert math.isfinite(records[name].value) and records[name].value > 0, name
    assert records[f"{tag}: throughput speedup vs OSQP eps 1e-4, fresh setup"].target == ">= 100"
    dc3 = records["qp DC3 (ours, 0 steps): max equality residual"]
    assert dc3.value <= 1e-10
    for name in ("qp_gap_histogram", "qp_training_curves"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
