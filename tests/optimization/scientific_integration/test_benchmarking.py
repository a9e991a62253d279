"""Tests of opifex.optimization.scientific_integration.benchmarking against closed forms."""

import numpy as np
import pytest

from opifex.optimization.scientific_integration.benchmarking import ScientificBenchmarkValidator

V = ScientificBenchmarkValidator()


def test_relative_l2_closed_form():
    reference = np.array([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    prediction = reference + np.array([[0.0, 1.0], [1.0, 0.0]])  # error norm sqrt(2)
    assert V.relative_l2(prediction, reference) == pytest.approx(np.sqrt(2.0) / 5.0, rel=1e-15)
    assert V.relative_l2(reference, reference) == 0.0
    assert V.relative_l2([np.nan, 1.0], [1.0, 1.0]) == np.inf


def test_validate_reports_errors_and_pass_fail():
    reference = np.sin(np.linspace(0, np.pi, 11))
    prediction = reference + 1e-3
    expected = 1e-3 * np.sqrt(11) / np.linalg.norm(reference)
    result = V.validate(prediction, reference, tolerance=1e-2)
    assert result.relative_l2 == pytest.approx(expected, rel=1e-12)
    assert result.max_abs_error == pytest.approx(1e-3, rel=1e-10)
    assert result.passed and result.num_points == 11 and result.nonfinite_predictions == 0
    assert not V.validate(prediction, reference, tolerance=expected / 2).passed
    bad = V.validate(np.where(np.arange(11) == 4, np.inf, prediction), reference, tolerance=1.0)
    assert not bad.passed and bad.nonfinite_predictions == 1 and bad.max_abs_error == np.inf


def test_nonfinite_reference_is_rejected_with_indices():
    reference = np.ones((3, 4))
    reference[1, 2] = np.nan
    reference[2, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"2 non-finite value\(s\) at indices \[\(1, 2\), \(2, 0\)\]"
    ):
        V.relative_l2(np.ones((3, 4)), reference)
    many = np.full(30, np.nan)
    with pytest.raises(ValueError, match=r"30 non-finite .*\(first 3 shown\)"):
        ScientificBenchmarkValidator(max_reported_indices=3).validate(
            np.ones(30), many, tolerance=0.1
        )


def test_structural_errors_raise():
    with pytest.raises(ValueError, match="same shape"):
        V.relative_l2(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="identically zero"):
        V.relative_l2(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="tolerance"):
        V.validate(np.ones(3), np.ones(3), tolerance=0.0)
    with pytest.raises(ValueError, match="distinct"):
        V.convergence_order([0.1, 0.1], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"finite and > 0 .* at indices \[1\]"):
        V.convergence_order([0.1, 0.05], [1.0, 0.0])
    with pytest.raises(ValueError, match="max_reported_indices"):
        ScientificBenchmarkValidator(max_reported_indices=0)


def trapezoid_sin(h):
    n = round(np.pi / h)
    x = np.linspace(0.0, np.pi, n + 1)
    return x, np.trapezoid(np.sin(x), x)


def test_trapezoid_rule_is_second_order():
    resolutions = [np.pi / n for n in (8, 16, 32, 64)]
    study = V.refinement_study(trapezoid_sin, resolutions, lambda grid: 2.0)
    assert study.order == pytest.approx(2.0, abs=0.05)
    # Leading error term of the trapezoid rule: (b - a) h^2 / 12 * mean |f''| = pi h^2 / 12 * 2/pi.
    assert study.convergence.constant == pytest.approx(1 / 12, rel=0.05)  # relative error: / 2
    np.testing.assert_allclose(study.convergence.pairwise_orders, 2.0, atol=0.05)
    assert study.errors.shape == (4,)


def test_forward_difference_is_first_order():
    x0 = np.array([1.0])

    def forward_difference(h):
        return x0, (np.sin(x0 + h) - np.sin(x0)) / h

    resolutions = [0.1, 0.05, 0.025, 0.0125]
    study = V.refinement_study(forward_difference, resolutions, np.cos, error="max_abs")
    assert study.order == pytest.approx(1.0, abs=0.05)
    # e ~ h |sin(1)| / 2
    assert study.convergence.constant == pytest.approx(np.sin(1.0) / 2, rel=0.1)
    with pytest.raises(ValueError, match="error must be one of"):
        V.refinement_study(forward_difference, resolutions, np.cos, error="l1")
    with pytest.raises(ValueError, match=r"\(grid, values\) pair"):
        V.refinement_study(lambda h: h, resolutions, np.cos)


def test_convergence_order_pairwise_closed_form():
    c = V.convergence_order([1.0, 0.5, 0.25], [1.0, 0.25, 0.125])
    np.testing.assert_allclose(c.pairwise_orders, [2.0, 1.0])
    # Least-squares slope through (0, 0), (-ln 2, -2 ln 2), (-2 ln 2, -3 ln 2) is 1.5.
    assert c.order == pytest.approx(1.5, rel=1e-12)
