"""Feasibility by construction for parametric problems ``A y = x``, ``G y <= h``.

Layers that turn a network's raw output into a point satisfying the constraints of the instance
``x``, all pure ``jnp`` on one instance (``jax.vmap`` them over a batch) and differentiable, so
a network can be trained through them:

- :func:`equality_completion`: DC3's completion, exact on ``A y = x``.
- :func:`inequality_correction`: DC3's gradient correction of ``G y <= h`` along ``A y = x``.
- :func:`project_equality`: orthogonal projection onto ``A y = x`` (closed form).
- :func:`project_to_interior_ray`: the boundary point on the segment from a strictly feasible
  point toward ``y`` (exact ratio test), and :func:`project_to_interior_ray_bisection` for a
  general convex constraint function, as in homeomorphic projection.
- :func:`feasibility_report`: residuals and the fraction of feasible instances of a batch.

:class:`ConstraintLayer` chains completion, correction and projection for one constraint set.

References:
    Donti, Rolnick & Kolter, "DC3: A learning method for optimization with hard constraints",
    ICLR 2021. Liang, Chen & Low, "Low complexity homeomorphic projection to ensure
    neural-network solution feasibility for optimization over (non-)convex set", ICML 2023.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from opifex.optimization.l2o import _dc3_layers, _projection


class LinearConstraints(NamedTuple):
    """The constraints ``A y = x`` (``x`` the instance parameter) and ``G y <= h``."""

    A: jax.Array  # (m_eq, n) float
    G: jax.Array  # (m_in, n) float
    h: jax.Array  # (m_in,) float


def _shape_error(name: str, expected: str, got, fix: str) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got {tuple(np.shape(got))}. {fix}")


_ONE = "Pass one instance; use jax.vmap for a batch."


def _check_matrix(A) -> tuple[int, int]:
    if np.ndim(A) != 2 or not 1 <= np.shape(A)[0] <= np.shape(A)[1]:
        raise _shape_error("A", "(m_eq, n) with 1 <= m_eq <= n", A, "Pass the equality matrix.")
    return np.shape(A)


def _check_vector(name: str, v, size: int, meaning: str) -> None:
    if np.shape(v) != (size,):
        raise _shape_error(name, f"({size},) ({meaning})", v, _ONE)


def _concrete(a) -> np.ndarray | None:
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


def _check_dependent_block(A) -> None:
    a = _concrete(A)
    if a is None:
        return
    m, n = a.shape
    cond = np.linalg.cond(a[:, n - m :]) if np.all(np.isfinite(a)) else np.inf
    if not cond < 1e12:
        raise ValueError(
            f"The last m_eq={m} columns of A (the block the completion solves for) are singular "
            f"or nearly so (condition number {cond:.3g}). Reorder the variables so that those "
            "columns of A form an invertible block."
        )


def _check_row_rank(A) -> None:
    a = _concrete(A)
    if a is None:
        return
    s = np.linalg.svd(a, compute_uv=False) if np.all(np.isfinite(a)) else np.zeros(1)
    if not s[-1] > 1e-12 * s[0]:
        raise ValueError(
            f"A must have full row rank (m_eq={a.shape[0]} independent rows) for the equality "
            "projection; its rows are dependent or non-finite. Drop the redundant rows."
        )


def _check_constraints(cons: LinearConstraints) -> tuple[int, int, int]:
    if not isinstance(cons, LinearConstraints):
        raise TypeError(f"cons must be a LinearConstraints(A, G, h), got {type(cons).__name__}.")
    m, n = _check_matrix(cons.A)
    if np.ndim(cons.G) != 2 or np.shape(cons.G)[1] != n:
        raise _shape_error("G", f"(m_in, {n}) (n = A.shape[1])", cons.G, "Match A's columns.")
    _check_vector("h", cons.h, np.shape(cons.G)[0], "one bound per row of G")
    return m, n, np.shape(cons.G)[0]


def equality_completion(z: ArrayLike, x: ArrayLike, A: ArrayLike) -> jax.Array:
    """DC3's equality completion: free variables ``z`` plus the rest solved from ``A y = x``.

    With ``A = [A_z | B]`` (``B`` the last ``m_eq`` columns, invertible), returns
    ``y = (z, B^{-1} (x - A_z z))``, which satisfies ``A y = x`` exactly up to rounding and is
    linear (hence differentiable) in ``z`` and ``x``.

    Args:
        z: The free variables, shape ``(n - m_eq,)``.
        x: The instance parameter (right-hand side), shape ``(m_eq,)``.
        A: The equality matrix, shape ``(m_eq, n)``.

    Returns:
        ``y`` of shape ``(n,)``.

    Raises:
        ValueError: On wrong shapes, or (when ``A`` is concrete) a singular last block of ``A``.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[1.0, 1.0, 2.0]])
        >>> y = equality_completion(jnp.array([1.0, 2.0]), jnp.array([7.0]), A)
        >>> [round(float(v), 6) for v in y], round(float(A[0] @ y), 6)
        ([1.0, 2.0, 2.0], 7.0)
    """
    m, n = _check_matrix(A)
    _check_vector("z", z, n - m, "the free variables: n - m_eq")
    _check_vector("x", x, m, "one entry per row of A")
    _check_dependent_block(A)
    A = jnp.asarray(A)
    z = jnp.asarray(z)
    return _dc3_layers.complete_from_matrix(z, jnp.asarray(x, z.dtype), jnp.asarray(A, z.dtype))


def _correction_args(steps, step_size, momentum) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}.")
    if step_size is not None and not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(
            f"step_size must be a float > 0 or None (1 / ||G_eff||^2), got {step_size!r}."
        )
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}.")


def inequality_correction(
    y: ArrayLike,
    x: ArrayLike,
    cons: LinearConstraints,
    *,
    steps: int,
    step_size: float | None = None,
    momentum: float = 0.5,
) -> jax.Array:
    """DC3's inequality correction: momentum gradient steps along the completion.

    Writes ``y = (z, w(z))`` with ``w`` the equality completion for ``x`` and descends
    ``phi(z) = 0.5 ||relu(G y(z) - h)||^2`` in the free variables only (Donti et al. 2021,
    Sec. 3.2), with heavy-ball momentum::

        v_{k+1} = step_size * grad phi(z_k) + momentum * v_k,   z_{k+1} = z_k - v_{k+1}

    and returns ``y(z_steps)``, re-completed so that ``A y = x`` holds to rounding (the input's
    dependent entries are replaced by the completion). Differentiable in ``y``, ``x`` and
    the constraint data; DC3 trains through it.

    Args:
        y: A point, shape ``(n,)``; only its first ``n - m_eq`` entries are used.
        x: The instance parameter, shape ``(m_eq,)``.
        cons: The constraints.
        steps: Number of correction steps (static).
        step_size: Gradient step; ``None`` uses ``1 / ||G_eff||_2^2`` (``G_eff`` the inequality
            Jacobian in the free variables), for which the descent is stable. DC3 multiplies
            the gradient of ``||relu||^2``, i.e. its learning rate is half of ours.
        momentum: Heavy-ball coefficient in ``[0, 1)`` (DC3: 0.5).

    Returns:
        The corrected ``y``, shape ``(n,)``.

    Raises:
        ValueError: On wrong shapes or arguments, or a singular last block of ``A``.

    Example:
        >>> import jax.numpy as jnp
        >>> cons = LinearConstraints(
        ...     A=jnp.array([[1.0, 1.0]]), G=jnp.array([[1.0, 0.0]]), h=jnp.array([0.5]))
        >>> y = inequality_correction(
        ...     jnp.array([2.0, -1.0]), jnp.array([1.0]), cons, steps=20, momentum=0.0)
        >>> [round(float(v), 3) for v in y]
        [0.5, 0.5]
    """
    m, n, _ = _check_constraints(cons)
    _check_vector("y", y, n, "n = A.shape[1]")
    _check_vector("x", x, m, "one entry per row of A")
    _correction_args(steps, step_size, momentum)
    _check_dependent_block(cons.A)
    y = jnp.asarray(y)
    A, G, h = (jnp.asarray(a, y.dtype) for a in cons)
    return _dc3_layers.correct_from_constraints(
        y, jnp.asarray(x, y.dtype), A, G, h, step_size, momentum, steps=steps
    )


def project_equality(y: ArrayLike, x: ArrayLike, A: ArrayLike) -> jax.Array:
    """Orthogonal projection onto ``{y : A y = x}``: ``y - A^T (A A^T)^{-1} (A y - x)``.

    Computed from a thin QR factorization of ``A^T`` (better conditioned than the normal
    equations). Idempotent; the identity on points already on the subspace.

    Args:
        y: The point, shape ``(n,)``.
        x: The right-hand side, shape ``(m_eq,)``.
        A: Full-row-rank equality matrix, shape ``(m_eq, n)``.

    Returns:
        The projection, shape ``(n,)``.

    Raises:
        ValueError: On wrong shapes, or (when ``A`` is concrete) rank-deficient ``A``.

    Example:
        >>> import jax.numpy as jnp
        >>> y = project_equality(jnp.array([1.0, 3.0]), jnp.array([0.0]), jnp.array([[1.0, 1.0]]))
        >>> [round(float(v), 6) for v in y]
        [-1.0, 1.0]
    """
    m, n = _check_matrix(A)
    _check_vector("y", y, n, "n = A.shape[1]")
    _check_vector("x", x, m, "one entry per row of A")
    _check_row_rank(A)
    y = jnp.asarray(y)
    return _projection.project_equality_from_matrix(
        y, jnp.asarray(x, y.dtype), jnp.asarray(A, y.dtype)
    )


def project_to_interior_ray(
    y: ArrayLike, y_interior: ArrayLike, x: ArrayLike, cons: LinearConstraints
) -> jax.Array:
    """The point where the segment from ``y_interior`` to ``y`` leaves ``{G y <= h}``.

    Exact ratio test: ``t = min(1, min_{i: g_i'd > 0} (h_i - g_i'y0) / g_i'd)`` with
    ``d = y - y0``, returning ``y0 + t d`` (``y`` itself when feasible). ``y_interior`` must be
    strictly feasible; if it and ``y`` both satisfy ``A y = x``, so does the result. The map is
    piecewise smooth (the gradient follows the active constraint) and idempotent.

    Args:
        y: The point to make feasible, shape ``(n,)``.
        y_interior: A strictly feasible point for this instance, shape ``(n,)``.
        x: The instance parameter, shape ``(m_eq,)`` (the inequalities here do not depend on
            it; it is checked so every layer takes the same arguments).
        cons: The constraints.

    Returns:
        A feasible point on the segment, shape ``(n,)``.

    Raises:
        ValueError: On wrong shapes.

    Example:
        >>> import jax.numpy as jnp
        >>> cons = LinearConstraints(
        ...     A=jnp.array([[0.0, 1.0]]), G=jnp.array([[1.0, 0.0]]), h=jnp.array([1.0]))
        >>> y = project_to_interior_ray(
        ...     jnp.array([3.0, 0.0]), jnp.array([0.0, 0.0]), jnp.array([0.0]), cons)
        >>> [round(float(v), 6) for v in y]
        [1.0, 0.0]
    """
    m, n, _ = _check_constraints(cons)
    _check_vector("y", y, n, "n = A.shape[1]")
    _check_vector("y_interior", y_interior, n, "n = A.shape[1]")
    _check_vector("x", x, m, "one entry per row of A")
    y = jnp.asarray(y)
    return _projection.ray_project(y, jnp.asarray(y_interior, y.dtype), cons.G, cons.h)


def project_to_interior_ray_bisection(
    y: ArrayLike,
    y_interior: ArrayLike,
    x: ArrayLike,
    constraint: LinearConstraints | Callable[[jax.Array, jax.Array], jax.Array],
    *,
    steps: int = 30,
) -> jax.Array:
    """Bisection along the segment from ``y_interior`` to ``y`` for a convex constraint set.

    The homeomorphic-projection step (Liang et al. 2023) for ``{y : g(y, x) <= 0}`` with ``g``
    convex: bisection on ``t`` in ``[0, 1]`` keeps the largest ``t`` known feasible, so the
    result ``y0 + t (y - y0)`` is always feasible and within ``2^-steps`` (as a fraction of the
    segment) of the boundary; a feasible ``y`` is returned unchanged. ``t`` is held constant
    under differentiation.

    Args:
        y: The point, shape ``(n,)``.
        y_interior: A feasible point, shape ``(n,)`` (strictly feasible for a useful answer).
        x: The instance parameter passed to ``constraint``.
        constraint: ``LinearConstraints`` (``g = G y - h``) or a function ``g(y, x)`` returning
            a scalar or vector, feasible where every entry is ``<= 0``.
        steps: Number of bisection steps (>= 1).

    Returns:
        A feasible point on the segment, shape ``(n,)``.

    Raises:
        ValueError: On wrong shapes or ``steps``.
        TypeError: If ``constraint`` is neither ``LinearConstraints`` nor callable.

    Example:
        >>> import jax.numpy as jnp
        >>> ball = lambda y, x: jnp.sum(y**2) - x[0]
        >>> y = project_to_interior_ray_bisection(
        ...     jnp.array([2.0, 0.0]), jnp.zeros(2), jnp.array([1.0]), ball, steps=40)
        >>> round(float(y[0]), 6)
        1.0
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}.")
    if isinstance(constraint, LinearConstraints):
        m, n, _ = _check_constraints(constraint)
        _check_vector("x", x, m, "one entry per row of A")
        fn = _projection.linear_residual
        args = (jnp.asarray(constraint.G), jnp.asarray(constraint.h))
    elif callable(constraint):
        n = np.shape(y)[0] if np.ndim(y) == 1 else -1
        fn, args = constraint, jnp.asarray(x)
    else:
        raise TypeError(
            "constraint must be LinearConstraints or a function g(y, x) (feasible where "
            f"g <= 0), got {type(constraint).__name__}."
        )
    _check_vector("y", y, n, "the number of variables")
    _check_vector("y_interior", y_interior, n, "same as y")
    y = jnp.asarray(y)
    y0 = jnp.asarray(y_interior, y.dtype)
    return _projection.bisect_project(y, y0, args, fn, steps=steps)


def feasibility_report(
    Y: ArrayLike,
    X: ArrayLike,
    cons: LinearConstraints,
    *,
    eq_tol: float = 1e-8,
    ineq_tol: float = 1e-4,
) -> dict[str, jax.Array]:
    """Constraint residuals of a batch of solutions and the fraction that is feasible.

    Per instance, the equality residual is ``max_i |(A y - x)_i|`` and the inequality
    violation ``max_j relu(G y - h)_j``; an instance is feasible when both are within their
    tolerances. Computed in JAX: without ``jax_enable_x64`` float64 inputs are rounded to
    float32 first, which hides residuals below about ``1e-7 * |y|``.

    Args:
        Y: Solutions, shape ``(N, n)``.
        X: Their instance parameters, shape ``(N, m_eq)``.
        cons: The constraints.
        eq_tol: Tolerance on the equality residual.
        ineq_tol: Tolerance on the inequality violation.

    Returns:
        A dict of scalars: ``eq_max`` / ``ineq_max`` (worst over the batch), ``eq_mean`` /
        ``ineq_mean`` (mean over instances and rows), ``eq_max_mean`` / ``ineq_max_mean``
        (mean over instances of the per-instance max: the "max eq." and "max ineq." columns of
        DC3's tables), ``eq_fraction``, ``ineq_fraction`` and ``feasible_fraction``.

    Raises:
        ValueError: On wrong shapes or negative tolerances.

    Example:
        >>> import jax.numpy as jnp
        >>> cons = LinearConstraints(
        ...     A=jnp.array([[1.0, 1.0]]), G=jnp.array([[1.0, 0.0]]), h=jnp.array([0.5]))
        >>> r = feasibility_report(jnp.array([[0.5, 0.5], [1.0, 0.0]]), jnp.ones((2, 1)), cons)
        >>> round(float(r["ineq_max"]), 6), round(float(r["feasible_fraction"]), 6)
        (0.5, 0.5)
    """
    m, n, _ = _check_constraints(cons)
    if np.ndim(Y) != 2 or np.shape(Y)[1] != n:
        raise _shape_error("Y", f"(N, {n})", Y, "Pass one solution per row.")
    if np.shape(X) != (np.shape(Y)[0], m):
        raise _shape_error("X", f"({np.shape(Y)[0]}, {m}) (one row per row of Y)", X, "")
    if not (eq_tol >= 0 and ineq_tol >= 0):
        raise ValueError(f"eq_tol and ineq_tol must be >= 0, got {eq_tol!r} and {ineq_tol!r}.")
    Y, X = jnp.asarray(Y), jnp.asarray(X)
    eq = jnp.abs(Y @ jnp.asarray(cons.A).T - X)
    ineq = jnp.maximum(Y @ jnp.asarray(cons.G).T - jnp.asarray(cons.h), 0.0)
    eq_inst, ineq_inst = jnp.max(eq, axis=1), jnp.max(ineq, axis=1, initial=0.0)
    eq_ok, ineq_ok = eq_inst <= eq_tol, ineq_inst <= ineq_tol
    return {
        "eq_max": jnp.max(eq_inst),
        "eq_mean": jnp.mean(eq),
        "eq_max_mean": jnp.mean(eq_inst),
        "ineq_max": jnp.max(ineq_inst),
        "ineq_mean": jnp.mean(ineq) if ineq.size else jnp.zeros((), Y.dtype),
        "ineq_max_mean": jnp.mean(ineq_inst),
        "eq_fraction": jnp.mean(eq_ok),
        "ineq_fraction": jnp.mean(ineq_ok),
        "feasible_fraction": jnp.mean(eq_ok & ineq_ok),
    }


_PROJECTIONS = ("none", "ray", "bisection")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstraintLayerConfig:
    """Settings of :class:`ConstraintLayer`; every field changes its output.

    Attributes:
        correction_steps: Steps of :func:`inequality_correction` (0 skips it; DC3 trains with
            10).
        correction_step_size: Its step size; ``None`` for ``1 / ||G_eff||_2^2``.
        correction_momentum: Its heavy-ball coefficient in ``[0, 1)``.
        projection: Final step: ``"ray"`` (:func:`project_to_interior_ray`), ``"bisection"``
            (:func:`project_to_interior_ray_bisection` on ``G y - h``) or ``"none"``.
        bisection_steps: Bisection steps when ``projection="bisection"``.
    """

    correction_steps: int = 10
    correction_step_size: float | None = None
    correction_momentum: float = 0.5
    projection: str = "ray"
    bisection_steps: int = 30

    def replace(self, **changes) -> ConstraintLayerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self):
        _correction_args(self.correction_steps, self.correction_step_size, self.correction_momentum)
        if self.projection not in _PROJECTIONS:
            raise ValueError(f"projection must be one of {_PROJECTIONS}, got {self.projection!r}.")
        steps = self.bisection_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"bisection_steps must be an int >= 1, got {steps!r}.")


class ConstraintLayer:
    """Completion, then correction, then projection, for one fixed constraint set.

    Factorizes ``A`` once. ``layer(z, x, y_interior)`` maps free variables ``z`` (shape
    ``(n - m_eq,)``) to a point that satisfies ``A y = x`` to rounding and, with a projection,
    ``G y <= h``: :func:`equality_completion`, then :func:`inequality_correction`, then the
    chosen ray projection from the strictly feasible ``y_interior``. A pytree (the config is
    static), so it can be passed through ``jax.jit``; ``jax.vmap`` it over ``z`` and ``x``.

    Args:
        cons: Concrete constraints.
        config: The settings (defaults: 10 correction steps, ratio-test projection).

    Raises:
        ValueError: On bad shapes or a singular last block of ``A``.

    Example:
        >>> import jax.numpy as jnp
        >>> cons = LinearConstraints(
        ...     A=jnp.array([[1.0, 1.0]]), G=jnp.array([[1.0, 0.0]]), h=jnp.array([0.5]))
        >>> layer = ConstraintLayer(cons)
        >>> y = layer(jnp.array([2.0]), jnp.array([1.0]), y_interior=jnp.array([0.0, 1.0]))
        >>> round(float(y[0] + y[1]), 6), bool(y[0] <= 0.5)
        (1.0, True)
    """

    def __init__(self, cons: LinearConstraints, config: ConstraintLayerConfig | None = None):
        self.config = ConstraintLayerConfig() if config is None else config
        _check_constraints(cons)
        if any(isinstance(a, jax.core.Tracer) for a in cons):
            raise ValueError("ConstraintLayer needs concrete constraints; build it outside jit.")
        _check_dependent_block(cons.A)
        self.cons = LinearConstraints(*(jnp.asarray(a) for a in cons))
        self.ops = _dc3_layers.completion_operators(self.cons.A)
        self.g_eff = _dc3_layers.effective_inequality_matrix(self.ops, self.cons.G)
        lr = self.config.correction_step_size
        dtype = self.g_eff.dtype
        self.step_size = (
            _dc3_layers.lipschitz_step(self.g_eff) if lr is None else jnp.asarray(lr, dtype)
        )
        self.momentum = jnp.asarray(self.config.correction_momentum, self.g_eff.dtype)

    def __call__(
        self, z: ArrayLike, x: ArrayLike, y_interior: ArrayLike | None = None
    ) -> jax.Array:
        m, n = self.cons.A.shape
        _check_vector("z", z, n - m, "the free variables: n - m_eq")
        _check_vector("x", x, m, "one entry per row of A")
        cfg = self.config
        if cfg.projection != "none":
            if y_interior is None:
                raise ValueError(
                    f'projection="{cfg.projection}" needs y_interior (a strictly feasible point '
                    'for this x); pass it or use projection="none".'
                )
            _check_vector("y_interior", y_interior, n, "n = A.shape[1]")
        z = jnp.asarray(z)
        y0 = None if y_interior is None else jnp.asarray(y_interior, z.dtype)
        return _apply_layer(self, z, jnp.asarray(x, z.dtype), y0)


@jax.jit
def _apply_layer(layer: ConstraintLayer, z, x, y_interior):
    cfg = layer.config
    _, G, h = layer.cons
    y = _dc3_layers.complete(layer.ops, z, x)
    if cfg.correction_steps:
        y = _dc3_layers.correct(
            layer.ops,
            layer.g_eff,
            y,
            x,
            G,
            h,
            steps=cfg.correction_steps,
            step_size=layer.step_size,
            momentum=layer.momentum,
        )
    if cfg.projection == "ray":
        y = _projection.ray_project(y, y_interior, G, h)
    elif cfg.projection == "bisection":
        y = _projection.bisect_project(
            y, y_interior, (G, h), _projection.linear_residual, steps=cfg.bisection_steps
        )
    return y


class _LayerStatic:
    """Pytree aux data: compares by the settings that change the program, so layers that
    differ only in step size or momentum (array leaves) share one compilation."""

    def __init__(self, config: ConstraintLayerConfig):
        self.config = config
        self.key = (config.correction_steps, config.projection, config.bisection_steps)

    def __eq__(self, other):
        return isinstance(other, _LayerStatic) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


def _flatten_layer(layer: ConstraintLayer):
    children = (layer.cons, layer.ops, layer.g_eff, layer.step_size, layer.momentum)
    return children, _LayerStatic(layer.config)


def _unflatten_layer(static: _LayerStatic, children) -> ConstraintLayer:
    layer = object.__new__(ConstraintLayer)
    layer.config = static.config
    layer.cons, layer.ops, layer.g_eff, layer.step_size, layer.momentum = children
    return layer


jax.tree_util.register_pytree_node(ConstraintLayer, _flatten_layer, _unflatten_layer)
