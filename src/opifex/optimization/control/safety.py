"""Control-barrier-function safety filters for control-affine systems.

For ``dx/dt = f(x, args) + g(x, args) u`` and barriers ``h_i(x, args) >= 0`` marking the safe
set, the filter returns the control closest to a nominal one (in the ``W``-norm) that keeps
every barrier condition, the CBF-QP of Ames et al. (2017)::

    u*(x) = argmin_u 1/2 (u - u_nom)' W (u - u_nom)
            s.t.  L_f h_i(x) + L_g h_i(x) u + alpha_i(h_i(x)) >= 0,   lower <= u <= upper.

Lie derivatives come from ``jax.grad``; relative-degree-2 barriers use the high-order
condition of Xiao & Belta (2019). One barrier without input bounds is solved in closed form,
anything else by the small dense QP of :func:`cbf_qp`. Everything is a pure function of
``(x, u_nom, args)``: it jits, vmaps over states and differentiates with respect to the state,
the nominal control and ``args``. For discrete-time use inside MPC,
:func:`discrete_cbf_constraint` gives ``h(x_{k+1}) - (1 - gamma) h(x_k) >= 0``
(Zeng et al. 2021).

References:
    Ames, Xu, Grizzle & Tabuada, "Control barrier function based quadratic programs for safety
    critical systems", IEEE TAC 62(8), 2017 (and Ames, Grizzle & Tabuada, CDC 2014).
    Xiao & Belta, "Control barrier functions for systems with high relative degree",
    CDC 2019.
    Zeng, Zhang & Sreenath, "Safety-critical model predictive control with discrete-time
    control barrier function", ACC 2021.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from opifex.optimization.control._cbf_lie import barrier_rows
from opifex.optimization.control._cbf_qp import QPInfo, cbf_qp

__all__ = [
    "ControlBarrierFunction",
    "FilterInfo",
    "QPInfo",
    "SafetyFilter",
    "SafetyFilterConfig",
    "cbf_filter",
    "cbf_qp",
    "discrete_cbf_constraint",
]


def _positive_number(name: str, value) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not value > 0:
        raise ValueError(f"{name} must be a number > 0 (or a class-K callable), got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class ControlBarrierFunction:
    """A barrier ``h(x, args)``, safe where ``h >= 0``, with its class-K gains.

    Attributes:
        h: ``(x, args) -> scalar``.
        alpha: Class-K function of the condition: a number ``c > 0`` means ``c * h``, or a
            callable. For relative degree 2 it is ``alpha_1`` of ``psi_1 = L_f h + alpha_1(h)``.
        relative_degree: 1 (``L_g h != 0``) or 2 (``L_g h == 0``, ``L_g L_f h != 0``), for the
            high-order barrier of Xiao & Belta (2019). The initial state must then satisfy
            ``psi_1 >= 0`` as well as ``h >= 0``.
        alpha2: ``alpha_2`` of the relative-degree-2 condition; ``None`` means ``alpha``.

    Raises:
        ValueError: ``alpha`` or ``alpha2`` not positive, ``relative_degree`` not 1 or 2.

    Example:
        >>> cbf = ControlBarrierFunction(h=lambda x, args: 1.0 - x[0], alpha=2.0)
        >>> cbf.relative_degree
        1
    """

    h: Callable
    alpha: float | Callable = 1.0
    relative_degree: int = 1
    alpha2: float | Callable | None = None

    def __post_init__(self) -> None:
        if not callable(self.h):
            raise TypeError(f"h must be a callable (x, args) -> scalar, got {self.h!r}.")
        if not callable(self.alpha):
            _positive_number("alpha", self.alpha)
        if self.alpha2 is not None and not callable(self.alpha2):
            _positive_number("alpha2", self.alpha2)
        if self.relative_degree not in (1, 2) or isinstance(self.relative_degree, bool):
            raise ValueError(
                f"relative_degree must be 1 or 2, got {self.relative_degree!r}; higher "
                "relative degrees are not implemented."
            )


@dataclass(frozen=True, kw_only=True)
class SafetyFilterConfig:
    """Settings of the barrier QP; fields map one-to-one onto :func:`cbf_filter`'s keywords.

    Attributes:
        max_iter: Most rounds on the QP's dual, each a sweep of exact coordinate steps and a
            Newton step (>= 0; one barrier with input bounds needs one).
        slack_penalty: Penalty ``rho`` on the violation of rows that cannot all hold
            (dimensionless: rows are scaled to unit ``W^-1``-norm); larger is closer to the
            least-violating control.
        feasibility_tol: A row violated by more than this (a distance in ``W^(1/2) u``)
            marks the result infeasible.
    """

    max_iter: int = 10
    slack_penalty: float = 1e6
    feasibility_tol: float = 1e-6

    def __post_init__(self) -> None:
        ok = isinstance(self.max_iter, int) and not isinstance(self.max_iter, bool)
        if not ok or self.max_iter < 0:
            raise ValueError(f"max_iter must be an int >= 0, got {self.max_iter!r}.")
        _positive_number("slack_penalty", self.slack_penalty)
        _positive_number("feasibility_tol", self.feasibility_tol)

    def replace(self, **changes) -> SafetyFilterConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_kwargs(self) -> dict:
        """The fields as keyword arguments of :func:`cbf_filter`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class FilterInfo(NamedTuple):
    """Diagnostics of one filtered control (``m`` barriers)."""

    h: jax.Array  # (m,) float: barrier values h_i(x)
    residual: jax.Array  # (m,) float: barrier conditions at u; >= 0 means satisfied
    multipliers: jax.Array  # (m,) float: QP multipliers; > 0 where a barrier changed u
    feasible: jax.Array  # () bool: every condition holds (else u is the least-violating)


def cbf_filter(
    x: ArrayLike,
    u_nom: ArrayLike,
    args: Any = None,
    *,
    dynamics: tuple[Callable, Callable],
    barriers: Sequence[ControlBarrierFunction],
    input_bounds: tuple[ArrayLike | None, ArrayLike | None] | None = None,
    control_weight: ArrayLike | None = None,
    max_iter: int = 10,
    slack_penalty: float = 1e6,
    feasibility_tol: float = 1e-6,
) -> tuple[jax.Array, FilterInfo]:
    """Filter ``u_nom`` at state ``x`` through the CBF-QP (module docstring).

    Args:
        x: State, shape ``(n_x,)``.
        u_nom: Nominal control, shape ``(n_u,)``.
        args: Pytree passed to ``f``, ``g`` and every ``h`` (parameters, obstacles, ...).
        dynamics: ``(f, g)`` with ``f(x, args) -> (n_x,)`` and ``g(x, args) -> (n_x, n_u)``.
        barriers: Non-empty sequence of :class:`ControlBarrierFunction`.
        input_bounds: ``(lower, upper)``, each ``(n_u,)``, a scalar or ``None``.
        control_weight: Positive diagonal of ``W``: a scalar or ``(n_u,)``; ``None`` = ones.
        max_iter: See :class:`SafetyFilterConfig`.
        slack_penalty: See :class:`SafetyFilterConfig`.
        feasibility_tol: See :class:`SafetyFilterConfig`.

    Returns:
        ``(u, FilterInfo)``; ``u`` has the shape of ``u_nom`` and is always finite.

    Raises:
        ValueError: Wrong shapes of ``x``, ``u_nom``, ``f``, ``g``, ``h``, bounds or weight;
            ``lower > upper``; non-positive weight; no barriers. Raised while tracing, before
            anything is compiled.
    """
    f, g, lower, upper, weight = _check(
        x, u_nom, args, dynamics, barriers, input_bounds, control_weight
    )
    x, u_nom = jnp.asarray(x), jnp.asarray(u_nom)
    dtype = jnp.result_type(x, u_nom, float)
    x, u_nom = x.astype(dtype), u_nom.astype(dtype)
    A, b, h = barrier_rows(f, g, barriers, x, args)
    # Constants in f, g or h must not promote a float32 filter to float64.
    A, b, h = A.astype(dtype), b.astype(dtype), h.astype(dtype)
    u, qp = cbf_qp(
        u_nom,
        A,
        b,
        lower,
        upper,
        weight,
        max_iter=max_iter,
        slack_penalty=slack_penalty,
        feasibility_tol=feasibility_tol,
    )
    return u, FilterInfo(
        h=h, residual=qp.residual, multipliers=qp.multipliers, feasible=qp.feasible
    )


class SafetyFilter:
    """A CBF-QP safety filter: the front door of :func:`cbf_filter`.

    Args:
        dynamics: ``(f, g)`` of ``dx/dt = f(x, args) + g(x, args) u``.
        barriers: A :class:`ControlBarrierFunction` or a sequence of them.
        input_bounds: ``(lower, upper)`` input bounds or ``None``.
        control_weight: Positive diagonal of the control-cost weight ``W`` or ``None``.
        config: :class:`SafetyFilterConfig`; ``None`` means the defaults.

    Raises:
        ValueError: No barriers, ``lower > upper`` or non-positive weight (checked here);
            shape errors are reported by the first :meth:`filter` call, before compilation.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> f = lambda x, args: jnp.zeros(1)
        >>> g = lambda x, args: jnp.ones((1, 1))
        >>> wall = ControlBarrierFunction(h=lambda x, args: 1.0 - x[0], alpha=1.0)
        >>> safe = SafetyFilter(dynamics=(f, g), barriers=[wall])
        >>> u = jax.jit(safe.filter)(jnp.array([0.5]), jnp.array([2.0]))  # u <= 1 - x
        >>> print(round(float(u[0]), 6))
        0.5
    """

    def __init__(
        self,
        *,
        dynamics: tuple[Callable, Callable],
        barriers: ControlBarrierFunction | Sequence[ControlBarrierFunction],
        input_bounds: tuple[ArrayLike | None, ArrayLike | None] | None = None,
        control_weight: ArrayLike | None = None,
        config: SafetyFilterConfig | None = None,
    ) -> None:
        if isinstance(barriers, ControlBarrierFunction):
            barriers = [barriers]
        self.dynamics = _check_dynamics(dynamics)
        self.barriers = _check_barriers(barriers)
        _check_bound_values(input_bounds, control_weight)
        self.input_bounds = input_bounds
        self.control_weight = control_weight
        self.config = SafetyFilterConfig() if config is None else config
        if not isinstance(self.config, SafetyFilterConfig):
            raise TypeError(f"config must be a SafetyFilterConfig, got {type(config).__name__}.")

    def filter_with_info(
        self, x: ArrayLike, u_nom: ArrayLike, args: Any = None
    ) -> tuple[jax.Array, FilterInfo]:
        """The filtered control and its :class:`FilterInfo`; jittable and vmappable."""
        return cbf_filter(
            x,
            u_nom,
            args,
            dynamics=self.dynamics,
            barriers=self.barriers,
            input_bounds=self.input_bounds,
            control_weight=self.control_weight,
            **self.config.to_kwargs(),
        )

    def filter(self, x: ArrayLike, u_nom: ArrayLike, args: Any = None) -> jax.Array:
        """The filtered control ``u*(x)``; jittable, vmappable, differentiable."""
        return self.filter_with_info(x, u_nom, args)[0]

    __call__ = filter


def discrete_cbf_constraint(h: Callable, gamma: float) -> Callable:
    """The discrete-time barrier condition ``c(x, x_next, args) >= 0`` for MPC.

    ``c = h(x_next, args) - (1 - gamma) h(x, args)`` (Zeng et al. 2021): ``h`` decays at most
    by the factor ``1 - gamma`` per step, so ``h(x_0) >= 0`` keeps every ``h(x_k) >= 0``.

    Args:
        h: Barrier ``(x, args) -> scalar``, safe where ``>= 0``.
        gamma: Decay rate in ``(0, 1]``; 1 only asks ``h(x_next) >= 0``.

    Returns:
        ``c(x, x_next, args=None) -> scalar``.

    Raises:
        ValueError: ``gamma`` outside ``(0, 1]``; TypeError: ``h`` not callable.

    Example:
        >>> import jax.numpy as jnp
        >>> c = discrete_cbf_constraint(lambda x, args: 1.0 - x[0], gamma=0.5)
        >>> print(round(float(c(jnp.array([0.0]), jnp.array([0.4]))), 6))  # 0.6 - 0.5 * 1
        0.1
    """
    if not callable(h):
        raise TypeError(f"h must be a callable (x, args) -> scalar, got {h!r}.")
    number = isinstance(gamma, (int, float, np.floating)) and not isinstance(gamma, bool)
    if not number or not 0 < gamma <= 1:
        raise ValueError(f"gamma must be a number in (0, 1], got {gamma!r}.")

    def constraint(x, x_next, args=None):
        return h(x_next, args) - (1.0 - gamma) * h(x, args)

    return constraint


def _check_dynamics(dynamics):
    ok = isinstance(dynamics, (tuple, list)) and len(dynamics) == 2
    if not ok or not all(callable(fn) for fn in dynamics):
        raise TypeError(f"dynamics must be a pair (f, g) of callables (x, args), got {dynamics!r}.")
    return tuple(dynamics)


def _check_barriers(barriers):
    barriers = list(barriers)
    if not barriers:
        raise ValueError("barriers must hold at least one ControlBarrierFunction, got none.")
    for cbf in barriers:
        if not isinstance(cbf, ControlBarrierFunction):
            raise TypeError(
                f"barriers must be ControlBarrierFunction instances, got {type(cbf).__name__}; "
                "wrap h as ControlBarrierFunction(h=h, alpha=...)."
            )
    return barriers


def _concrete(value):
    """``value`` as a numpy array, or ``None`` while it is traced."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=float)


def _check_bound_values(input_bounds, control_weight):
    if input_bounds is not None:
        if not isinstance(input_bounds, (tuple, list)) or len(input_bounds) != 2:
            raise ValueError(f"input_bounds must be (lower, upper), got {input_bounds!r}.")
        lo, hi = (_concrete(v) for v in input_bounds)
        if lo is not None and hi is not None and np.any(lo > hi):
            raise ValueError(
                f"input_bounds are infeasible: lower > upper somewhere (lower={lo}, upper={hi});"
                " swap them or widen the bounds."
            )
    w = _concrete(control_weight)
    if w is not None and not np.all(w > 0):
        raise ValueError(f"control_weight must be positive, got {w}.")


def _shape(fn, x, args):
    return jax.eval_shape(lambda xx: fn(xx, args), x).shape


def _check(x, u_nom, args, dynamics, barriers, input_bounds, control_weight):
    f, g = _check_dynamics(dynamics)
    barriers = _check_barriers(barriers)
    _check_bound_values(input_bounds, control_weight)
    x_shape, u_shape = jnp.shape(x), jnp.shape(u_nom)
    if len(x_shape) != 1:
        raise ValueError(f"x must be a vector (n_x,), got shape {x_shape}; vmap over batches.")
    if len(u_shape) != 1:
        raise ValueError(f"u_nom must be a vector (n_u,), got shape {u_shape}; vmap over batches.")
    xs = jax.ShapeDtypeStruct(x_shape, jnp.result_type(x, float))
    (n_x,), (n_u,) = x_shape, u_shape
    if _shape(f, xs, args) != (n_x,):
        raise ValueError(f"f(x, args) must have shape ({n_x},), got {_shape(f, xs, args)}.")
    if _shape(g, xs, args) != (n_x, n_u):
        raise ValueError(
            f"g(x, args) must have shape (n_x, n_u) = ({n_x}, {n_u}) to match x and u_nom, "
            f"got {_shape(g, xs, args)}."
        )
    for i, cbf in enumerate(barriers):
        if _shape(cbf.h, xs, args) != ():
            raise ValueError(
                f"barriers[{i}].h must return a scalar, got {_shape(cbf.h, xs, args)}."
            )
    bounds = [None, None] if input_bounds is None else list(input_bounds)
    for k, name in enumerate(("lower", "upper")):
        if bounds[k] is not None:
            shape = jnp.shape(bounds[k])
            if shape not in ((), (n_u,)):
                raise ValueError(f"input bound {name} must be a scalar or ({n_u},), got {shape}.")
            bounds[k] = jnp.broadcast_to(jnp.asarray(bounds[k]), (n_u,))
    weight = control_weight
    if weight is not None:
        if jnp.shape(weight) not in ((), (n_u,)):
            raise ValueError(
                f"control_weight must be a scalar or ({n_u},), got {jnp.shape(weight)}."
            )
        weight = jnp.broadcast_to(jnp.asarray(weight), (n_u,))
    return f, g, bounds[0], bounds[1], weight
