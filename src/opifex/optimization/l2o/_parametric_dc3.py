"""DC3 (Donti, Rolnick & Kolter 2021) for the parametric QP, as a :class:`ParametricSolver`.

The network predicts the first ``k = n - m_eq`` entries ``z`` of ``y``; equality completion
solves the last ``m_eq`` from ``A y = x``; inequality correction takes momentum gradient steps
on ``1/2 ||relu(G y - h)||^2`` in ``z`` through the completion, so ``A y = x`` keeps holding;
training minimizes the soft loss ``f(y) + w ||violations||^2`` through both layers.

The maths is that of :func:`opifex.optimization.l2o.constraint_learning.equality_completion`
and ``inequality_correction``, with the completion's fixed operators factored once per
problem instead of once per call: completion and every correction step become matrix
products, which makes DC3's training loop several times faster on a CPU (the LU solves of
the general layers, batched under ``vmap``, dominate otherwise).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.l2o._parametric_core import ParametricSolver, ParametricSolverConfig


class DC3Data(NamedTuple):
    """Factored data of DC3's layers (float64 arrays)."""

    Q: jax.Array  # (n, n)
    p: jax.Array  # (n,)
    A: jax.Array  # (m_eq, n)
    G: jax.Array  # (m_in, n)
    h: jax.Array  # (m_in,)
    from_x: jax.Array  # (m_eq, m_eq) B^-1, B = A[:, k:]: completed entries from x
    from_z: jax.Array  # (m_eq, k) -B^-1 A[:, :k]: completed entries from z
    G_eff: jax.Array  # (m_in, k) Jacobian of G y in z along the completion


def _complete(z, x, d: DC3Data):
    return jnp.concatenate([z, d.from_x @ x + d.from_z @ z])


def _correct(y, x, d: DC3Data, steps: int, step_size: float, momentum: float):
    k = d.G_eff.shape[1]

    def body(carry, _):
        z, velocity = carry
        grad = d.G_eff.T @ jax.nn.relu(d.G @ _complete(z, x, d) - d.h)
        velocity = step_size * grad + momentum * velocity
        return (z - velocity, velocity), None

    z = y[:k]
    (z, _), _ = jax.lax.scan(body, (z, jnp.zeros_like(z)), None, length=steps)
    return _complete(z, x, d)


def _objective(y, x, d: DC3Data):
    return 0.5 * y @ (d.Q @ y) + d.p @ y


def _violation(y, x, d: DC3Data):
    return jnp.concatenate([d.A @ y - x, jax.nn.relu(d.G @ y - d.h)])


def dc3_solver(
    Q,
    p,
    A,
    G,
    h,
    *,
    config: ParametricSolverConfig | None = None,
    correction_train_steps: int = 10,
    correction_test_steps: int = 10,
    correction_step_size: float | None = None,
    momentum: float = 0.5,
) -> ParametricSolver:
    """DC3 for ``min 1/2 y'Qy + p'y s.t. A y = x, G y <= h`` (Donti et al. 2021, Alg. 1).

    Args:
        Q, p, A, G, h: The fixed problem data (the last ``m_eq`` columns of ``A`` must form an
            invertible block, as in DC3).
        config: Network and training settings; DC3's QP runs use two hidden layers of 200,
            Adam 1e-4, batches of 200 and soft weight 10 split evenly (``penalty_weight=5``).
        correction_train_steps: Correction steps inside the training loss.
        correction_test_steps: Correction steps at solve time (>= the training ones).
        correction_step_size: Gradient step of the correction; ``None`` uses
            ``1 / ||G_eff||_2^2`` (stable for any data).
        momentum: Momentum of the correction.

    Returns:
        A :class:`ParametricSolver` whose ``solve`` returns completed, corrected ``y``.

    Raises:
        ValueError: On a singular completion block or inconsistent step counts.

    Example:
        >>> import numpy as np
        >>> from opifex.optimization.l2o.parametric_solver import (
        ...     ParametricSolverConfig, dc3_solver)
        >>> rng = np.random.default_rng(0)
        >>> A, G = rng.normal(size=(2, 5)), rng.normal(size=(3, 5))
        >>> h = np.abs(G @ np.linalg.pinv(A)).sum(1)
        >>> cfg = ParametricSolverConfig(hidden_sizes=(8,), train_steps=20)
        >>> solver = dc3_solver(np.eye(5), np.ones(5), A, G, h, config=cfg)
        >>> x = np.array([0.5, -0.2])
        >>> y = np.asarray(solver.solve(x))
        >>> bool(np.abs(A @ y - x).max() < 1e-5)
        True
    """
    Q, p, A, G, h = (np.asarray(a, np.float64) for a in (Q, p, A, G, h))
    m_eq, n = A.shape
    k = n - m_eq
    if not (0 <= correction_train_steps <= correction_test_steps):
        raise ValueError(
            "need 0 <= correction_train_steps <= correction_test_steps, got "
            f"{correction_train_steps} and {correction_test_steps}."
        )
    if np.linalg.cond(A[:, k:]) > 1e12:
        raise ValueError(
            f"the last {m_eq} columns of A must be invertible for DC3's completion, got "
            f"condition number {np.linalg.cond(A[:, k:]):.3g}; permute the variables."
        )
    from_x = np.linalg.inv(A[:, k:])
    from_z = -from_x @ A[:, :k]
    G_eff = G[:, :k] + G[:, k:] @ from_z
    if correction_step_size is None:
        correction_step_size = float(1.0 / np.linalg.norm(G_eff, 2) ** 2)
    data = DC3Data(*(jnp.asarray(a) for a in (Q, p, A, G, h, from_x, from_z, G_eff)))
    cfg = (
        ParametricSolverConfig(
            hidden_sizes=(200, 200), learning_rate=1e-4, batch_size=200, penalty_weight=5.0
        )
        if config is None
        else config
    )
    train, extra = correction_train_steps, correction_test_steps - correction_train_steps

    def decoder(z, x, d):
        return _correct(_complete(z, x, d), x, d, train, correction_step_size, momentum)

    def refine(y, x, d):
        return _correct(y, x, d, extra, correction_step_size, momentum)

    return ParametricSolver(
        _objective,
        num_params=m_eq,
        num_outputs=k,
        config=cfg,
        data=data,
        violation_fn=_violation,
        decoder=decoder,
        refine=refine if extra > 0 else None,
    )
