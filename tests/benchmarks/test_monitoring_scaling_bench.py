"""Seconds-long smoke run of the scaling part of ``opifex bench monitoring --quick``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from opifex.benchmarks._harness import Context
from opifex.benchmarks.monitoring import _scaling


def test_scaling_bench_quick(tmp_path):
    ctx = Context(suite="monitoring", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = {r.name: r for r in _scaling.run(ctx)}
    for trace in ("azure_conv", "alibaba_cpu", "nyc_taxi"):
        overloads = next(
            r for n, r in records.items() if n.startswith(f"{trace}: overloaded steps")
        )
        assert overloads.peer.startswith("Kubernetes HPA (target 0.7")
        assert overloads.value >= 0 and overloads.peer_value >= 0
        cost = records[f"{trace}: replica-hours"]
        ratio = records[f"{trace}: replica-hours ours / HPA"]
        assert cost.value > 0 and cost.peer_value > 0
        assert math.isclose(ratio.value, cost.value / cost.peer_value)
        assert ratio.target == "<= 1.1" and ratio.met is not None
        excess = records[f"{trace}: overloaded steps minus half of HPA's"]
        assert excess.value == overloads.value - 0.5 * overloads.peer_value
        assert excess.met == (overloads.value <= 0.5 * overloads.peer_value)
        reduction = records.get(f"{trace}: overloaded-step reduction vs HPA")
        if overloads.peer_value:
            assert math.isclose(reduction.value, 1 - overloads.value / overloads.peer_value)
        else:
            assert reduction is None
        assert 0 < records[f"{trace}: 1-step forecast WAPE (scored steps)"].value < 1
    assert (tmp_path / "scaling_tradeoff.png").stat().st_size > 0


def test_budgeted_choice_uses_only_the_past_and_the_budget():
    n = 12
    sim = lambda requested, overloaded: SimpleNamespace(  # noqa: E731
        requested=np.asarray(requested), overloaded=np.asarray(overloaded, bool)
    )
    hpa = sim(np.full(n, 10), np.zeros(n))
    # "cheap" overloads everywhere; "rich" costs 12 > budget 10 until step 6, 9 after;
    # "mid" costs 10 with no overload before step 6 and fails after.
    fixed = {
        "cheap": sim(np.full(n, 5), np.ones(n)),
        "rich": sim([12] * 6 + [9] * 6, np.zeros(n)),
        "mid": sim(np.full(n, 10), [0] * 6 + [1] * 6),
    }
    plans = {k: np.full(n, i + 1) for i, k in enumerate(fixed)}
    tr = {"fit": 4, "refit": 4, "errors": 4, "load": np.zeros(n)}
    chosen, decisions = _scaling._budgeted(tr, plans, fixed, hpa)
    # Block [4, 8): past [0, 4): rich over budget, mid has no overload.  Block [8, 12): past
    # [4, 8): rich costs 12+12+9+9 = 42 > 40, mid overloads twice, cheap four times.
    assert chosen == ["mid", "mid"]
    np.testing.assert_array_equal(decisions, [1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3])
    tr["errors"] = 2  # past [6, 8): rich costs 18 <= 20 with no overload
    assert _scaling._budgeted(tr, plans, fixed, hpa)[0] == ["mid", "rich"]
