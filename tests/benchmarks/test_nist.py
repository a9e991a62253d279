"""NIST StRD parser, models and a smoke run of the NIST benchmark part."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from opifex._data import data_dir

try:
    _NIST = data_dir() / "nist_strd"
    _MISSING = None if _NIST.is_dir() else f"NIST data folder missing: {_NIST}"
except FileNotFoundError as err:
    _MISSING = f"NIST data folder missing: {err}"

pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

from opifex.benchmarks.problems.nist import (  # noqa: E402
    NIST_PROBLEMS,
    load_nist,
    log_relative_error,
    parse_nist,
)


def test_parser_reads_certified_values():
    p = load_nist("Misra1a")
    assert p.path.name == "Misra1a.dat"
    np.testing.assert_array_equal(p.certified, [2.3894212918e02, 5.5015643181e-04])
    np.testing.assert_array_equal(p.certified_std, [2.7070075241e00, 7.2668688436e-06])
    np.testing.assert_array_equal(p.starts, [[500.0, 1e-4], [250.0, 5e-4]])
    assert p.certified_rss == 1.2455138894e-01
    assert p.x.shape == p.y.shape == (14,)
    assert (p.y[0], p.x[0]) == (10.07, 77.6)


def test_parser_two_predictors_and_nine_parameters():
    nelson = load_nist("Nelson")
    assert nelson.x.shape == (128, 2) and nelson.starts.shape == (2, 3)
    enso = load_nist("ENSO")
    assert enso.certified.shape == (9,) and enso.y.shape == (168,)


@pytest.mark.parametrize("name", NIST_PROBLEMS)
def test_certified_rss_reproduced_by_model(name):
    p = load_nist(name)
    r = p.residual(jnp.asarray(p.certified), (jnp.asarray(p.x), jnp.asarray(p.y)))
    # Lanczos1's RSS (1.4e-25) is below float64 rounding of its model (~1e-21 in total).
    np.testing.assert_allclose(float(r @ r), p.certified_rss, rtol=1e-6, atol=1e-19)


def test_parser_rejects_bad_text():
    with pytest.raises(ValueError, match="not a NIST"):
        parse_nist("hello\nworld\n", "junk")
    text = load_nist("Misra1a").path.read_text()
    with pytest.raises(ValueError, match="observations"):
        parse_nist(text + "  1.0  2.0\n", "Misra1a+1")


def test_unknown_problem():
    with pytest.raises(ValueError, match="unknown NIST problem"):
        load_nist("Bennett5")


def test_log_relative_error():
    np.testing.assert_allclose(log_relative_error([1.001, 2.0], [1.0, 2.0]), [3.0, 15.0])


@pytest.mark.parametrize("name", ["Misra1a", "Chwirut2", "Lanczos3", "MGH17"])
def test_levenberg_marquardt_reproduces_certified_values(name):
    from opifex.optimization import Status, solve
    from opifex.optimization.second_order._levenberg_marquardt import levenberg_marquardt

    p = load_nist(name)
    sol = solve(
        levenberg_marquardt(p.residual),
        jnp.asarray(p.starts[1]),
        (jnp.asarray(p.x), jnp.asarray(p.y)),
        max_steps=1000,
    )
    assert int(sol.status) == Status.CONVERGED
    assert log_relative_error(sol.params, p.certified).min() >= 6.0


def test_benchmark_part_smoke(tmp_path, monkeypatch):
    from rich.console import Console

    from opifex.benchmarks._harness import Context
    from opifex.benchmarks.second_order import _nist

    monkeypatch.setattr(_nist, "_QUICK", ("Misra1a",))
    ctx = Context(suite="second-order", quick=True, out_dir=tmp_path, console=Console(width=200))
    records = _nist.run(ctx)
    by_name = {r.name: r for r in records}
    assert by_name["nist LM cases >= 6 digits"].value == 2
    assert by_name["nist LM false convergences"].value == 0
    assert (tmp_path / "nist_digits.png").exists() and (tmp_path / "nist_time.png").exists()
    rows = json.loads((tmp_path / "nist_cases.json").read_text())
    assert [r["case"] for r in rows] == ["Misra1a/s1", "Misra1a/s2"]
    assert rows[0]["file"].endswith("Misra1a.dat")
