"""Seconds-long smoke run of the CBF part of ``opifex bench control --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.control import _cbf


def test_cbf_bench_quick(tmp_path):
    ctx = Context(suite="control", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _cbf.run(ctx)}
    for case in ("acc", "unicycle"):
        safety = records[f"{case}: violations h < -1e-6 (16 states)"]
        assert safety.value == 0 and safety.met is True and safety.target == "<= 0"
        # The nominal controller alone would leave the safe set: the filter did the work.
        assert records[f"{case}: share of states the nominal controller drives unsafe"].value > 0.5
        assert records[f"{case}: min h over all trajectories"].value >= -1e-6
        assert records[f"{case}: max |u - numpy closed form| / max(1, |u|)"].met is True
        single = records[f"{case}: filter time per state (jit, median)"]
        batch = records[f"{case}: filter time 10000 states (vmap, median)"]
        for timing in (single, batch):
            assert math.isfinite(timing.value) and timing.value > 0 and timing.met is not None
            assert timing.peer and timing.peer_value > 0
    assert records["acc: filter time per state (jit, median)"].peer.startswith("scipy SLSQP")
    for name in ("cbf_barrier_over_time", "cbf_unicycle_paths"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
