"""Accuracy checks against reference solutions, and observed orders of convergence.

:class:`ScientificBenchmarkValidator` compares a prediction with reference data (relative L2
and max-abs errors, pass/fail at a tolerance) and measures how the error of a discretisation
falls with the resolution ``h``: fitting ``log e = p log h + c`` by least squares gives the
observed order ``p`` (Roache, "Verification and Validation in Computational Science and
Engineering", 1998, Ch. 5). Everything runs on the host in float64 numpy; bad reference data is
rejected with the offending indices named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BenchmarkValidationResult",
    "ConvergenceOrder",
    "RefinementStudyResult",
    "ScientificBenchmarkValidator",
]

_ERRORS = ("relative_l2", "max_abs")


@dataclass(frozen=True, eq=False)
class ConvergenceOrder:
    """Observed order of convergence ``e ≈ constant * h**order``.

    Attributes:
        order: Least-squares slope ``p`` of ``log e`` against ``log h``.
        constant: ``exp(c)``, the fitted error constant.
        pairwise_orders: ``log(e[i+1] / e[i]) / log(h[i+1] / h[i])`` for consecutive pairs.
    """

    order: float
    constant: float
    pairwise_orders: np.ndarray


@dataclass(frozen=True)
class BenchmarkValidationResult:
    """Outcome of :meth:`ScientificBenchmarkValidator.validate`.

    Attributes:
        relative_l2: ``||prediction - reference||_2 / ||reference||_2`` (inf if the
            prediction holds NaN or Inf).
        max_abs_error: ``max |prediction - reference|`` (inf if the prediction is non-finite).
        passed: ``relative_l2 <= tolerance``.
        tolerance: The tolerance applied.
        num_points: Number of compared values.
        nonfinite_predictions: Number of NaN/Inf entries in the prediction.
    """

    relative_l2: float
    max_abs_error: float
    passed: bool
    tolerance: float
    num_points: int
    nonfinite_predictions: int = 0


@dataclass(frozen=True, eq=False)
class RefinementStudyResult:
    """Errors of a solver over resolutions, with the observed order.

    Attributes:
        resolutions: The resolutions ``h``, as given.
        errors: Error at each resolution.
        convergence: The fitted :class:`ConvergenceOrder`.
    """

    resolutions: np.ndarray
    errors: np.ndarray
    convergence: ConvergenceOrder

    @property
    def order(self) -> float:
        """The observed order ``p`` (least-squares slope)."""
        return self.convergence.order


def _as_float_array(name: str, x: Any) -> np.ndarray:
    try:
        out = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be real numbers, got {type(x).__name__}: {err}") from err
    if out.size == 0:
        raise ValueError(f"{name} must hold at least one value, got shape {out.shape}.")
    return out


def _max_abs(p: np.ndarray, r: np.ndarray) -> float:
    return float(np.max(np.abs(p - r))) if np.all(np.isfinite(p)) else float("inf")


@dataclass(frozen=True, kw_only=True)
class ScientificBenchmarkValidator:
    """Compares predictions with reference solutions and measures convergence orders.

    Attributes:
        max_reported_indices: How many offending indices an error message names (>= 1).

    Example:
        >>> import numpy as np
        >>> v = ScientificBenchmarkValidator()
        >>> round(v.relative_l2(np.array([1.0, 2.0]), np.array([1.0, 1.0])), 4)
        0.7071
        >>> r = v.validate(np.array([1.0, 2.01]), np.array([1.0, 2.0]), tolerance=1e-2)
        >>> r.passed, round(r.max_abs_error, 6)
        (True, 0.01)
    """

    max_reported_indices: int = 10

    def __post_init__(self):
        value = self.max_reported_indices
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_reported_indices must be an int >= 1, got {value!r}.")

    def _checked_pair(self, prediction: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        p = _as_float_array("prediction", prediction)
        r = _as_float_array("reference", reference)
        if p.shape != r.shape:
            raise ValueError(
                f"prediction and reference must have the same shape, got {p.shape} and "
                f"{r.shape}; evaluate the prediction on the reference grid first."
            )
        bad = np.argwhere(~np.isfinite(r))
        if len(bad):
            shown = [tuple(int(i) for i in row) for row in bad[: self.max_reported_indices]]
            more = f" (first {len(shown)} shown)" if len(bad) > len(shown) else ""
            raise ValueError(
                f"reference holds {len(bad)} non-finite value(s) at indices {shown}{more}; "
                "fix or mask the reference data before comparing."
            )
        return p, r

    def relative_l2(self, prediction: Any, reference: Any) -> float:
        """Relative L2 error ``||prediction - reference||_2 / ||reference||_2``.

        Args:
            prediction: Predicted values (any shape).
            reference: Reference values of the same shape; must be finite and not all zero.

        Returns:
            The relative error as a float; ``inf`` if the prediction holds NaN or Inf (a failed
            prediction is a result, not bad input).

        Raises:
            ValueError: If the shapes differ, the reference holds NaN/Inf (indices named) or is
                identically zero.

        Example:
            >>> round(ScientificBenchmarkValidator().relative_l2([3.0, 4.0], [3.0, 0.0]), 4)
            1.3333
        """
        p, r = self._checked_pair(prediction, reference)
        norm = float(np.linalg.norm(r))
        if norm == 0.0:
            raise ValueError(
                "reference is identically zero, so the relative L2 error is undefined; "
                "compare max_abs_error instead."
            )
        if not np.all(np.isfinite(p)):
            return float("inf")
        return float(np.linalg.norm(p - r) / norm)

    def validate(
        self, prediction: Any, reference: Any, *, tolerance: float
    ) -> BenchmarkValidationResult:
        """Compare ``prediction`` with ``reference`` and pass if ``relative_l2 <= tolerance``.

        Args:
            prediction: Predicted values.
            reference: Finite reference values of the same shape.
            tolerance: Largest relative L2 error that passes (> 0).

        Returns:
            A :class:`BenchmarkValidationResult`.

        Raises:
            ValueError: As :meth:`relative_l2`, or if ``tolerance`` is not a float > 0.

        Example:
            >>> v = ScientificBenchmarkValidator()
            >>> v.validate([1.0, float("nan")], [1.0, 2.0], tolerance=0.1).passed
            False
        """
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not (tolerance > 0)
        ):
            raise ValueError(f"tolerance must be a float > 0, got {tolerance!r}.")
        rel = self.relative_l2(prediction, reference)
        p, r = self._checked_pair(prediction, reference)
        return BenchmarkValidationResult(
            relative_l2=rel,
            max_abs_error=_max_abs(p, r),
            passed=bool(rel <= tolerance),
            tolerance=float(tolerance),
            num_points=int(p.size),
            nonfinite_predictions=int(np.sum(~np.isfinite(p))),
        )

    def convergence_order(
        self, resolutions: Sequence[float], errors: Sequence[float]
    ) -> ConvergenceOrder:
        """Observed order ``p`` from the least-squares fit ``log e = p log h + c``.

        Args:
            resolutions: Mesh sizes or step sizes ``h`` (>= 2 distinct positive values).
            errors: Positive errors at those resolutions.

        Returns:
            A :class:`ConvergenceOrder` with the fitted order, constant and pairwise orders.

        Raises:
            ValueError: If the inputs are not 1-D of equal length >= 2, hold a non-finite or
                non-positive value, or repeat a resolution.

        Example:
            >>> v = ScientificBenchmarkValidator()
            >>> c = v.convergence_order([0.1, 0.05, 0.025], [1e-2, 2.5e-3, 6.25e-4])
            >>> round(c.order, 6), c.pairwise_orders.round(6).tolist()
            (2.0, [2.0, 2.0])
        """
        h = _as_float_array("resolutions", resolutions)
        e = _as_float_array("errors", errors)
        if h.ndim != 1 or e.shape != h.shape or h.size < 2:
            raise ValueError(
                "resolutions and errors must be 1-D of equal length >= 2, got shapes "
                f"{h.shape} and {e.shape}."
            )
        for name, x in (("resolutions", h), ("errors", e)):
            bad = np.flatnonzero(~(np.isfinite(x) & (x > 0)))
            if bad.size:
                raise ValueError(
                    f"{name} must be finite and > 0 (logarithms are taken), got "
                    f"{x[bad].tolist()} at indices {bad.tolist()}."
                )
        if np.unique(h).size != h.size:
            raise ValueError(f"resolutions must be distinct, got {h.tolist()}.")
        log_h, log_e = np.log(h), np.log(e)
        order, intercept = np.polyfit(log_h, log_e, 1)
        pairwise = np.diff(log_e) / np.diff(log_h)
        return ConvergenceOrder(
            order=float(order), constant=float(np.exp(intercept)), pairwise_orders=pairwise
        )

    def refinement_study(
        self,
        solve_fn: Callable[[float], tuple[Any, Any]],
        resolutions: Sequence[float],
        reference_fn: Callable[[Any], Any],
        *,
        error: str = "relative_l2",
    ) -> RefinementStudyResult:
        """Solve at each resolution, measure the error against the exact solution, fit the order.

        Args:
            solve_fn: ``solve_fn(h) -> (grid, values)``, the numerical solution at resolution
                ``h`` and the points it lives on.
            resolutions: Resolutions ``h`` to run (>= 2 distinct positive values).
            reference_fn: ``reference_fn(grid)`` -> exact values with the shape of ``values``.
            error: ``"relative_l2"`` or ``"max_abs"``.

        Returns:
            A :class:`RefinementStudyResult` with the errors and observed order.

        Raises:
            ValueError: If ``error`` is unknown, a solve does not return a ``(grid, values)``
                pair, or as :meth:`relative_l2` and :meth:`convergence_order`.

        Example:
            >>> import numpy as np
            >>> def trapezoid(h):  # integral of x**2 over [0, 1] (exact: 1/3)
            ...     x = np.linspace(0.0, 1.0, round(1 / h) + 1)
            ...     return None, np.trapezoid(x**2, x)
            >>> study = ScientificBenchmarkValidator().refinement_study(
            ...     trapezoid, [0.1, 0.05, 0.025], lambda grid: 1 / 3)
            >>> round(study.order, 2)
            2.0
        """
        if error not in _ERRORS:
            raise ValueError(f"error must be one of {_ERRORS}, got {error!r}.")
        errors = []
        for h in resolutions:
            out = solve_fn(h)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(
                    f"solve_fn(h) must return a (grid, values) pair, got {type(out).__name__} "
                    f"for h={h}."
                )
            grid, values = out
            reference = reference_fn(grid)
            if error == "relative_l2":
                errors.append(self.relative_l2(values, reference))
            else:
                p, r = self._checked_pair(values, reference)
                errors.append(_max_abs(p, r))
        h = np.asarray(resolutions, dtype=float)
        e = np.asarray(errors)
        return RefinementStudyResult(
            resolutions=h, errors=e, convergence=self.convergence_order(h, e)
        )
