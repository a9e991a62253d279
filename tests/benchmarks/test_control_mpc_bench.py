"""Smoke run of the MPC part of ``opifex bench control --quick`` (LQR, cart-pole vs IPOPT)."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.control import _mpc

pytest.importorskip("casadi")


def test_mpc_bench_quick(tmp_path):
    ctx = Context(
        suite="control",
        quick=True,
        out_dir=tmp_path,
        console=Console(quiet=True),
        options={"closed_loop_steps": "3"},
    )
    records = {r.name: r for r in _mpc.run(ctx)}
    for name, record in records.items():
        assert math.isfinite(record.value), name
        if name.startswith("lqr"):
            assert record.met is True, (name, record.value)  # exact: Riccati to 1e-8
    assert records["cart-pole open loop: |J - J_ipopt| / J_ipopt"].met is True
    assert abs(records["cart-pole open loop: cost"].peer_value - 2045.0628) < 1e-3  # IPOPT
    assert records["cart-pole closed loop: input-bound violations"].value == 0
    assert not any(name.startswith("gradients") for name in records)  # full run only
    assert (tmp_path / "cartpole.png").stat().st_size > 0
