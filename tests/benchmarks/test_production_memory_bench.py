"""Smoke run of the memory part of ``opifex bench production``: measured records and a plot."""

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.production import _memory


def test_memory_part_quick(tmp_path):
    ctx = Context("production", True, tmp_path, Console(quiet=True))
    records = {r.name: r for r in _memory.run(ctx)}
    for model in ("deep MLP", "PINN"):
        name = f"memory {model}"
        never_worse = records[f"{name}: chosen temp bytes / no-remat temp bytes (never worse)"]
        assert never_worse.met and never_worse.value < 0.7
        assert records[f"{name}: chosen FLOPs / no-remat FLOPs"].met
        assert records[f"{name}: max |grad chosen - grad no remat| / max |grad|"].met
        assert records[f"{name}: bytes donated in the Adam step / params+state bytes"].met
        micro = [r for r in records.values() if r.name.startswith(f"{name}: micro-batched")]
        assert len(micro) == 1 and micro[0].met
        timing = records[f"{name}: median value_and_grad time, chosen policy"]
        assert timing.value > 0 and timing.peer_value > 0
    assert (tmp_path / "memory_candidates.png").stat().st_size > 10_000
