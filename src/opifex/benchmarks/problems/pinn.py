"""Published physics-informed benchmark problems, set up as their papers set them up.

- :func:`burgers`: Raissi, Perdikaris & Karniadakis (2019), Sec. 3.1.1: viscous Burgers with
  100 initial/boundary points, 10,000 Latin-hypercube collocation points, 8 hidden layers of
  20 tanh units, relative L2 error on the 256 x 100 grid of ``burgers_shock.mat``.
- :func:`convection`, :func:`reaction`, :func:`wave`: Rathore, Lei, Frangella, Lu & Udell
  (2024): a 257 x 101 (x, t) grid, 10,000 residual points drawn without replacement from its
  interior, all 257 initial points and 101 points per boundary, 3 hidden tanh layers
  (width 50 here, the smallest of their widths), unweighted sum of mean squared residuals,
  closed-form solutions; the error is measured on the whole grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.io
from scipy.stats import qmc

from opifex._data import data_path
from opifex.optimization.scientific_integration.networks import apply_mlp
from opifex.optimization.scientific_integration.physics_loss import (
    PhysicsInformedLoss,
    ResidualTerm,
    partial,
)

BURGERS_SOURCE = "maziarraissi/PINNs appendix/Data/burgers_shock.mat (exact Cole-Hopf solution)"


@dataclass(frozen=True)
class PINNProblem:
    """A physics-informed benchmark: loss, training points, network and reference solution.

    Attributes:
        name: Short name.
        loss: The objective (its ``apply`` already normalises inputs to the box).
        sizes: Network layer sizes.
        lower, upper: Corners of the (x, t) box.
        test_points: ``(M, 2)`` evaluation points.
        reference: ``(M,)`` reference solution there.
        published: Published relative L2 errors, ``{method: value}``.
        seed_batch: ``seed -> batch``; the training points of one seed.
    """

    name: str
    loss: PhysicsInformedLoss
    sizes: tuple[int, ...]
    lower: np.ndarray
    upper: np.ndarray
    test_points: np.ndarray
    reference: np.ndarray
    published: dict = field(default_factory=dict)
    seed_batch: object = None

    def batch(self, seed: int = 0) -> dict:
        return self.loss.check_batch(self.seed_batch(seed))


def _boxed_mlp(lower, upper):
    lo, hi = np.asarray(lower, float), np.asarray(upper, float)
    return functools.partial(apply_mlp, lower=lo, upper=hi)


def _value(u, points, targets):
    return u(points) - targets


def burgers(path: str | None = None) -> PINNProblem:
    """Viscous Burgers ``u_t + u u_x = (0.01/pi) u_xx`` on ``[-1, 1] x [0, 1]`` (x, t)."""
    data = scipy.io.loadmat(path or data_path("burgers", "burgers_shock.mat"))
    t, x = data["t"].ravel(), data["x"].ravel()
    usol = np.real(data["usol"])  # (256 x, 100 t)
    xx, tt = np.meshgrid(x, t, indexing="ij")
    test_points = np.stack([xx.ravel(), tt.ravel()], axis=1)
    lower, upper = np.array([-1.0, 0.0]), np.array([1.0, 1.0])
    nu = 0.01 / np.pi

    def pde(u, points, _):
        value, u_x, u_xx = partial(u, points, 0, 2)
        _, u_t = partial(u, points, 1, 1)
        return u_t + value * u_x - nu * u_xx

    # Initial line and both walls; Raissi et al. draw N_u = 100 of these 456 points.
    edge_points = np.concatenate(
        [
            np.stack([x, np.zeros_like(x)], 1),
            np.stack([-np.ones_like(t), t], 1),
            np.stack([np.ones_like(t), t], 1),
        ]
    )
    edge_values = np.concatenate([-np.sin(np.pi * x), np.zeros_like(t), np.zeros_like(t)])

    def seed_batch(seed):
        rng = np.random.default_rng(seed)
        idx = rng.choice(edge_points.shape[0], 100, replace=False)
        colloc = qmc.scale(qmc.LatinHypercube(d=2, seed=seed).random(10_000), lower, upper)
        colloc = np.concatenate([colloc, edge_points[idx]])
        return {
            "pde": {"points": colloc, "targets": None},
            "data": {"points": edge_points[idx], "targets": edge_values[idx]},
        }

    loss = PhysicsInformedLoss(
        _boxed_mlp(lower, upper), (ResidualTerm("pde", pde), ResidualTerm("data", _value))
    )
    return PINNProblem(
        name="burgers",
        loss=loss,
        sizes=(2, *[20] * 8, 1),
        lower=lower,
        upper=upper,
        test_points=test_points,
        reference=usol.ravel(),
        published={"L-BFGS (Raissi et al. 2019)": 6.7e-4},
        seed_batch=seed_batch,
    )


def _rathore_grid(x_range, num_x=257, num_t=101):
    x = np.linspace(*x_range, num_x)
    t = np.linspace(0.0, 1.0, num_t)
    xx, tt = np.meshgrid(x, t, indexing="ij")
    grid = np.stack([xx.ravel(), tt.ravel()], 1)
    ix, it = np.meshgrid(x[1:-1], t[1:], indexing="ij")
    interior = np.stack([ix.ravel(), it.ravel()], 1)
    return x, t, grid, interior


def _rathore(name, x_range, terms, edge_batch, solution, published, width=50) -> PINNProblem:
    x, t, grid, interior = _rathore_grid(x_range)
    lower, upper = np.array([x_range[0], 0.0]), np.array([x_range[1], 1.0])

    def seed_batch(seed):
        rng = np.random.default_rng(seed)
        idx = rng.choice(interior.shape[0], 10_000, replace=False)
        return {"pde": {"points": interior[idx], "targets": None}, **edge_batch(x, t)}

    return PINNProblem(
        name=name,
        loss=PhysicsInformedLoss(_boxed_mlp(lower, upper), terms),
        sizes=(2, width, width, width, 1),
        lower=lower,
        upper=upper,
        test_points=grid,
        reference=solution(grid[:, 0], grid[:, 1]),
        published=published,
        seed_batch=seed_batch,
    )


def _periodic(u, points, _):
    # Rows pair (x_lo, t_i) with (x_hi, t_i): u must agree across the period.
    n = points.shape[0] // 2
    values = u(points)
    return values[:n] - values[n:]


def _periodic_edges(x, t, initial):
    walls = np.concatenate(
        [np.stack([np.full_like(t, x[0]), t], 1), np.stack([np.full_like(t, x[-1]), t], 1)]
    )
    return {
        "bc": {"points": walls, "targets": None},
        "ic": {"points": np.stack([x, np.zeros_like(x)], 1), "targets": initial(x)},
    }


def convection(beta: float = 40.0) -> PINNProblem:
    """``u_t + beta u_x = 0`` on ``[0, 2 pi] x [0, 1]``, ``u(x, 0) = sin x``, periodic."""

    def pde(u, points, _):
        _, u_x = partial(u, points, 0, 1)
        _, u_t = partial(u, points, 1, 1)
        return u_t + beta * u_x

    return _rathore(
        "convection",
        (0.0, 2 * np.pi),
        (ResidualTerm("pde", pde), ResidualTerm("bc", _periodic), ResidualTerm("ic", _value)),
        lambda x, t: _periodic_edges(x, t, np.sin),
        lambda x, t: np.sin(x - beta * t),
        {"Adam+L-BFGS (Rathore et al. 2024)": 4.19e-3, "+NysNewton-CG": 1.94e-3},
    )


def _gaussian(x):
    return np.exp(-0.5 * ((x - np.pi) / (np.pi / 4)) ** 2)


def reaction(rho: float = 5.0) -> PINNProblem:
    """``u_t - rho u (1 - u) = 0`` on ``[0, 2 pi] x [0, 1]``, Gaussian initial value, periodic."""

    def pde(u, points, _):
        value, u_t = partial(u, points, 1, 1)
        return u_t - rho * value * (1.0 - value)

    def solution(x, t):
        h, e = _gaussian(x), np.exp(rho * t)
        return h * e / (h * e + 1.0 - h)

    return _rathore(
        "reaction",
        (0.0, 2 * np.pi),
        (ResidualTerm("pde", pde), ResidualTerm("bc", _periodic), ResidualTerm("ic", _value)),
        lambda x, t: _periodic_edges(x, t, _gaussian),
        solution,
        {"Adam+L-BFGS (Rathore et al. 2024)": 1.92e-2, "+NysNewton-CG": 9.92e-3},
    )


def wave(beta: float = 5.0) -> PINNProblem:
    """``u_tt - 4 u_xx = 0`` on ``[0, 1]^2``, ``u(x, 0) = sin(pi x) + sin(beta pi x) / 2``,
    ``u_t(x, 0) = 0``, ``u(0, t) = u(1, t) = 0``."""

    def pde(u, points, _):
        _, _, u_xx = partial(u, points, 0, 2)
        _, _, u_tt = partial(u, points, 1, 2)
        return u_tt - 4.0 * u_xx

    def velocity(u, points, _):
        return partial(u, points, 1, 1)[1]

    def edges(x, t):
        initial = np.stack([x, np.zeros_like(x)], 1)
        return {
            "bc_lower": {"points": np.stack([np.zeros_like(t), t], 1), "targets": None},
            "bc_upper": {"points": np.stack([np.ones_like(t), t], 1), "targets": None},
            "ic": {
                "points": initial,
                "targets": np.sin(np.pi * x) + 0.5 * np.sin(beta * np.pi * x),
            },
            "ic_t": {"points": initial, "targets": None},
        }

    def solution(x, t):
        return np.sin(np.pi * x) * np.cos(2 * np.pi * t) + 0.5 * np.sin(beta * np.pi * x) * np.cos(
            2 * beta * np.pi * t
        )

    return _rathore(
        "wave",
        (0.0, 1.0),
        (
            ResidualTerm("pde", pde),
            ResidualTerm("bc_lower", lambda u, p, _: u(p)),
            ResidualTerm("bc_upper", lambda u, p, _: u(p)),
            ResidualTerm("ic", _value),
            ResidualTerm("ic_t", velocity),
        ),
        edges,
        solution,
        {"Adam+L-BFGS (Rathore et al. 2024)": 5.52e-2, "+NysNewton-CG": 1.27e-2},
    )


PROBLEMS = {"burgers": burgers, "convection": convection, "reaction": reaction, "wave": wave}
