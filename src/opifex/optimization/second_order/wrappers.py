"""Factories of the second-order optimizers, each configured by one config dataclass.

- :func:`create_lbfgs_optimizer`: L-BFGS as an optax ``GradientTransformationExtraArgs``.
- :func:`create_lbfgs_solver`: L-BFGS solving to tolerance on the core :class:`Solver` protocol.
- :func:`create_bfgs_solver`: dense self-scaled BFGS for models up to ~20,000 parameters.
- :func:`create_nys_newton_cg_solver`: Hessian-free Newton-CG with Nyström preconditioning.
- :func:`create_gauss_newton_solver`, :func:`create_levenberg_marquardt_solver`: nonlinear
  least squares on the core protocol.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from opifex.optimization.core import Solver
from opifex.optimization.second_order._bfgs import bfgs_solver
from opifex.optimization.second_order._gauss_newton import gauss_newton
from opifex.optimization.second_order._lbfgs import lbfgs_solver, lbfgs_transform
from opifex.optimization.second_order._levenberg_marquardt import levenberg_marquardt
from opifex.optimization.second_order._newton_cg import nys_newton_cg_solver
from opifex.optimization.second_order.config import (
    BFGSConfig,
    GaussNewtonConfig,
    LBFGSConfig,
    LevenbergMarquardtConfig,
    NysNewtonCGConfig,
)


def _config(config, cls):
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}.")
    return config


def create_lbfgs_optimizer(
    config: LBFGSConfig | None = None,
) -> optax.GradientTransformationExtraArgs:
    """L-BFGS as an optax transformation (use it in any optax loop or ``nnx.Optimizer``).

    ``update`` needs the extra arguments ``value``, ``grad`` and ``value_fn`` exactly as
    ``optax.lbfgs`` does; ``optax.value_and_grad_from_state`` reuses the line search's last
    value and gradient.

    Args:
        config: An :class:`LBFGSConfig` (defaults if ``None``).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from opifex.optimization.second_order import create_lbfgs_optimizer
        >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
        >>> opt = create_lbfgs_optimizer()
        >>> x = jnp.zeros(3); state = opt.init(x)
        >>> value_and_grad = optax.value_and_grad_from_state(f)
        >>> for _ in range(5):
        ...     value, grad = value_and_grad(x, state=state)
        ...     updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        ...     x = optax.apply_updates(x, updates)
        >>> [round(float(v), 5) for v in x]
        [3.0, 3.0, 3.0]
    """
    return lbfgs_transform(**_config(config, LBFGSConfig).to_kwargs())


def create_lbfgs_solver(fn: Callable, config: LBFGSConfig | None = None) -> Solver:
    """L-BFGS minimising ``fn(params, args)`` to tolerance, for :func:`opifex.optimization.solve`.

    Args:
        fn: Scalar objective ``(params, args) -> float``; ``params`` may be any pytree.
        config: An :class:`LBFGSConfig` (defaults if ``None``).

    Returns:
        A :class:`~opifex.optimization.core.Solver`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import create_lbfgs_solver
        >>> rosen = lambda x, a: (a - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        >>> sol = solve(create_lbfgs_solver(rosen), jnp.array([-1.2, 1.0]), 1.0)
        >>> sol.params.round(3).tolist(), sol.converged
        ([1.0, 1.0], True)
    """
    return lbfgs_solver(fn, **_config(config, LBFGSConfig).to_kwargs())


def create_bfgs_solver(fn: Callable, config: BFGSConfig | None = None) -> Solver:
    """Dense self-scaled BFGS minimising ``fn(params, args)``, to use with ``solve``.

    Args:
        fn: Scalar objective ``(params, args) -> float``; ``params`` may be any pytree.
        config: A :class:`BFGSConfig` (defaults if ``None``).

    Returns:
        A :class:`~opifex.optimization.core.Solver` (see ``_bfgs.bfgs_solver`` for the rule).

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import create_bfgs_solver
        >>> rosen = lambda x, a: (a - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        >>> sol = solve(create_bfgs_solver(rosen), jnp.array([-1.2, 1.0]), 1.0)
        >>> sol.params.round(3).tolist(), sol.converged
        ([1.0, 1.0], True)
    """
    return bfgs_solver(fn, **_config(config, BFGSConfig).to_kwargs())


def create_nys_newton_cg_solver(fn: Callable, config: NysNewtonCGConfig | None = None) -> Solver:
    """NysNewton-CG minimising ``fn(params, args)`` (Rathore et al. 2024).

    Args:
        fn: Scalar objective ``(params, args) -> float``; ``params`` may be any pytree.
        config: A :class:`NysNewtonCGConfig` (defaults if ``None``).

    Returns:
        A :class:`~opifex.optimization.core.Solver` (see ``_newton_cg`` for the rule).

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import NysNewtonCGConfig
        >>> from opifex.optimization.second_order import create_nys_newton_cg_solver
        >>> quad = lambda x, a: 0.5 * jnp.sum(a * x**2) - jnp.sum(x)
        >>> cfg = NysNewtonCGConfig(rank=3, mu=1e-8, gtol=1e-5)
        >>> a = jnp.array([1.0, 10.0, 100.0])
        >>> sol = solve(create_nys_newton_cg_solver(quad, cfg), jnp.zeros(3), a)
        >>> [round(float(v), 4) for v in sol.params], sol.converged
        ([1.0, 0.1, 0.01], True)
    """
    return nys_newton_cg_solver(fn, **_config(config, NysNewtonCGConfig).to_kwargs())


def create_gauss_newton_solver(
    residual_fn: Callable, config: GaussNewtonConfig | None = None
) -> Solver:
    """Gauss-Newton on ``0.5 * ||residual_fn(params, args)||^2``.

    Args:
        residual_fn: ``(params, args) -> residual vector`` (1-D).
        config: A :class:`GaussNewtonConfig` (defaults if ``None``).

    Returns:
        A :class:`~opifex.optimization.core.Solver`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import create_gauss_newton_solver
        >>> t = jnp.linspace(0.0, 1.0, 20); y = 2.0 * jnp.exp(-1.5 * t)
        >>> res = lambda p, a: p[0] * jnp.exp(p[1] * a[0]) - a[1]
        >>> sol = solve(create_gauss_newton_solver(res), jnp.array([1.0, -1.0]), (t, y))
        >>> sol.params.round(6).tolist(), sol.converged
        ([2.0, -1.5], True)
    """
    return gauss_newton(residual_fn, **_config(config, GaussNewtonConfig).to_kwargs())


def create_levenberg_marquardt_solver(
    residual_fn: Callable,
    config: LevenbergMarquardtConfig | None = None,
    *,
    bounds=None,
) -> Solver:
    """Levenberg-Marquardt with Moré scaling on ``0.5 * ||residual_fn(params, args)||^2``.

    Args:
        residual_fn: ``(params, args) -> residual vector`` (1-D).
        config: A :class:`LevenbergMarquardtConfig` (defaults if ``None``).
        bounds: Optional ``(lower, upper)`` pytrees like ``params`` (use ``-inf``/``inf`` for
            free entries); steps are projected onto the box.

    Returns:
        A :class:`~opifex.optimization.core.Solver`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization import solve
        >>> from opifex.optimization.second_order import create_levenberg_marquardt_solver
        >>> t = jnp.linspace(0.0, 1.0, 20); y = 2.0 * jnp.exp(-1.5 * t)
        >>> res = lambda p, a: p[0] * jnp.exp(p[1] * a[0]) - a[1]
        >>> sol = solve(create_levenberg_marquardt_solver(res), jnp.array([1.0, 1.0]), (t, y))
        >>> sol.params.round(6).tolist(), sol.converged
        ([2.0, -1.5], True)
    """
    cfg = _config(config, LevenbergMarquardtConfig)
    return levenberg_marquardt(residual_fn, bounds=bounds, **cfg.to_kwargs())


__all__ = [
    "create_bfgs_solver",
    "create_gauss_newton_solver",
    "create_lbfgs_optimizer",
    "create_lbfgs_solver",
    "create_levenberg_marquardt_solver",
    "create_nys_newton_cg_solver",
]
