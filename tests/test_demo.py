"""A small run of each part of ``opifex demo``: tables print real figures, plots are written."""

import pytest
from rich.console import Console

from opifex.benchmarks._harness import Context


def test_demo_parts(tmp_path):
    pytest.importorskip("optimistix")
    from opifex import demo

    console = Console(record=True, width=140)
    ctx = Context("demo", True, tmp_path, console)
    try:
        demo._nist_fits(ctx, ["Misra1a"])
    except FileNotFoundError as err:
        pytest.skip(f"NIST data missing: {err}")
    demo._lbfgs_race(ctx, n=4)
    text = console.export_text()
    assert "Misra1a" in text and "CONVERGED" in text
    assert "optimistix LBFGS" in text and "scipy L-BFGS-B" in text
    assert (tmp_path / "nist_fits.png").stat().st_size > 10_000
    assert (tmp_path / "lbfgs_race.png").stat().st_size > 10_000
