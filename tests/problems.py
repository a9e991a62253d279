"""Reference problems with known minimisers, shared by the solver tests (STYLE.md).

Each problem is a residual function ``r(x, args)`` with objective ``sum r^2`` so that both
minimisers and least-squares solvers take it. ``x_star`` is the known minimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from opifex.benchmarks.problems import mgh


@dataclass(frozen=True)
class Problem:
    name: str
    residual: Any
    x0: np.ndarray
    x_star: np.ndarray
    args: Any = None
    atol: float = 1e-6  # on x; Powell's singular minimiser is only linearly approached

    def objective(self, x, args):
        r = self.residual(x, args)
        return jnp.vdot(r, r)


def _rosenbrock(x, a):
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), a - x[0]])


def _beale(x, y):
    i = jnp.arange(1, 4)
    return y - x[0] * (1 - x[1] ** i)


def _linear(x, data):
    a, b = data
    return a @ x - b


def _spd_quadratic(x, data):
    # r = L'(x - c) with L L' = A: sum r^2 = (x - c)' A (x - c), minimiser c
    chol, c = data
    return chol.T @ (x - c)


def _exponential(x, data):
    t, y = data
    return x[0] * jnp.exp(x[1] * t) - y


def problems() -> list[Problem]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 4))
    x_lin = rng.normal(size=4)
    b = a @ x_lin + 0.01 * rng.normal(size=12)
    m = rng.normal(size=(5, 5))
    spd = m @ m.T + 5 * np.eye(5)
    c = rng.normal(size=5)
    t = np.linspace(0.0, 1.0, 30)
    return [
        Problem("rosenbrock", _rosenbrock, np.array([-1.2, 1.0]), np.array([1.0, 1.0]), 1.0),
        Problem(
            "beale",
            _beale,
            np.array([1.0, 1.0]),
            np.array([3.0, 0.5]),
            np.array([1.5, 2.25, 2.625]),
        ),
        Problem(
            "powell_singular",
            mgh.get("powell_singular").residual,
            np.array([3.0, -1.0, 0.0, 1.0]),
            np.zeros(4),
            None,
            atol=2e-2,
        ),
        Problem("linear_lsq", _linear, np.zeros(4), np.linalg.lstsq(a, b, rcond=None)[0], (a, b)),
        Problem("spd_quadratic", _spd_quadratic, np.zeros(5), c, (np.linalg.cholesky(spd), c)),
        Problem(
            "exponential_fit",
            _exponential,
            np.array([1.0, 0.0]),
            np.array([2.0, -1.5]),
            (t, 2.0 * np.exp(-1.5 * t)),
        ),
    ]


@jax.custom_vjp
def _exp_model(p, t):
    return p[0] * jnp.exp(p[1] * t)


def _exp_model_fwd(p, t):
    y = _exp_model(p, t)
    return y, (p, t, y)


def _exp_model_bwd(res, g):
    p, t, y = res
    return jnp.array([g @ (y / p[0]), g @ (y * t)]), None


_exp_model.defvjp(_exp_model_fwd, _exp_model_bwd)


def reverse_only_exponential_residual(p, data):
    """``p0 exp(p1 t) - y`` through a ``custom_vjp``: reverse mode only, so a solver's
    ``jacobian="fwd"`` must fail on it and ``"rev"`` must work."""
    t, y = data
    return _exp_model(p, t) - y
