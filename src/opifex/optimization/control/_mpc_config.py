"""Configuration of :class:`~opifex.optimization.control.mpc.DifferentiableMPC`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Weight = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray
Bound = float | Sequence[float] | np.ndarray | None


def _check(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {rule}, got {value!r}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def weight_matrix(name: str, value: Weight, dim: int | None = None) -> np.ndarray:
    """A scalar (``w I``), a vector (diagonal) or a matrix, as a symmetric PSD matrix."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        _check(arr >= 0, name, value, "a non-negative scalar, a vector or a PSD matrix")
        return np.eye(dim or 1) * float(arr) if dim else arr.reshape(1, 1)
    if arr.ndim == 1:
        arr = np.diag(arr)
    _check(arr.ndim == 2 and arr.shape[0] == arr.shape[1], name, value, "a square matrix")
    _check(bool(np.all(np.isfinite(arr))), name, value, "finite")
    _check(np.allclose(arr, arr.T), name, value, "symmetric")
    _check(np.linalg.eigvalsh(arr).min() >= -1e-12, name, value, "positive semi-definite")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(
            f"{name} must be {dim} x {dim} to match the state/input dimension, "
            f"got shape {arr.shape}."
        )
    return arr


@dataclass(frozen=True, kw_only=True)
class MPCConfig:
    """Settings of a :class:`~opifex.optimization.control.mpc.DifferentiableMPC`.

    The default cost is quadratic, ``sum_t (x_t - r_t)' Q (x_t - r_t) + u_t' R u_t`` over
    ``t < N`` plus ``(x_N - r_N)' Q_N (x_N - r_N)``.

    Attributes:
        horizon: Number of control intervals ``N`` (>= 1).
        state_weight: ``Q``: a scalar (``q I``), a vector (diagonal) or a PSD matrix.
        input_weight: ``R``: as ``state_weight``; must make the problem strictly convex in
            ``u`` for the quadratic cost (any positive value does).
        terminal_weight: ``Q_N``; ``None`` uses ``state_weight``.
        input_lower, input_upper: Input bounds (scalar or per input; ``None`` = unbounded).
        dt: Sample time, used when ``continuous_time`` is set.
        continuous_time: The model gives ``dx/dt``; it is discretised by fixed-step RK4 over
            ``dt`` with ``integration_steps`` sub-steps.
        integration_steps: RK4 sub-steps per sample (>= 1).
        max_iterations: Iteration budget of one solve.
        tolerance: Converged when the normalised DDP feed-forward step is below it.
        cost_tolerance: Converged when an iteration lowers the cost by less than this, relative.
        second_order: Add DDP's second-order dynamics terms once near a solution (Newton-like
            convergence where the costates are large, e.g. a saturated swing-up); ``False``
            runs plain iLQR, cheaper per iteration, which suits mildly nonlinear problems.
        real_time_iterations: If set, every solve stops after at most this many iterations
            (a fixed compute budget); the control returned is the best found, feasible for the
            input bounds, and the status says ``MAX_STEPS`` when the budget ran out.
        warm_start: Start each :meth:`solve` from the previous solution shifted by one step.
        constraint_tolerance: Largest violation of ``state_constraints`` accepted.
        penalty: Initial augmented-Lagrangian penalty for ``state_constraints``.
        penalty_growth: Factor on the penalty after each outer iteration (> 1).
        max_outer_iterations: Augmented-Lagrangian updates (outer iterations).
    """

    horizon: int = 20
    state_weight: Weight = 1.0
    input_weight: Weight = 1.0
    terminal_weight: Weight | None = None
    input_lower: Bound = None
    input_upper: Bound = None
    dt: float | None = None
    continuous_time: bool = False
    integration_steps: int = 1
    max_iterations: int = 100
    tolerance: float = 1e-8
    cost_tolerance: float = 1e-12
    second_order: bool = True
    real_time_iterations: int | None = None
    warm_start: bool = True
    constraint_tolerance: float = 1e-6
    penalty: float = 10.0
    penalty_growth: float = 10.0
    max_outer_iterations: int = 20

    def __post_init__(self) -> None:
        _check(_is_int(self.horizon) and self.horizon >= 1, "horizon", self.horizon, "an int >= 1")
        for name in ("state_weight", "input_weight", "terminal_weight"):
            if getattr(self, name) is not None:
                weight_matrix(name, getattr(self, name))
        lo, hi = self.bounds(None)
        bad = np.flatnonzero(np.broadcast_to(lo > hi, np.broadcast_shapes(lo.shape, hi.shape)))
        if bad.size:
            raise ValueError(
                f"input bounds are empty: input_lower > input_upper at input(s) {bad.tolist()} "
                f"(input_lower={self.input_lower!r}, input_upper={self.input_upper!r}); swap them "
                "or widen the box."
            )
        if self.continuous_time:
            _check(self.dt is not None and self.dt > 0, "dt", self.dt, "> 0 when continuous_time")
        if self.dt is not None:
            _check(math.isfinite(self.dt) and self.dt > 0, "dt", self.dt, "a float > 0")
        _check(
            _is_int(self.integration_steps) and self.integration_steps >= 1,
            "integration_steps",
            self.integration_steps,
            "an int >= 1",
        )
        _check(
            _is_int(self.max_iterations) and self.max_iterations >= 1,
            "max_iterations",
            self.max_iterations,
            "an int >= 1",
        )
        _check(isinstance(self.second_order, bool), "second_order", self.second_order, "a bool")
        if self.real_time_iterations is not None:
            _check(
                _is_int(self.real_time_iterations) and self.real_time_iterations >= 1,
                "real_time_iterations",
                self.real_time_iterations,
                "None or an int >= 1",
            )
        for name in ("tolerance", "cost_tolerance", "constraint_tolerance"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and value >= 0, name, value, "a float >= 0")
        _check(self.penalty > 0, "penalty", self.penalty, "> 0")
        _check(self.penalty_growth > 1, "penalty_growth", self.penalty_growth, "> 1")
        _check(
            _is_int(self.max_outer_iterations) and self.max_outer_iterations >= 1,
            "max_outer_iterations",
            self.max_outer_iterations,
            "an int >= 1",
        )

    def replace(self, **changes) -> MPCConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def bounds(self, input_dim: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Input bounds as float arrays (broadcast to ``input_dim`` when it is given)."""
        lo = np.asarray(-np.inf if self.input_lower is None else self.input_lower, dtype=float)
        hi = np.asarray(np.inf if self.input_upper is None else self.input_upper, dtype=float)
        for name, arr in (("input_lower", lo), ("input_upper", hi)):
            _check(arr.ndim <= 1, name, arr, "a scalar or a 1-D sequence")
            _check(not np.any(np.isnan(arr)), name, arr, "free of NaN")
        if input_dim is not None:
            for name, arr in (("input_lower", lo), ("input_upper", hi)):
                if arr.ndim == 1 and arr.shape[0] != input_dim:
                    raise ValueError(
                        f"{name} has {arr.shape[0]} entries but the model has {input_dim} "
                        "inputs; give one bound per input or a scalar."
                    )
            lo, hi = np.broadcast_to(lo, (input_dim,)), np.broadcast_to(hi, (input_dim,))
        return lo, hi

    def input_dim_hint(self) -> int | None:
        """The input dimension implied by the bounds or ``R``, if any."""
        for value in (self.input_lower, self.input_upper):
            if value is not None and np.ndim(value) == 1:
                return len(value)
        if np.ndim(self.input_weight) >= 1:
            return np.shape(self.input_weight)[0]
        return None
