"""The benchmark harness: targets computed from values, summary schema, timing split."""

import json

import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from opifex.benchmarks import _registry
from opifex.benchmarks._harness import Context, Record, time_host, time_jax, write_summary


@given(
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    threshold=st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_met_is_computed_from_value(value, threshold):
    assert Record("x", value, "u", target=f"<= {threshold!r}").met == (value <= threshold)
    assert Record("x", value, "u", target=f">= {threshold!r}").met == (value >= threshold)
    assert Record("x", value, "u").met is None


def test_nan_never_meets_a_target_and_bad_target_rejected():
    assert Record("x", float("nan"), "u", target="<= 1").met is False
    with pytest.raises(ValueError, match="target must look like"):
        Record("x", 1.0, "u", target="about 1")
    with pytest.raises(TypeError):
        Record("x", 1.0, "u", met=True)  # met is never written by hand


def test_ratio():
    assert Record("t", 2.0, "s", peer="p", peer_value=4.0).ratio == 0.5
    assert Record("t", 2.0, "s").ratio is None


def test_time_jax_separates_compile_from_run():
    t = time_jax(lambda x: jnp.sin(x) @ jnp.cos(x).T, jnp.ones((64, 64)), repeats=3)
    assert len(t.runs) == 3 and t.compile_s > 0 and t.run_s > 0
    assert min(t.runs) <= t.run_s <= max(t.runs)
    h = time_host(lambda: sum(range(1000)), repeats=4)
    assert len(h.runs) == 4


def test_summary_schema_and_cli(tmp_path, monkeypatch):
    def fake_suite(ctx):
        return [
            Record("speed", 2.0, "x", target=">= 1.5", peer="peer", peer_value=1.0),
            Record("error", 0.3, "1", target="<= 0.1"),
        ]

    import sys
    import types

    module = types.ModuleType("fake_suite_mod")
    module.run = fake_suite
    monkeypatch.setitem(sys.modules, "fake_suite_mod", module)
    monkeypatch.setitem(_registry.SUITES, "fake", "fake_suite_mod:run")
    from opifex.cli import main

    assert main(["bench", "fake", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "fake" / "summary.json").read_text())
    assert summary["suite"] == "fake" and summary["quick"] is True
    keys = {"name", "value", "unit", "target", "met", "peer", "peer_value"}
    assert all(keys <= set(r) for r in summary["records"])
    assert [r["met"] for r in summary["records"]] == [True, False]


def test_unknown_suite_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark suite 'nope'"):
        _registry.run_suite("nope", out_root=tmp_path, console=Console(file=None))


def test_context_writes_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = Context("s", True, tmp_path, Console(quiet=True))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = ctx.save_figure(fig, "line")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = write_summary(ctx, [Record("a", 1, "u")])
    assert json.loads(out.read_text())["records"][0]["name"] == "a"
