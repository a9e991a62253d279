"""Seconds-long smoke run of the NNX part of ``opifex bench second-order``."""

from __future__ import annotations

import math

from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.second_order import _nnx


def test_nnx_part_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(_nnx, "NUM_POINTS", 32)
    monkeypatch.setattr(_nnx, "WIDTH", 8)
    ctx = Context(suite="second-order", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {
        r.name.split(" after")[0].split(" over")[0].split(" vs raw")[0]: r for r in _nnx.run(ctx)
    }
    iterate = records["nnx lbfgs: max |iterate diff|"]
    assert iterate.met and iterate.value <= 1e-8
    assert records["nnx lbfgs: max |loss diff|"].met
    assert records["nnx lbfgs: traces of the jitted step"].value == 1
    ratio = records["nnx lbfgs: wrapper fit / same loop on raw flat params (post-jit)"]
    assert math.isfinite(ratio.value) and ratio.value > 0
    hybrid = records["nnx hybrid: final loss"]
    assert hybrid.value < hybrid.peer_value  # the hybrid beats Adam alone on the same budget
    assert 0 <= records["nnx hybrid: switch step (plateau criterion)"].value <= 150
    assert (tmp_path / "nnx_hybrid_loss.png").stat().st_size > 0
