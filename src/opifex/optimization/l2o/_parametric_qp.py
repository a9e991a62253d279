"""Exactly feasible amortized solver for parametric QPs ``min 1/2 y'Qy + p'y, A y = x, G y <= h``.

Only ``x`` varies, so everything that depends on ``Q, p, A, G, h`` is factored once:

* equalities are eliminated exactly, ``y = y0(x) + N z`` with ``y0 = pinv(A) x`` and ``N`` an
  orthonormal basis of ``null(A)``; the reduced QP ``min 1/2 z'Hz + c(x)'z, B z <= b(x)`` has the
  fixed Hessian ``H = N'QN`` and fixed ``B = GN`` (``c = N'(Q y0 + p)``, ``b = h - G y0``);
* its dual ``g(lam) = min_z L(z, lam)``, ``lam >= 0``, is a concave quadratic with the fixed
  matrix ``M = B H^-1 B'``; any ``lam >= 0`` gives the certified lower bound ``g(lam) <= f*``;
* the network predicts ``lam`` (softplus) and is trained by maximizing ``g`` (no labels);
* refinement is ADMM on ``B z + s = b, s >= 0`` with a fixed penalty ``rho`` (Boyd et al. 2011,
  Sec. 5.2; the splitting of OSQP, Stellato et al. 2020), warm-started at the predicted dual;
  the z-update uses the precomputed ``(H + rho B'B)^-1``, so one step for all instances is one
  matrix product. The scaled dual stays ``>= 0``, so the bound stays certified;
* the primal ``y0 + N z`` meets ``A y = x`` to rounding; a ratio test along the segment from
  the interior point ``y0(x)`` (strictly feasible when ``G pinv(A) x < h``, as in DC3's data
  where ``h = sum|G pinv(A)|`` and ``|x| < 1``) makes ``G y <= h`` hold exactly (homeomorphic
  projection, Liang et al. 2023, for linear constraints); of the projected ADMM iterate and
  the projected Lagrangian minimizer at the final dual, the better one is returned.

Outside the strict-feasibility assumption the projection returns ``y0(x)`` itself (``t = 0``),
which is then infeasible; check with ``feasibility_report``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx

from opifex.optimization.l2o._parametric_core import (
    ParametricSolver,
    ParametricSolverConfig,
    TrainingHistory,
    _check,
    _is_int,
)


class ReducedQP(NamedTuple):
    """The factored data of a parametric QP (float64 arrays; k = n - m_eq).

    Everything x-dependent is affine in x: ``y0 = P x``, ``c = C x + c0``, ``b = h + D x``.
    """

    P: jax.Array  # (n, m_eq) pinv(A)
    N: jax.Array  # (n, k) orthonormal basis of null(A)
    C: jax.Array  # (k, m_eq) N'QP
    c0: jax.Array  # (k,) N'p
    h: jax.Array  # (m_in,)
    D: jax.Array  # (m_in, m_eq) -GP
    F: jax.Array  # (m_eq, m_eq) P'QP, so f(y0) = 1/2 x'Fx + f'x
    f: jax.Array  # (m_eq,) P'p
    H: jax.Array  # (k, k) reduced Hessian N'QN
    H_inv: jax.Array  # (k, k)
    B: jax.Array  # (m_in, k) GN
    K: jax.Array  # (k, k) (H + rho B'B)^-1
    KBt: jax.Array  # (k, m_in) K B'
    T: jax.Array  # (m_in, m_in) rho B K B'
    rho: jax.Array  # () ADMM penalty


def reduce_qp(Q, p, A, G, h, *, rho: float | None = None) -> ReducedQP:
    """Factor the fixed data of ``min 1/2 y'Qy + p'y, A y = x, G y <= h`` (host side, float64).

    ``rho=None`` balances the two terms of the ADMM z-update, ``rho = tr(H) / tr(B'B)``
    (within a small factor of the best fixed penalty on DC3's QP and on small random ones).

    Raises:
        ValueError: On inconsistent shapes, ``A`` without full row rank < n, or ``Q`` not
            positive definite on ``null(A)``.
    """
    Q, p, A, G, h = (np.asarray(a, np.float64) for a in (Q, p, A, G, h))
    n = p.shape[0]
    shapes = {
        "Q": (Q.shape, (n, n)),
        "A": (A.shape[1:], (n,)),
        "G": (G.shape[1:], (n,)),
        "h": (h.shape, (G.shape[0],)),
    }
    for name, (got, want) in shapes.items():
        if got != want:
            raise ValueError(f"{name} must have shape {want} (from p and G), got {got}.")
    N = scipy.linalg.null_space(A)
    if A.shape[0] + N.shape[1] != n or N.shape[1] == 0:
        raise ValueError(
            f"A must have full row rank < n, got shape {A.shape} with null space of dimension "
            f"{N.shape[1]}; remove redundant equality rows."
        )
    H = N.T @ Q @ N
    H = 0.5 * (H + H.T)
    if np.linalg.eigvalsh(H)[0] <= 0:
        raise ValueError("Q restricted to null(A) must be positive definite, got a singular one.")
    P = np.linalg.pinv(A)
    B = G @ N
    if rho is None:
        rho = float(np.trace(H) / max(np.trace(B.T @ B), 1e-300))
    K = np.linalg.inv(H + rho * B.T @ B)
    KBt = K @ B.T
    arrays = (
        P,
        N,
        N.T @ Q @ P,
        N.T @ p,
        h,
        -G @ P,
        P.T @ Q @ P,
        P.T @ p,
        H,
        np.linalg.inv(H),
        B,
        K,
        KBt,
        rho * B @ KBt,
        rho,
    )
    return ReducedQP(*(jnp.asarray(a) for a in arrays))


def _terms(x, qp: ReducedQP):
    """``(f(y0), c, b)`` of the reduced QP at ``x``."""
    return 0.5 * x @ (qp.F @ x) + qp.f @ x, qp.C @ x + qp.c0, qp.h + qp.D @ x


def dual_function(lam, x, qp: ReducedQP):
    """The Lagrange dual ``g(lam) = min_z L(z, lam)``; ``g(lam) <= f*`` for every ``lam >= 0``."""
    f0, c, b = _terms(x, qp)
    w = c + qp.B.T @ lam
    return f0 - 0.5 * w @ (qp.H_inv @ w) - lam @ b


def admm_refine(lam, x, qp: ReducedQP, steps: int):
    """``steps`` ADMM iterations warm-started at the dual ``lam``; returns ``(lam, z)``.

    With ``w = s + u`` the z-update is ``z = z1 - rho K B' w`` (``z1 = K(rho B'b - c)``), so
    ``v = b - Bz - u = (b - B z1) + T w - u`` and one iteration is a single product with T.
    """
    _, c, b = _terms(x, qp)
    z = -qp.H_inv @ (c + qp.B.T @ lam)
    s, u = jnp.maximum(0.0, b - qp.B @ z), lam / qp.rho
    z1 = qp.rho * qp.KBt @ b - qp.K @ c
    v1 = b - qp.B @ z1

    def body(carry, _):
        s, u = carry
        v = v1 + qp.T @ (s + u) - u
        s = jnp.maximum(0.0, v)
        return (s, s - v), None

    (s, u), _ = jax.lax.scan(body, (s, u), None, length=steps)
    return qp.rho * u, z1 - qp.rho * qp.KBt @ (s + u)


def _ratio_project(z, b, B):
    # Largest t <= 1 with t B z <= b (z = 0, i.e. y = y0, is strictly feasible); rounding can
    # leave B z a few ulps above b at t < 1, hence the 1e-12 pull-back.
    d = B @ z
    ratios = jnp.where(d > 0, b / jnp.where(d > 0, d, 1.0), jnp.inf)
    t = jnp.clip(jnp.min(ratios), 0.0, 1.0)
    return jnp.where(t < 1.0, t * (1.0 - 1e-12), 1.0) * z


def solve_reduced(lam, x, qp: ReducedQP, *, steps: int, project: bool):
    """Refine ``lam``, recover the primal and optionally project it; returns a QPSolution.

    With the projection, two primal candidates are projected, the Lagrangian minimizer at the
    final dual and (after ADMM) ADMM's own iterate, and the better one is kept: both are
    exactly feasible, and which is closer to optimal depends on how far ADMM has converged.
    """
    f0, c, b = _terms(x, qp)

    def value(z):
        return f0 + c @ z + 0.5 * z @ (qp.H @ z)

    candidates = []
    if steps > 0:
        lam, z_admm = admm_refine(lam, x, qp, steps)
        candidates.append(z_admm)
    candidates.append(-qp.H_inv @ (c + qp.B.T @ lam))
    if project:
        candidates = [_ratio_project(z, b, qp.B) for z in candidates]
        values = jnp.stack([value(z) for z in candidates])
        z = jnp.stack(candidates)[jnp.argmin(values)]
    else:
        z = candidates[0]
    return QPSolution(qp.P @ x + qp.N @ z, lam, value(z), dual_function(lam, x, qp))


@dataclass(frozen=True, kw_only=True)
class DualQPConfig:
    """Settings of a :class:`DualQPSolver`.

    Attributes:
        network: The dual network's :class:`ParametricSolverConfig`.
        refine_steps: ADMM iterations after the network (>= 0; 0 = network alone).
        rho: ADMM penalty (> 0); ``None`` picks ``tr(H) / tr(B'B)`` (see ``reduce_qp``).
        project: Apply the exact ratio-test projection toward ``y0(x)``.
    """

    network: ParametricSolverConfig = field(default_factory=ParametricSolverConfig)
    refine_steps: int = 20
    rho: float | None = None
    project: bool = True

    def __post_init__(self) -> None:
        _check(
            isinstance(self.network, ParametricSolverConfig),
            "network",
            self.network,
            "a ParametricSolverConfig",
        )
        _check(
            _is_int(self.refine_steps) and self.refine_steps >= 0,
            "refine_steps",
            self.refine_steps,
            "an int >= 0",
        )
        rho = self.rho
        ok = rho is None or (isinstance(rho, (int, float)) and rho > 0)
        _check(ok, "rho", rho, "a float > 0 or None")
        _check(isinstance(self.project, bool), "project", self.project, "a bool")

    def replace(self, **changes) -> DualQPConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


class QPSolution(NamedTuple):
    """Batched answer of :meth:`DualQPSolver.solve`.

    Attributes:
        y: Primal solutions, ``(N, n)``.
        dual: Dual multipliers of ``G y <= h`` (all ``>= 0``), ``(N, m_in)``.
        objective: ``1/2 y'Qy + p'y`` at ``y``, ``(N,)``.
        bound: Certified lower bound ``g(dual) <= f*``, ``(N,)``; when ``y`` is feasible,
            ``objective - bound >= f(y) - f*`` bounds the suboptimality.
    """

    y: jax.Array
    dual: jax.Array
    objective: jax.Array
    bound: jax.Array


def _neg_dual(lam, x, qp):
    return -dual_function(lam, x, qp)


def _softplus_decoder(out, x, qp):
    return jax.nn.softplus(out)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "project"))
def _solve_batch(params, X, qp, *, graphdef, steps, project):
    def one(x):
        lam = jax.nn.softplus(nnx.merge(graphdef, params)(x))
        return solve_reduced(lam, x, qp, steps=steps, project=project)

    return jax.vmap(one)(X)


class DualQPSolver:
    """Amortized QP solver: network -> dual -> ADMM -> primal -> exact projection, with bound.

    See the module docstring for the method. ``fit`` needs only parameter samples ``X``.

    Args:
        Q, p, A, G, h: Fixed data of ``min 1/2 y'Qy + p'y s.t. A y = x, G y <= h``.
        config: A :class:`DualQPConfig`; defaults if ``None``.

    Example:
        >>> import numpy as np
        >>> from opifex.optimization.l2o.parametric_solver import (
        ...     DualQPConfig, DualQPSolver, ParametricSolverConfig)
        >>> rng = np.random.default_rng(0)
        >>> n, m = 6, 2
        >>> A, G = rng.normal(size=(m, n)), rng.normal(size=(4, n))
        >>> h = np.abs(G @ np.linalg.pinv(A)).sum(1)
        >>> cfg = DualQPConfig(network=ParametricSolverConfig(hidden_sizes=(16,)), refine_steps=5)
        >>> solver = DualQPSolver(np.eye(n), np.ones(n), A, G, h, config=cfg)
        >>> sol = solver.solve(rng.uniform(-1, 1, (3, m)))  # untrained: still feasible, bounded
        >>> y = np.asarray(sol.y)
        >>> bool(np.all(np.asarray(sol.objective) >= np.asarray(sol.bound) - 1e-6))
        True
        >>> bool(np.all(y @ G.T <= h + 1e-6))
        True
    """

    def __init__(self, Q, p, A, G, h, *, config: DualQPConfig | None = None):
        self.config = DualQPConfig() if config is None else config
        self.qp = reduce_qp(Q, p, A, G, h, rho=self.config.rho)
        self._data = (Q, p, A, G, h)
        m_eq, m_in = np.shape(A)[0], np.shape(G)[0]
        self.network = ParametricSolver(
            _neg_dual,
            num_params=m_eq,
            num_outputs=m_in,
            config=self.config.network,
            data=self.qp,
            decoder=_softplus_decoder,
        )
        self._static = {
            "graphdef": self.network.graphdef,
            "steps": self.config.refine_steps,
            "project": self.config.project,
        }

    @property
    def num_params(self) -> int:
        """Size of ``x`` (number of equality constraints)."""
        return self.network.num_params

    def fit(self, X_train, *, callback=None, progress=None) -> TrainingHistory:
        """Train the dual network by maximizing the mean dual function over ``X_train``."""
        return self.network.fit(X_train, callback=callback, progress=progress)

    def solve(self, X) -> QPSolution:
        """Solve a batch ``(N, m_eq)`` (or one ``x``, giving unbatched fields).

        Raises:
            ValueError: If ``x`` has the wrong size (both sizes are named).
        """
        Xb, single = self.network._check_x(X)
        sol = _solve_batch(self.network.params, Xb, self.qp, **self._static)
        return jax.tree.map(lambda a: a[0], sol) if single else sol

    def solve_fn(self):
        """The pure batched pipeline ``(params, X, qp) -> QPSolution``; call with
        ``(solver.network.params, X, solver.qp)``."""
        return functools.partial(_solve_batch, **self._static)
