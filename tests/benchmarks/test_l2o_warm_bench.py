"""Seconds-long smoke run of the warm-start part of ``opifex bench l2o --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.l2o import _warm


def test_warm_bench_quick(tmp_path):
    ctx = Context(suite="l2o", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _warm.run(ctx)}
    # --quick runs every family and order; L-BFGS only in full mode.
    for solver in ("Levenberg-Marquardt", "gradient descent", "OSQP"):
        for order in _warm.ORDERS:
            cold = records[f"warm {solver} {order}: median iterations, cold start"]
            assert cold.value >= 1 and cold.unit == "iterations"
            for rule in _warm.RULES[1:]:
                its = records[f"warm {solver} {rule} {order}: median iterations cold/warm"]
                assert its.target == _warm.TARGETS[solver] and its.met is not None
                assert math.isfinite(its.value) and its.value > 0
                wall = records[f"warm {solver} {rule} {order}: median wall time cold/warm"]
                assert wall.value > 0
        assert records[f"warm {solver}: solves not converged (all rules)"].value == 0
        # A proposal is a few NumPy operations: far cheaper than the cold solve it replaces.
        for rule in _warm.RULES[1:]:
            proposal = records[f"warm {solver} {rule}: median proposal time"]
            assert proposal.unit == "us" and proposal.value < proposal.peer_value
    # Gradient descent is cold-started at 0, so its cold runs take hundreds of steps; every
    # warm start begins closer and saves steps. On the segment of right-hand sides the ridge
    # predictor is nearly exact, so OSQP needs far fewer iterations from its start.
    assert records["warm gradient descent sequential: median iterations, cold start"].value > 100
    for rule in _warm.RULES[1:]:
        assert (
            records[f"warm gradient descent {rule} sequential: median iterations cold/warm"].value
            > 1
        )
    assert records["warm OSQP learned sequential: median iterations cold/warm"].value >= 1.5
    assert (tmp_path / "warm_iterations.png").stat().st_size > 0
