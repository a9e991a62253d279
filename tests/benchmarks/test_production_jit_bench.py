"""Seconds-long smoke run of the jit part of ``opifex bench production --quick``."""

from __future__ import annotations

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.production import _jit


def test_jit_bench_quick(tmp_path):
    ctx = Context(suite="production", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _jit.run(ctx)}
    tag = "jit: 40 calls, batch 1..32"
    compiles = records[f"{tag}: compilations after warm-up"]
    assert compiles.value == 0 and compiles.met is True
    # Plain jit compiles once per batch size it has not seen (warm-up covered the buckets).
    assert compiles.peer_value >= records[f"{tag}: distinct batch sizes"].value - 3
    assert records[f"{tag}: buckets compiled at warm-up"].value == 3
    assert records["jit: persistent cache hits in the second process"].value >= 1
    speed = records["jit: second-process compile speed-up with persistent cache (depth 8)"]
    assert speed.value > 1 and speed.met is not None
