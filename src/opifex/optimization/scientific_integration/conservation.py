"""Conservation laws for scientific ML: check them, penalise them, or enforce them exactly.

A :class:`ConservationLaw` takes one of three forms:

- a **quantity** ``q(state)`` conserved along a trajectory (energy, mass, momentum): its
  violation is the drift ``q(x_t) - q(x_0)``;
- a **constraint** ``g(outputs) = 0`` (a residual vector that must vanish);
- a **linear** constraint ``A y = b`` (``A`` of full row rank), which besides checking and
  penalising can be enforced exactly by the orthogonal projection
  ``y - A' (A A')^{-1} (A y - b)``, usable as a network's last layer.

``violation`` and ``penalty`` are pure ``jnp`` functions (``jit``/``vmap``/``grad`` safe) for
soft enforcement; ``check`` runs on the host and returns a :class:`ConservationCheckResult`.
Constrained minimisation to tolerance is :func:`augmented_lagrangian_solver`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.scientific_integration._conservation_checks import (
    KINDS,
    ConservationCheckResult,
    LinearFactors,
    check_name,
    check_tolerance,
    check_width,
    factor_linear,
    float_dtype,
    growth_rate,
    time_length,
)
from opifex.optimization.scientific_integration._conservation_lagrangian import (
    AugmentedLagrangianState,
    augmented_lagrangian_solver,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class ConservationLaw:
    """A conservation law in exactly one form; build it with :meth:`quantity`,
    :meth:`constraint` or :meth:`linear`.

    Attributes:
        name: What is conserved (used in reports).
        kind: ``"quantity"``, ``"constraint"`` or ``"linear"``.
        fn: ``q(state) -> scalar`` (quantity) or ``g(outputs) -> vector`` (constraint).
        A: Linear form only: float64 matrix (m, n) of full row rank.
        b: Linear form only: float64 vector (m,).
        tolerance: Largest acceptable ``max_violation`` in :meth:`check`.

    Raises:
        ValueError: If no form or both forms are given, ``kind`` does not match the form,
            ``tolerance <= 0``, or ``A``/``b`` are invalid (non-finite entries, named by
            index; wrong shapes; ``A`` not of full row rank, naming its rank).

    Example:
        >>> import jax.numpy as jnp
        >>> law = ConservationLaw.constraint("zero-mean", lambda u: jnp.mean(u, keepdims=True))
        >>> print(law.check(jnp.array([0.5, -0.5])))
        zero-mean constraint violation 0.0e+00 over 1 value: within tolerance 1.0e-06
    """

    name: str
    kind: str
    fn: Callable[[Any], jax.Array] | None = None
    A: Any = None
    b: Any = None
    tolerance: float = 1e-6
    _factors: LinearFactors | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        check_name(self.name)
        linear_given = self.A is not None or self.b is not None
        if (self.fn is not None) == linear_given:
            got = "both fn and A/b" if linear_given else "neither fn nor A/b"
            raise ValueError(
                f"law {self.name!r} needs exactly one form, got {got}: give fn (kind "
                "'quantity' or 'constraint') or A and b (kind 'linear'); prefer "
                "ConservationLaw.quantity / .constraint / .linear."
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
        if linear_given != (self.kind == "linear"):
            form = "A and b" if linear_given else "fn"
            raise ValueError(f"law {self.name!r} of kind {self.kind!r} cannot be given {form}.")
        object.__setattr__(self, "tolerance", check_tolerance(self.tolerance))
        if linear_given:
            if self.A is None or self.b is None:
                raise ValueError(f"linear law {self.name!r} needs both A and b, got only one.")
            A, b, factors = factor_linear(self.A, self.b)
            object.__setattr__(self, "A", A)
            object.__setattr__(self, "b", b)
            object.__setattr__(self, "_factors", factors)
        elif not callable(self.fn):
            raise ValueError(f"fn of law {self.name!r} must be callable, got {self.fn!r}.")

    @classmethod
    def quantity(
        cls, name: str, fn: Callable[[Any], jax.Array], *, tolerance: float = 1e-6
    ) -> ConservationLaw:
        """A scalar ``fn(state)`` conserved along a trajectory.

        Example:
            >>> import jax.numpy as jnp
            >>> energy = ConservationLaw.quantity("energy", lambda s: 0.5 * jnp.sum(s**2))
            >>> traj = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
            >>> energy.check(traj).passed
            True
        """
        return cls(name=name, kind="quantity", fn=fn, tolerance=tolerance)

    @classmethod
    def constraint(
        cls, name: str, fn: Callable[[Any], jax.Array], *, tolerance: float = 1e-6
    ) -> ConservationLaw:
        """A residual ``fn(outputs) -> vector`` that must vanish.

        Example:
            >>> import jax.numpy as jnp
            >>> mass = ConservationLaw.constraint("mass", lambda u: u.sum(axis=-1) - 1.0)
            >>> round(mass.check(jnp.array([[0.5, 0.5], [0.25, 0.5]])).max_violation, 6)
            0.25
        """
        return cls(name=name, kind="constraint", fn=fn, tolerance=tolerance)

    @classmethod
    def linear(cls, name: str, A, b, *, tolerance: float = 1e-10) -> ConservationLaw:
        """The linear constraint ``A y = b``; ``A`` (m, n) must have full row rank.

        ``A`` is validated and factored (thin SVD) here, once. The default tolerance presumes
        float64 outputs; float32 ones satisfy ``A y = b`` only to about ``1e-7 ||A|| ||y||``.

        Example:
            >>> import jax.numpy as jnp
            >>> law = ConservationLaw.linear("sum", [[1.0, 1.0, 1.0]], [3.0])
            >>> law.project(jnp.array([1.0, 2.0, 3.0])).round(4).tolist()
            [0.0, 1.0, 2.0]
        """
        return cls(name=name, kind="linear", A=A, b=b, tolerance=tolerance)

    def _quantity_values(self, trajectory) -> jax.Array:
        time_length(trajectory)
        first = jax.tree.map(lambda leaf: leaf[0], trajectory)
        out = jax.eval_shape(self.fn, first)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"fn of quantity {self.name!r} must map one state to a scalar, got shape "
                f"{getattr(out, 'shape', out)}; pass states with a leading time axis."
            )
        return jax.vmap(self.fn)(trajectory)

    def violation(self, outputs) -> jax.Array:
        """The residual that vanishes when the law holds (differentiable).

        Args:
            outputs: Quantity: a trajectory pytree whose leaves share a leading time axis;
                constraint: whatever ``fn`` takes; linear: ``y`` of shape (n,) or (B, n).

        Returns:
            Quantity: ``q(x_t) - q(x_0)``, shape (T,); constraint: ``g`` flattened; linear:
            ``A y - b``, shape (m,) or (B, m).

        Example:
            >>> import jax.numpy as jnp
            >>> law = ConservationLaw.linear("sum", [[1.0, 1.0]], [1.0])
            >>> law.violation(jnp.array([2.0, 1.0])).tolist()
            [2.0]
        """
        if self.kind == "quantity":
            q = self._quantity_values(outputs)
            return q - q[0]
        if self.kind == "constraint":
            return jnp.ravel(jnp.asarray(self.fn(outputs)))
        check_width("y", outputs, self.A.shape[1])
        y = jnp.asarray(outputs)
        dtype = float_dtype(y)
        return y @ jnp.asarray(self.A, dtype).T - jnp.asarray(self.b, dtype)

    def penalty(self, outputs, weight: float = 1.0) -> jax.Array:
        """Soft enforcement: ``weight * mean(violation(outputs) ** 2)``.

        Example:
            >>> import jax.numpy as jnp
            >>> law = ConservationLaw.constraint("zero", lambda u: u)
            >>> float(law.penalty(jnp.array([1.0, 3.0]), weight=0.5))
            2.5
        """
        v = self.violation(outputs)
        return weight * jnp.mean(v**2)

    def check(self, outputs) -> ConservationCheckResult:
        """Measure the violation on the host (not under ``jit``).

        Args:
            outputs: As for :meth:`violation`.

        Returns:
            A :class:`ConservationCheckResult`.

        Example:
            >>> import jax.numpy as jnp
            >>> law = ConservationLaw.linear("sum", [[1.0, 1.0]], [1.0], tolerance=1e-3)
            >>> law.check(jnp.array([[0.5, 0.5], [1.0, 0.5]])).passed
            False
        """
        tiny = np.finfo(np.float64).tiny
        growth = None
        if self.kind == "quantity":
            q = np.asarray(self._quantity_values(outputs), np.float64)
            series = q - q[0]
            worst = float(np.max(np.abs(series)))
            relative = worst / max(abs(float(q[0])), tiny)
            growth = growth_rate(series)
        else:
            series = np.asarray(self.violation(outputs), np.float64)
            worst = float(np.max(np.abs(series))) if series.size else 0.0
            relative = worst
            if self.kind == "linear":
                y = np.asarray(outputs, np.float64)
                scale = np.abs(self.A).sum(axis=1).max() * np.max(np.abs(y), initial=0.0)
                relative = float(worst / max(scale + float(np.max(np.abs(self.b))), tiny))
        if math.isnan(worst):
            relative = math.nan
        return ConservationCheckResult(
            law=self.name,
            kind=self.kind,
            max_violation=worst,
            relative_violation=relative,
            series=series,
            tolerance=self.tolerance,
            growth_rate=growth,
        )

    def project(self, y) -> jax.Array:
        """Exact orthogonal projection of ``y`` onto ``{y : A y = b}`` (linear form only).

        Computes ``y - A' (A A')^{-1} (A y - b)`` as ``y - V (V' y - c)`` from the thin SVD
        ``A = U S V'`` prepared in :meth:`linear` (``c = S^{-1} U' b``), so it is as
        accurate as ``A``'s own conditioning allows. Works on (n,) and (B, n), under
        ``jit``, ``vmap`` and ``grad`` (the Jacobian is the projector ``I - V V'``).

        Raises:
            ValueError: If the law is not linear or ``y``'s last axis is not ``n``.

        Example:
            >>> import jax.numpy as jnp
            >>> law = ConservationLaw.linear("mean", [[0.5, 0.5]], [0.0])
            >>> law.project(jnp.array([[1.0, 3.0], [2.0, 0.0]])).round(4).tolist()
            [[-1.0, 1.0], [1.0, -1.0]]
        """
        if self.kind != "linear":
            raise ValueError(
                f"project needs a linear law (A y = b), but {self.name!r} is a {self.kind}; "
                "use penalty() for soft enforcement instead."
            )
        check_width("y", y, self.A.shape[1])
        y = jnp.asarray(y)
        dtype = float_dtype(y)
        basis = jnp.asarray(self._factors.basis, dtype)
        coords = jnp.asarray(self._factors.coords, dtype)
        return y.astype(dtype) - (y @ basis - coords) @ basis.T

    def projection_layer(self) -> Callable[[jax.Array], jax.Array]:
        """``y -> project(y)`` as a function, for hard enforcement as a network's last layer.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> layer = ConservationLaw.linear("sum", [[1.0, 1.0]], [2.0]).projection_layer()
            >>> jax.jit(layer)(jnp.array([3.0, 0.0])).round(4).tolist()
            [2.5, -0.5]
        """
        if self.kind != "linear":
            raise ValueError(
                f"projection_layer needs a linear law (A y = b), but {self.name!r} is a "
                f"{self.kind}."
            )

        def projection(y: jax.Array) -> jax.Array:
            return self.project(y)

        return projection


def penalty_loss(
    fn: Callable[[Any, Any], jax.Array],
    laws: ConservationLaw | Sequence[ConservationLaw],
    weights: float | Sequence[float] | None = None,
    *,
    outputs_fn: Callable[[Any, Any], Any] | None = None,
) -> Callable[[Any, Any], jax.Array]:
    """``fn`` plus soft conservation penalties: ``fn(p, a) + sum_i w_i law_i.penalty(out)``.

    Args:
        fn: Objective ``(params, args) -> scalar``.
        laws: One :class:`ConservationLaw` or a sequence of them.
        weights: One weight for all laws, one per law, or ``None`` (all 1.0); each >= 0.
        outputs_fn: ``(params, args) -> outputs`` the laws are evaluated on (e.g. a network's
            predictions); ``None`` evaluates them on ``params`` itself.

    Returns:
        The penalised objective ``(params, args) -> scalar``, pure and differentiable.

    Raises:
        TypeError: If a law is not a :class:`ConservationLaw`.
        ValueError: If the weights are negative, non-finite or of the wrong number.

    Example:
        >>> import jax.numpy as jnp
        >>> law = ConservationLaw.linear("sum", [[1.0, 1.0]], [1.0])
        >>> loss = penalty_loss(lambda p, a: jnp.sum(p**2), law, 10.0)
        >>> float(loss(jnp.array([1.0, 1.0]), None))
        12.0
    """
    laws = (laws,) if isinstance(laws, ConservationLaw) else tuple(laws)
    if not laws:
        raise ValueError("laws must hold at least one ConservationLaw, got none.")
    for law in laws:
        if not isinstance(law, ConservationLaw):
            raise TypeError(f"laws must be ConservationLaw objects, got {type(law).__name__}.")
    if weights is None:
        weights = (1.0,) * len(laws)
    elif np.ndim(weights) == 0:
        weights = (weights,) * len(laws)
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(laws):
        raise ValueError(f"weights must give one weight per law ({len(laws)}), got {weights}.")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {weights}.")

    def loss(params, args):
        outputs = params if outputs_fn is None else outputs_fn(params, args)
        total = fn(params, args)
        for law, weight in zip(laws, weights, strict=True):
            total = total + law.penalty(outputs, weight)
        return total

    return loss


__all__ = [
    "AugmentedLagrangianState",
    "ConservationCheckResult",
    "ConservationLaw",
    "augmented_lagrangian_solver",
    "penalty_loss",
]
