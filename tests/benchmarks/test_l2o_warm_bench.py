"""Seconds-long smoke run of the warm-start part of ``opifex bench l2o --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.l2o import _warm


def test_warm_bench_quick(tmp_path):
    ctx = Context(suite="l2o", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _warm.run(ctx)}
    for solver, target in _warm.TARGETS.items():
        cold = records[f"warm {solver}: median iterations, cold start"]
        assert cold.value >= 1 and cold.unit == "iterations"
        for rule in _warm.RULES[1:]:
            its = records[f"warm {solver} {rule}: median iterations cold/warm"]
            assert its.target == target and its.met is not None
            assert math.isfinite(its.value) and its.value > 0
            assert records[f"warm {solver} {rule}: median wall time cold/warm"].value > 0
    # Every OSQP solve of the quick run converges; the ridge predictor is exact enough on the
    # segment of right-hand sides that OSQP needs far fewer iterations from its start.
    assert records["warm OSQP: solves not converged (all rules)"].value == 0
    assert records["warm OSQP learned: median iterations cold/warm"].value >= 1.5
    assert (tmp_path / "warm_iterations.png").stat().st_size > 0
