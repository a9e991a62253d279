"""Seconds-long smoke run of the learned-optimizer part of ``opifex bench l2o --quick``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.l2o import _learned


def test_learned_bench_quick(tmp_path):
    ctx = Context(suite="l2o", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = _learned.run(ctx)
    by_prefix = {r.name.split(" (")[0]: r for r in records}
    meta = by_prefix["meta-training time"]
    assert meta.value > 0 and meta.target == "<= 300"
    ratio = next(r for r in records if r.name.startswith("median steps ratio tuned Adam"))
    assert ratio.target == ">= 2" and ratio.peer.startswith("adam lr") and ratio.value >= 0
    for name in (
        "fraction of tasks without divergence at 4T",
        "fraction of tasks with learned f(4T) <= Adam f(4T)",
    ):
        rec = next(r for r in records if r.name.startswith(name))
        assert 0.0 <= rec.value <= 1.0 and rec.target == "== 1"
    assert any(r.peer == "prodigy" and r.name.startswith("median steps ratio") for r in records)
    timing = next(r for r in records if r.name.startswith("time per step and task, learned"))
    assert math.isfinite(timing.value) and timing.value > 0 and timing.peer_value > 0
    assert (tmp_path / "learned_theta.npz").stat().st_size > 0
    for name in ("l2o_learned_loss_curves", "l2o_learned_steps_ratio"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
