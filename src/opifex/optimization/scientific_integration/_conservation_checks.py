"""The check result, host-side validation and the linear-constraint factorisation behind
:mod:`opifex.optimization.scientific_integration.conservation`.

Everything here runs on the host, in numpy float64, when a law is built or checked; the
factors it returns are what the jit-safe methods of ``ConservationLaw`` close over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("quantity", "constraint", "linear")
_MAX_LISTED = 5


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass(frozen=True, kw_only=True, eq=False)
class ConservationCheckResult:
    """How well one :class:`ConservationLaw` holds, as host-side numbers.

    Attributes:
        law: Name of the law.
        kind: ``"quantity"``, ``"constraint"`` or ``"linear"``.
        max_violation: Quantity: ``max_t |q(t) - q(0)|``; constraint: ``max |g|``; linear:
            ``max |A y - b|`` (over the batch too).
        relative_violation: Quantity: ``max_violation / max(|q(0)|, tiny)``; constraint: equal
            to ``max_violation`` (``g = 0`` has no scale of its own); linear: the normwise
            backward error ``max_violation / (||A||_inf max|y| + ||b||_inf)``, which stays
            meaningful when ``b = 0``.
        series: Quantity: the signed drift ``q(t) - q(0)`` per time step, shape (T,);
            constraint: ``g`` flattened; linear: ``A y - b``, shape (m,) or (B, m).
        tolerance: The law's tolerance on ``max_violation``.
        growth_rate: Quantity only (``None`` otherwise): least-squares slope of ``|drift|``
            against the step index, ~0 for a bounded oscillating drift (symplectic
            integrators) and positive for a secular one.
        passed: ``max_violation <= tolerance`` (``False`` when it is NaN); computed.

    Example:
        >>> import numpy as np
        >>> from opifex.optimization.scientific_integration.conservation import (
        ...     ConservationCheckResult)
        >>> r = ConservationCheckResult(law="energy", kind="quantity", max_violation=3.2e-4,
        ...     relative_violation=1.6e-4, series=np.zeros(1001), tolerance=1e-3,
        ...     growth_rate=0.0)
        >>> print(r)
        energy drift 3.2e-04 (relative 1.6e-04) over 1000 steps: within tolerance 1.0e-03
    """

    law: str
    kind: str
    max_violation: float
    relative_violation: float
    series: np.ndarray
    tolerance: float
    growth_rate: float | None = None
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "passed", bool(self.max_violation <= self.tolerance))

    @property
    def num_steps(self) -> int:
        """Time steps covered (quantity) or samples / values checked (otherwise)."""
        if self.kind == "quantity":
            return max(self.series.shape[0] - 1, 0)
        return int(self.series.shape[0]) if self.series.ndim else 1

    def summary(self) -> str:
        """One plain-language line: the violation, its scale, and the verdict."""
        verdict = "within" if self.passed else "exceeds"
        if self.kind == "quantity":
            what = f"drift {self.max_violation:.1e}"
            span = f"over {_count(self.num_steps, 'step')}"
            if self.growth_rate is not None and self.growth_rate > 0 and not self.passed:
                span += f", growing {self.growth_rate:.1e} per step"
        elif self.kind == "linear":
            what = f"residual |Ay - b| {self.max_violation:.1e}"
            unit = "sample" if self.series.ndim == 2 else "constraint"
            span = f"over {_count(self.num_steps, unit)}"
        else:
            what = f"constraint violation {self.max_violation:.1e}"
            span = f"over {_count(self.num_steps, 'value')}"
        rel = "" if self.kind == "constraint" else f" (relative {self.relative_violation:.1e})"
        return f"{self.law} {what}{rel} {span}: {verdict} tolerance {self.tolerance:.1e}"

    def __str__(self) -> str:
        return self.summary()


class LinearFactors(NamedTuple):
    """Thin SVD ``A = U diag(s) V'`` of a full-row-rank ``A`` (m, n), prepared once.

    The projection onto ``{y : A y = b}`` is ``y - V (V' y - c)`` with ``c = diag(1/s) U' b``:
    algebraically ``y - A' (A A')^{-1} (A y - b)``, but it never forms ``A A'``, whose
    condition number is the square of ``A``'s.
    """

    basis: np.ndarray  # float64 [n, m], V: orthonormal basis of the row space of A
    coords: np.ndarray  # float64 [m], c = diag(1/s) U' b: V' y of every feasible y
    singular_values: np.ndarray  # float64 [m], s, descending


def check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string naming the law, got {name!r}.")
    return name


def check_tolerance(tolerance) -> float:
    ok = isinstance(tolerance, (int, float, np.floating)) and not isinstance(tolerance, bool)
    if not ok or not math.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(
            f"tolerance must be a finite float > 0 (the largest acceptable violation), "
            f"got {tolerance!r}."
        )
    return float(tolerance)


def _nonfinite_message(name: str, array: np.ndarray) -> str:
    bad = np.argwhere(~np.isfinite(array))
    listed = [tuple(int(i) for i in idx) if idx.size > 1 else int(idx[0]) for idx in bad]
    more = f" and {len(listed) - _MAX_LISTED} more" if len(listed) > _MAX_LISTED else ""
    return (
        f"{name} must be finite, got NaN/Inf at index {listed[:_MAX_LISTED]}{more}; "
        f"replace those entries with finite numbers."
    )


def factor_linear(A, b) -> tuple[np.ndarray, np.ndarray, LinearFactors]:
    """Validate ``A`` (m, n) and ``b`` (m,) and factor ``A``; return float64 copies and factors.

    Raises:
        ValueError: If ``A`` is not a finite 2-D matrix of full row rank, or ``b`` is not a
            finite vector of length ``m``.
    """
    try:
        A = np.array(A, dtype=np.float64)
        b = np.array(b, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"A and b must be real numeric arrays ({err}).") from None
    if A.ndim != 2 or A.size == 0:
        raise ValueError(
            f"A must be a non-empty 2-D matrix (m constraints, n unknowns), got shape {A.shape}."
        )
    m, n = A.shape
    if not np.all(np.isfinite(A)):
        raise ValueError(_nonfinite_message("A", A))
    if b.shape != (m,):
        raise ValueError(
            f"b must have shape (m,) = ({m},) to match A of shape {A.shape}, got shape "
            f"{b.shape}; pass one right-hand side per row of A."
        )
    if not np.all(np.isfinite(b)):
        raise ValueError(_nonfinite_message("b", b))
    u, s, vt = np.linalg.svd(A, full_matrices=False)
    # numpy's matrix_rank threshold: singular values below it are rounding noise.
    rank = int(np.sum(s > s[0] * max(m, n) * np.finfo(np.float64).eps)) if s[0] > 0 else 0
    if rank < m:
        hint = (
            f"there are more constraints (m={m}) than unknowns (n={n})"
            if m > n
            else "some rows are linear combinations of others"
        )
        raise ValueError(
            f"A must have full row rank m={m}, got rank {rank} (smallest singular value "
            f"{s[-1]:.3g}, largest {s[0]:.3g}): {hint}. Remove the redundant rows of A "
            "(and b) so the constraints are independent."
        )
    coords = (u.T @ b) / s
    return A, b, LinearFactors(basis=vt.T.copy(), coords=coords, singular_values=s)


def check_width(name: str, y, n: int) -> None:
    """Raise unless ``y`` has shape (n,) or (..., n) (static shapes, so safe under jit)."""
    shape = jnp.shape(y)
    if len(shape) == 0 or shape[-1] != n:
        raise ValueError(
            f"{name} must have shape (n,) or (batch, n) with n={n} (the columns of A), got "
            f"shape {tuple(shape)}."
        )


def float_dtype(x):
    """``x``'s dtype if floating, else the default float dtype."""
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def time_length(trajectory) -> int:
    """Length of the shared leading (time) axis of a trajectory pytree, or raise."""
    leaves = jax.tree.leaves(trajectory)
    if not leaves:
        raise ValueError("trajectory must be a pytree with at least one array leaf, got none.")
    shapes = [jnp.shape(leaf) for leaf in leaves]
    lengths = {s[0] if s else None for s in shapes}
    if None in lengths or len(lengths) != 1:
        raise ValueError(
            "every leaf of trajectory must have the same leading time axis (one state per "
            f"time step), got leaf shapes {shapes}."
        )
    (length,) = lengths
    if length < 1:
        raise ValueError("trajectory must hold at least one state, got 0 time steps.")
    return int(length)


def growth_rate(drift: np.ndarray) -> float:
    """Least-squares slope of ``|drift|`` against the step index (0 for one point)."""
    if drift.size < 2 or not np.all(np.isfinite(drift)):
        return 0.0 if drift.size < 2 else math.nan
    t = np.arange(drift.size, dtype=np.float64)
    t -= t.mean()
    a = np.abs(drift)
    return float(t @ (a - a.mean()) / (t @ t))
