"""Seconds-long smoke run of ``opifex bench pinn --quick``: every recipe, records and plots."""

from __future__ import annotations

import json
import math

from rich.console import Console

from opifex.benchmarks._registry import run_suite


def test_pinn_suite_quick(tmp_path):
    records = run_suite(
        "pinn",
        quick=True,
        out_root=tmp_path,
        console=Console(quiet=True),
        options={"adam_steps": "5", "second_steps": "5"},
    )
    by_name = {r.name: r for r in records}
    ratio = by_name["burgers loss+grad time ratio jvp / nested grad"]
    assert math.isfinite(ratio.value) and ratio.value > 0
    accuracy = next(r for r in records if r.name.startswith("burgers: relative L2, opifex"))
    assert 0 < accuracy.value < 2 and accuracy.peer == "adam+optax-lbfgs"
    assert accuracy.met is False  # 5 + 5 iterations cannot reach the published 6.7e-4
    summary = json.loads((tmp_path / "pinn" / "summary.json").read_text())
    assert summary["suite"] == "pinn" and len(summary["records"]) == len(records)
    assert (tmp_path / "pinn" / "burgers_time_to_accuracy.png").stat().st_size > 0
