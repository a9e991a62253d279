"""Moré-Garbow-Hillstrom test problems for unconstrained minimisation and least squares.

Each problem is a residual function ``r(x, args)`` with objective ``f(x) = sum r(x)^2``, so
minimisers use :func:`objective` and least-squares solvers use the residuals directly. Data
travels in ``args``. Start points and minima are those of

    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing Unconstrained Optimization Software",
    ACM Trans. Math. Softw. 7(1), 17-41, 1981.

``f_star`` is the published minimum, given to more digits than the paper prints where the
value has been recomputed to full precision (the tests check every ``f_star`` against the
published figure, at the published ``x*`` or against scipy's minimum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class MGHProblem:
    """One MGH problem.

    Attributes:
        name: Short name, with the size where the problem is scalable.
        residual: ``(x, args) -> r`` (1-D); the objective is ``sum r^2``.
        x0: Standard starting point (float64 numpy array).
        f_star: Minimum of ``sum r^2``.
        x_star: The minimiser where it is unique and known in closed form, else ``None``.
        args: Problem data passed to ``residual``.
    """

    name: str
    residual: Callable[[Any, Any], Any]
    x0: np.ndarray
    f_star: float
    x_star: np.ndarray | None = None
    args: Any = None

    @property
    def n(self) -> int:
        """Number of variables."""
        return int(self.x0.size)


def objective(problem: MGHProblem) -> Callable[[Any, Any], Any]:
    """``f(x, args) = sum r(x, args)^2`` of ``problem``."""
    residual = problem.residual

    def f(x, args):
        r = residual(x, args)
        return jnp.vdot(r, r)

    return f


def _rosenbrock(x, args):
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def _freudenstein_roth(x, args):
    return jnp.stack(
        [
            -13.0 + x[0] + ((5.0 - x[1]) * x[1] - 2.0) * x[1],
            -29.0 + x[0] + ((x[1] + 1.0) * x[1] - 14.0) * x[1],
        ]
    )


def _powell_badly_scaled(x, args):
    return jnp.stack([1e4 * x[0] * x[1] - 1.0, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def _brown_badly_scaled(x, args):
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def _beale(x, args):
    (y,) = args
    i = jnp.arange(1, 4, dtype=x.dtype)
    return y - x[0] * (1.0 - x[1] ** i)


def _jennrich_sampson(x, args):
    (i,) = args
    return 2.0 + 2.0 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def _helical_valley(x, args):
    # MGH's theta: arctan(x2/x1)/(2 pi), plus 1/2 when x1 < 0.
    theta = jnp.arctan(x[1] / x[0]) / (2.0 * jnp.pi) + jnp.where(x[0] < 0, 0.5, 0.0)
    return jnp.stack(
        [10.0 * (x[2] - 10.0 * theta), 10.0 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0), x[2]]
    )


def _bard(x, args):
    u, v, w, y = args
    return y - (x[0] + u / (v * x[1] + w * x[2]))


def _gaussian(x, args):
    t, y = args
    return x[0] * jnp.exp(-0.5 * x[1] * (t - x[2]) ** 2) - y


def _meyer(x, args):
    t, y = args
    return x[0] * jnp.exp(x[1] / (t + x[2])) - y


def _box_3d(x, args):
    (t,) = args
    return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-10.0 * t))


def _powell_singular(x, args):
    return jnp.stack(
        [
            x[0] + 10.0 * x[1],
            jnp.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2.0 * x[2]) ** 2,
            jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]
    )


def _wood(x, args):
    return jnp.stack(
        [
            10.0 * (x[1] - x[0] ** 2),
            1.0 - x[0],
            jnp.sqrt(90.0) * (x[3] - x[2] ** 2),
            1.0 - x[2],
            jnp.sqrt(10.0) * (x[1] + x[3] - 2.0),
            (x[1] - x[3]) / jnp.sqrt(10.0),
        ]
    )


def _kowalik_osborne(x, args):
    u, y = args
    return y - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def _brown_dennis(x, args):
    (t,) = args
    return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2


def _osborne1(x, args):
    t, y = args
    return y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


def _biggs_exp6(x, args):
    t, y = args
    return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - y


def _osborne2(x, args):
    t, y = args
    model = (
        x[0] * jnp.exp(-t * x[4])
        + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7])
    )
    return y - model


def _watson(x, args):
    (t,) = args
    n = x.shape[0]
    powers = t[:, None] ** jnp.arange(n, dtype=x.dtype)  # [29, n]: t^(j-1)
    j = jnp.arange(1, n, dtype=x.dtype)
    first = powers[:, : n - 1] @ (j * x[1:])
    second = powers @ x
    r = first - second**2 - 1.0
    return jnp.concatenate([r, jnp.stack([x[0], x[1] - x[0] ** 2 - 1.0])])


def _extended_rosenbrock(x, args):
    odd, even = x[0::2], x[1::2]
    return jnp.stack([10.0 * (even - odd**2), 1.0 - odd], axis=1).reshape(-1)


def _penalty1(x, args):
    return jnp.concatenate([jnp.sqrt(1e-5) * (x - 1.0), jnp.stack([jnp.vdot(x, x) - 0.25])])


def _variably_dimensioned(x, args):
    j = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    s = jnp.vdot(j, x - 1.0)
    return jnp.concatenate([x - 1.0, jnp.stack([s, s**2])])


def _brown_almost_linear(x, args):
    n = x.shape[0]
    r = x[:-1] + jnp.sum(x) - (n + 1.0)
    return jnp.concatenate([r, jnp.stack([jnp.prod(x) - 1.0])])


def _discrete_boundary_value(x, args):
    n = x.shape[0]
    h = 1.0 / (n + 1)
    t = jnp.arange(1, n + 1, dtype=x.dtype) * h
    padded = jnp.concatenate([jnp.zeros(1, x.dtype), x, jnp.zeros(1, x.dtype)])
    return 2.0 * x - padded[:-2] - padded[2:] + 0.5 * h**2 * (x + t + 1.0) ** 3


def _broyden_tridiagonal(x, args):
    padded = jnp.concatenate([jnp.zeros(1, x.dtype), x, jnp.zeros(1, x.dtype)])
    return (3.0 - 2.0 * x) * x - padded[:-2] - 2.0 * padded[2:] + 1.0


def _linear_full_rank(x, args):
    m = _LINEAR_FULL_RANK_M
    n = x.shape[0]
    s = jnp.sum(x)
    top = x - 2.0 * s / m - 1.0
    bottom = jnp.full((m - n,), -2.0 * s / m - 1.0, x.dtype)
    return jnp.concatenate([top, bottom])


def _chebyquad(x, args):
    (integrals,) = args
    n = x.shape[0]
    # Shifted Chebyshev polynomials T_i(2x - 1) by their three-term recurrence.
    z = 2.0 * x - 1.0
    rows = [jnp.ones_like(z), z]
    for _ in range(2, n + 1):
        rows.append(2.0 * z * rows[-1] - rows[-2])
    values = jnp.stack(rows[1 : n + 1])  # [n, n]: T_1..T_n at each x_j
    return jnp.mean(values, axis=1) - integrals


_LINEAR_FULL_RANK_M = 20
_BEALE_Y = np.array([1.5, 2.25, 2.625])
_BARD_Y = np.array(
    [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]
)
_GAUSSIAN_Y = np.array(
    [
        0.0009,
        0.0044,
        0.0175,
        0.0540,
        0.1295,
        0.2420,
        0.3521,
        0.3989,
        0.3521,
        0.2420,
        0.1295,
        0.0540,
        0.0175,
        0.0044,
        0.0009,
    ]
)
_MEYER_Y = np.array(
    [
        34780.0,
        28610.0,
        23650.0,
        19630.0,
        16370.0,
        13720.0,
        11540.0,
        9744.0,
        8261.0,
        7030.0,
        6005.0,
        5147.0,
        4427.0,
        3820.0,
        3307.0,
        2872.0,
    ]
)
_KOWALIK_Y = np.array(
    [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246]
)
_KOWALIK_U = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])
_OSBORNE1_Y = np.array(
    [
        0.844,
        0.908,
        0.932,
        0.936,
        0.925,
        0.908,
        0.881,
        0.850,
        0.818,
        0.784,
        0.751,
        0.718,
        0.685,
        0.658,
        0.628,
        0.603,
        0.580,
        0.558,
        0.538,
        0.522,
        0.506,
        0.490,
        0.478,
        0.467,
        0.457,
        0.448,
        0.438,
        0.431,
        0.424,
        0.420,
        0.414,
        0.411,
        0.406,
    ]
)
_OSBORNE2_Y = np.array(
    [
        1.366,
        1.191,
        1.112,
        1.013,
        0.991,
        0.885,
        0.831,
        0.847,
        0.786,
        0.725,
        0.746,
        0.679,
        0.608,
        0.655,
        0.616,
        0.606,
        0.602,
        0.626,
        0.651,
        0.724,
        0.649,
        0.649,
        0.694,
        0.644,
        0.624,
        0.661,
        0.612,
        0.558,
        0.533,
        0.495,
        0.500,
        0.423,
        0.395,
        0.375,
        0.372,
        0.391,
        0.396,
        0.405,
        0.428,
        0.429,
        0.523,
        0.562,
        0.607,
        0.653,
        0.672,
        0.708,
        0.633,
        0.668,
        0.645,
        0.632,
        0.591,
        0.559,
        0.597,
        0.625,
        0.739,
        0.710,
        0.729,
        0.720,
        0.636,
        0.581,
        0.428,
        0.292,
        0.162,
        0.098,
        0.054,
    ]
)


def _bard_args():
    u = np.arange(1.0, 16.0)
    v = 16.0 - u
    return (u, v, np.minimum(u, v), _BARD_Y)


def _biggs_args():
    t = 0.1 * np.arange(1.0, 14.0)
    return (t, np.exp(-t) - 5.0 * np.exp(-10.0 * t) + 3.0 * np.exp(-4.0 * t))


def _chebyquad_args(n):
    i = np.arange(1, n + 1)
    integrals = np.zeros(n)
    even = i % 2 == 0
    integrals[even] = -1.0 / (i[even].astype(float) ** 2 - 1.0)
    return (integrals,)


def _ones(n):
    return np.ones(n)


def problems() -> list[MGHProblem]:
    """Every problem, in MGH's numbering order (scalable ones at the stated size)."""
    a = np.array
    n_ext = 100
    x0_ext = np.tile([-1.2, 1.0], n_ext // 2)
    t_dbv = np.arange(1, 11) / 11.0
    return [
        MGHProblem("rosenbrock", _rosenbrock, a([-1.2, 1.0]), 0.0, a([1.0, 1.0])),
        MGHProblem("freudenstein_roth", _freudenstein_roth, a([0.5, -2.0]), 0.0, a([5.0, 4.0])),
        MGHProblem("powell_badly_scaled", _powell_badly_scaled, a([0.0, 1.0]), 0.0),
        MGHProblem("brown_badly_scaled", _brown_badly_scaled, a([1.0, 1.0]), 0.0, a([1e6, 2e-6])),
        MGHProblem("beale", _beale, a([1.0, 1.0]), 0.0, a([3.0, 0.5]), (_BEALE_Y,)),
        MGHProblem(
            "jennrich_sampson",
            _jennrich_sampson,
            a([0.3, 0.4]),
            124.36218235561473,
            None,
            (np.arange(1.0, 11.0),),
        ),
        MGHProblem("helical_valley", _helical_valley, a([-1.0, 0.0, 0.0]), 0.0, a([1.0, 0, 0])),
        MGHProblem("bard", _bard, a([1.0, 1.0, 1.0]), 8.2148773065789e-3, None, _bard_args()),
        MGHProblem(
            "gaussian",
            _gaussian,
            a([0.4, 1.0, 0.0]),
            1.1279327696191e-8,
            None,
            ((8.0 - np.arange(1.0, 16.0)) / 2.0, _GAUSSIAN_Y),
        ),
        MGHProblem(
            "meyer",
            _meyer,
            a([0.02, 4000.0, 250.0]),
            87.945855170674,
            None,
            (45.0 + 5.0 * np.arange(1.0, 17.0), _MEYER_Y),
        ),
        MGHProblem(
            "box_3d", _box_3d, a([0.0, 10.0, 20.0]), 0.0, None, (0.1 * np.arange(1.0, 11.0),)
        ),
        MGHProblem(
            "powell_singular", _powell_singular, a([3.0, -1.0, 0.0, 1.0]), 0.0, a([0.0] * 4)
        ),
        MGHProblem("wood", _wood, a([-3.0, -1.0, -3.0, -1.0]), 0.0, _ones(4)),
        MGHProblem(
            "kowalik_osborne",
            _kowalik_osborne,
            a([0.25, 0.39, 0.415, 0.39]),
            3.0750560384925e-4,
            None,
            (_KOWALIK_U, _KOWALIK_Y),
        ),
        MGHProblem(
            "brown_dennis",
            _brown_dennis,
            a([25.0, 5.0, -5.0, -1.0]),
            85822.201626356,
            None,
            (np.arange(1.0, 21.0) / 5.0,),
        ),
        MGHProblem(
            "osborne1",
            _osborne1,
            a([0.5, 1.5, -1.0, 0.01, 0.02]),
            5.4648946975e-5,
            None,
            (10.0 * np.arange(33.0), _OSBORNE1_Y),
        ),
        MGHProblem(
            "biggs_exp6", _biggs_exp6, a([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]), 0.0, None, _biggs_args()
        ),
        MGHProblem(
            "osborne2",
            _osborne2,
            a([1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5]),
            4.0137736293548e-2,
            None,
            (np.arange(65.0) / 10.0, _OSBORNE2_Y),
        ),
        MGHProblem(
            "watson6", _watson, np.zeros(6), 2.2876700535524e-3, None, (np.arange(1.0, 30.0) / 29,)
        ),
        MGHProblem(
            "watson9", _watson, np.zeros(9), 1.3997601380909e-6, None, (np.arange(1.0, 30.0) / 29,)
        ),
        MGHProblem("extended_rosenbrock100", _extended_rosenbrock, x0_ext, 0.0, _ones(n_ext)),
        MGHProblem("penalty1_4", _penalty1, np.arange(1.0, 5.0), 2.2499775008e-5),
        MGHProblem(
            "variably_dimensioned10",
            _variably_dimensioned,
            1.0 - np.arange(1.0, 11.0) / 10.0,
            0.0,
            _ones(10),
        ),
        MGHProblem("brown_almost_linear10", _brown_almost_linear, np.full(10, 0.5), 0.0, None),
        MGHProblem(
            "discrete_boundary_value10",
            _discrete_boundary_value,
            t_dbv * (t_dbv - 1.0),
            0.0,
        ),
        MGHProblem("broyden_tridiagonal10", _broyden_tridiagonal, np.full(10, -1.0), 0.0),
        MGHProblem("linear_full_rank10", _linear_full_rank, np.ones(10), 10.0, -np.ones(10)),
        MGHProblem(
            "chebyquad8",
            _chebyquad,
            np.arange(1.0, 9.0) / 9.0,
            3.5168737256779e-3,
            None,
            _chebyquad_args(8),
        ),
    ]


def get(name: str) -> MGHProblem:
    """The problem called ``name``.

    Raises:
        KeyError: Naming the known problems if ``name`` is not one.
    """
    table = {p.name: p for p in problems()}
    if name not in table:
        raise KeyError(f"unknown MGH problem {name!r}; known: {sorted(table)}.")
    return table[name]


__all__ = ["MGHProblem", "get", "objective", "problems"]
