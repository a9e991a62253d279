"""Smoke run of the batched-fits benchmark part: real fits, certified answers, a plot."""

import pytest
from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.second_order import _batch


def test_batch_part_quick(tmp_path, monkeypatch):
    try:
        from opifex.benchmarks.problems.nist import load_nist

        load_nist("MGH17")
    except FileNotFoundError as err:
        pytest.skip(f"NIST data missing: {err}")
    monkeypatch.setattr(_batch, "QUICK_SIZES", (1, 8))
    ctx = Context("second-order", True, tmp_path, Console(quiet=True))
    records = {r.name: r for r in _batch.run(ctx)}
    right = records["batch LM MGH17: fraction at the certified minimum (>= 6 digits), N=8"]
    assert right.value == 1.0 and right.met
    assert records["batch LM MGH17: fits/s at N=8 (cpu)"].value > 0
    false = "batch LM MGH17: false convergences (CONVERGED, wrong, RSS not larger), N=8"
    assert records[false].value == 0
    assert (tmp_path / "batch_lm_throughput.png").stat().st_size > 10_000
