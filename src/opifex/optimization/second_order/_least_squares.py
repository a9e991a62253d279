"""Pieces shared by the least-squares solvers (Gauss-Newton, Levenberg-Marquardt).

Both minimise ``f(x) = 0.5 * ||r(x)||^2`` for a residual vector ``r``. Parameters may be any
pytree; internally they are flattened with ``ravel_pytree`` to a vector of ``n`` entries and
the residual to a vector of ``m`` entries, so every linear-algebra step is a small dense one.

The damped normal equations ``(J'J + lam D'D) p = -J'r`` are never formed for the default
``"qr"`` solve: ``J = QR`` is factored once per accepted Jacobian, and each trial damping
solves the ``2n x n`` least-squares problem ``min ||[R; sqrt(lam) D] p + [Q'r; 0]||``
(Moré 1978, Sec. 3), which keeps the accuracy of ``J`` rather than squaring its condition
number. ``"cholesky"`` factors ``J'J + lam D'D`` (cheaper, squares the condition number)
and falls back to the QR solve whenever the factor is not finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class Problem(NamedTuple):
    """A least-squares problem flattened for one params/args signature (trace-time only)."""

    fun: Callable  # (x [n], args) -> r [m], cast to dtype
    value_and_jac: Callable  # (x [n], args) -> (r [m], J [m, n])
    unravel: Callable  # x [n] -> params pytree
    m: int  # residual size
    n: int  # parameter count
    dtype: jnp.dtype  # floating dtype of params (kept for every array of the state)


def check_choices(*, linear_solver: str, jacobian: str) -> None:
    """Reject unknown ``linear_solver`` / ``jacobian`` names in the factories."""
    if linear_solver not in ("qr", "cholesky"):
        raise ValueError(f"linear_solver must be 'qr' or 'cholesky', got {linear_solver!r}.")
    if jacobian not in ("auto", "fwd", "rev"):
        raise ValueError(f"jacobian must be 'auto', 'fwd' or 'rev', got {jacobian!r}.")


def _describe(tree) -> str:
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", tree))


def flatten_problem(residual_fn: Callable, params, args, jacobian: str) -> Problem:
    """Check shapes with ``jax.eval_shape`` and build the flat residual and its Jacobian.

    Args:
        residual_fn: ``(params, args) -> r`` with ``r`` a 1-D vector.
        params: Initial guess (any pytree of floating arrays).
        args: Problem data.
        jacobian: ``"fwd"``, ``"rev"`` or ``"auto"`` (``"fwd"`` when ``m >= n``).

    Returns:
        A :class:`Problem`.

    Raises:
        TypeError: If a params leaf is not floating point.
        ValueError: If the residual is not a 1-D floating vector.
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves; pass at least one floating array.")
    for leaf in leaves:
        dt = jnp.result_type(leaf)
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(
                f"params must be real floating arrays, got dtype {dt} in params "
                f"{_describe(jax.eval_shape(lambda p: p, params))}; cast them, e.g. "
                "jnp.asarray(x, jnp.float32)."
            )
    x0, unravel = ravel_pytree(params)
    dtype = x0.dtype
    n = x0.shape[0]
    out = jax.eval_shape(residual_fn, params, args)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            f"residual_fn must return one 1-D array, got the pytree {_describe(out)}; "
            "concatenate the residuals into a vector (e.g. with ravel_pytree)."
        )
    if out.ndim != 1:
        raise ValueError(
            f"residual_fn must return a 1-D residual vector, got shape {out.shape} for params "
            f"{_describe(jax.eval_shape(lambda p: p, params))}; use r.ravel() for a "
            "matrix-valued residual."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"residual_fn must return a floating vector, got dtype {out.dtype} (shape "
            f"{out.shape}); params are {dtype}."
        )
    m = out.shape[0]

    def fun(x, a):
        # Residuals are cast to the params dtype so that float32 params stay float32 even
        # when the data in args is float64.
        return residual_fn(unravel(x), a).astype(dtype)

    mode = ("fwd" if m >= n else "rev") if jacobian == "auto" else jacobian

    def value_and_jac(x, a):
        if mode == "fwd":
            r, lin = jax.linearize(lambda z: fun(z, a), x)
            jac = jax.vmap(lin, out_axes=1)(jnp.eye(n, dtype=dtype))
        else:
            r, vjp = jax.vjp(lambda z: fun(z, a), x)
            (jac,) = jax.vmap(vjp)(jnp.eye(m, dtype=dtype))
        return r, jac

    return Problem(fun, value_and_jac, unravel, m, n, dtype)


def column_norms(jac: jax.Array) -> jax.Array:
    """Euclidean norms of the Jacobian's columns, ``[n]``."""
    return jnp.sqrt(jnp.sum(jac * jac, axis=0))


def _r_factor(aug: jax.Array) -> jax.Array:
    # R of the QR of [A | b] holds R of A and Q'b in its last column; mode="r" skips
    # forming Q (LAPACK geqrf only), which is most of the cost for tall A.
    rows, cols = aug.shape
    if rows < cols:
        aug = jnp.concatenate([aug, jnp.zeros((cols - rows, cols), aug.dtype)])
    return jnp.linalg.qr(aug, mode="r")[: cols - 1]


def factorize(jac: jax.Array, residual: jax.Array, linear_solver: str):
    """Factor the accepted Jacobian once, for every trial damping until the next acceptance.

    Returns:
        ``(factor [n, n], rhs [n])``: ``(R, Q'r)`` of ``J = QR`` for ``"qr"``, or
        ``(J'J, J'r)`` for ``"cholesky"``.
    """
    if linear_solver == "cholesky":
        return jac.T @ jac, jac.T @ residual
    r_aug = _r_factor(jnp.concatenate([jac, residual[:, None]], axis=1))
    return r_aug[:, :-1], r_aug[:, -1]


def _qr_damped(r_mat, qtr, diag, damping):
    # min ||R p + Q'r||^2 + lam ||D p||^2 as one (2n x n) least-squares problem.
    n = r_mat.shape[0]
    top = jnp.concatenate([r_mat, qtr[:, None]], axis=1)
    bottom = jnp.concatenate(
        [jnp.sqrt(damping) * jnp.diag(diag), jnp.zeros((n, 1), qtr.dtype)], axis=1
    )
    r2 = _r_factor(jnp.concatenate([top, bottom]))
    return -jax.scipy.linalg.solve_triangular(r2[:, :-1], r2[:, -1], lower=False)


def damped_step(factor, rhs, jac, residual, diag, damping, linear_solver: str) -> jax.Array:
    """Solve ``min ||J p + r||^2 + damping * ||D p||^2`` for the step ``p`` (``[n]``).

    ``damping = 0`` gives the Gauss-Newton step. For ``"cholesky"`` a non-finite factor of
    ``J'J + damping D'D`` (not numerically positive definite) switches to the QR solve of
    the stacked ``[J; sqrt(damping) D]``, selected with ``lax.cond``.
    """
    if linear_solver == "qr":
        return _qr_damped(factor, rhs, diag, damping)
    normal = factor + damping * jnp.diag(diag * diag)
    chol = jnp.linalg.cholesky(normal)

    def by_cholesky(_):
        return -jax.scipy.linalg.cho_solve((chol, True), rhs)

    def by_qr(_):
        r_mat, qtr = factorize(jac, residual, "qr")
        return _qr_damped(r_mat, qtr, diag, damping)

    step = jax.lax.cond(jnp.all(jnp.isfinite(chol)), by_cholesky, by_qr, None)
    # A finite but useless factor (pivots lost to cancellation) also shows as a non-finite
    # step; the QR solve is the answer then too.
    return jax.lax.cond(jnp.all(jnp.isfinite(step)), lambda _: step, by_qr, None)


def gradient_cosine(jac, residual, grad) -> jax.Array:
    """MINPACK's ``gnorm``: ``max_j |J_j' r| / (||J_j|| ||r||)`` (0 for a zero residual)."""
    col = column_norms(jac)
    rnorm = jnp.linalg.norm(residual)
    denom = col * rnorm
    safe = jnp.where(denom > 0, denom, 1.0)
    return jnp.max(jnp.where(denom > 0, jnp.abs(grad) / safe, 0.0), initial=0.0)


def reduction_tests(value, new_value, predicted, damping_part, ftol):
    """``ftol`` test on the relative actual and predicted reductions of ``||r||^2``.

    MINPACK's test (Moré, Garbow & Hillstrom 1980, ``lmder`` info = 1): both reductions at
    most ``ftol`` and the actual one at most twice the predicted one. The actual reduction
    carries the rounding noise of ``f`` (about ``m * eps * max|model| / |r|`` relative), often
    far above a tight ``ftol``; so a step whose *predicted* reduction is below ``ftol`` while
    the damping term ``damping_part = lambda ||D p||^2`` is no more than half of it (the
    step is close to Gauss-Newton, so the model, not the damping, says no reduction is
    left) also passes, whatever the noise in the actual reduction. A zero residual passes.
    """
    safe = jnp.where(value > 0, value, 1.0)
    actual = (value - new_value) / safe
    pred = predicted / safe
    minpack = (jnp.abs(actual) <= ftol) & (pred <= ftol) & (actual <= 2.0 * pred)
    model_says_done = (pred <= ftol) & (damping_part <= 0.5 * predicted)
    return minpack | model_says_done | (value == 0)


def least_squares_optimality(residual_fn: Callable, flat_bounds: Callable | None = None):
    """Optimality condition of ``min 0.5 ||r||^2`` for implicit differentiation.

    Without bounds it is the gradient ``J'r``. With a box it is the projected-gradient fixed
    point ``x - clip(x - J'r, lower, upper)``, which vanishes at every KKT point and whose
    Jacobian is the identity on active bounds (so the solution does not move there).

    Args:
        residual_fn: ``(params, args) -> r``.
        flat_bounds: ``params -> (lower [n], upper [n])`` for a box, or ``None``.
    """

    def grad_fn(params, args):
        return jax.grad(lambda p: 0.5 * jnp.sum(residual_fn(p, args) ** 2))(params)

    if flat_bounds is None:
        return grad_fn

    def projected(params, args):
        x, unravel = ravel_pytree(params)
        g, _ = ravel_pytree(grad_fn(params, args))
        lower, upper = flat_bounds(params)
        return unravel(x - jnp.clip(x - g.astype(x.dtype), lower, upper))

    return projected


def make_flat_bounds(bounds) -> Callable | None:
    """Validate ``bounds = (lower, upper)`` and return ``params -> (lower [n], upper [n])``.

    Each of ``lower`` and ``upper`` is a pytree like ``params`` or a scalar for every entry;
    use ``-inf``/``inf`` for free entries.

    Raises:
        ValueError: If ``bounds`` is not a pair or some ``lower > upper`` (checked on the
            host when the bounds are concrete, and again against ``params`` in ``init``).
    """
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(
            f"bounds must be a pair (lower, upper) of pytrees like params, got {bounds!r}."
        )
    lower, upper = bounds
    try:
        lo_leaves = [np.asarray(v, dtype=float) for v in jax.tree.leaves(lower)]
        hi_leaves = [np.asarray(v, dtype=float) for v in jax.tree.leaves(upper)]
    except (TypeError, jax.errors.ConcretizationTypeError):
        lo_leaves = hi_leaves = []
    if len(lo_leaves) == len(hi_leaves):
        for lo, hi in zip(lo_leaves, hi_leaves, strict=True):
            if np.any(np.broadcast_to(lo, np.broadcast_shapes(lo.shape, hi.shape)) > hi):
                raise ValueError(f"bounds need lower <= upper everywhere, got {lo} > {hi}.")

    def like(bound, params, name):
        if jax.tree.structure(bound) == jax.tree.structure(0.0):
            bound = jax.tree.map(lambda _: bound, params)
        try:
            return jax.tree.map(
                lambda b, p: jnp.broadcast_to(jnp.asarray(b), jnp.shape(p)), bound, params
            )
        except ValueError as err:
            raise ValueError(
                f"bounds {name} must be a scalar or a pytree like params "
                f"{_describe(jax.eval_shape(lambda p: p, params))}, got "
                f"{jax.tree.map(jnp.shape, bound)} ({err})."
            ) from None

    def flat(params):
        x, _ = ravel_pytree(params)
        lo, _ = ravel_pytree(like(lower, params, "lower"))
        hi, _ = ravel_pytree(like(upper, params, "upper"))
        return lo.astype(x.dtype), hi.astype(x.dtype)

    return flat


def active_bounds(x, grad, lower, upper) -> jax.Array:
    """Entries held at a bound: on it, with the descent direction ``-grad`` pointing out."""
    return ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
