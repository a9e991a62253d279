"""Cart-pole swing-up, the model of acados' getting-started example, in JAX and in CasADi.

State ``x = (p, theta, v, omega)`` (cart position, pole angle with 0 upright, their rates),
input the force ``F`` with ``|F| <= 80``; ``M = 1``, ``m = 0.1``, ``l = 0.8``, ``g = 9.81``.
The optimal-control problem: ``N = 40`` steps of ``0.02 s`` (RK4), from ``x0 = (0, pi, 0, 0)``,
cost ``sum_t dt (x' Q x + F^2 r) + x_N' Q x_N`` with ``Q = diag(1e3, 1e3, 1e-2, 1e-2)`` and
``r = 1e-2``.

Reference: acados, ``examples/acados_python/getting_started/pendulum_model.py``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

M_CART, M_POLE, LENGTH, GRAVITY = 1.0, 0.1, 0.8, 9.81
DT, HORIZON, F_MAX = 0.02, 40, 80.0
Q_DIAG = np.array([1e3, 1e3, 1e-2, 1e-2])
R_INPUT = 1e-2
X0 = np.array([0.0, np.pi, 0.0, 0.0])


def _rhs(x, force, cos, sin, stack):
    p, theta, v, omega = x[0], x[1], x[2], x[3]
    del p
    c, s = cos(theta), sin(theta)
    den = M_CART + M_POLE - M_POLE * c * c
    dv = (-M_POLE * LENGTH * s * omega**2 + M_POLE * GRAVITY * c * s + force) / den
    domega = (-M_POLE * LENGTH * c * s * omega**2 + force * c + (M_CART + M_POLE) * GRAVITY * s) / (
        LENGTH * den
    )
    return stack([v, omega, dv, domega])


def dynamics_ct(x, u, params=None):
    """``dx/dt`` of the cart-pole (JAX)."""
    del params
    return _rhs(x, u[0], jnp.cos, jnp.sin, jnp.stack)


def mpc_config(**changes):
    """The benchmark's :class:`MPCConfig` (weights scaled by ``dt`` as in the cost above).

    Plain iLQR (``second_order=False``): on this problem the DDP second-order terms do not cut
    iterations (measured 62 against 55 from rest) and make each one dearer.
    """
    from opifex.optimization.control import MPCConfig

    settings = dict(
        horizon=HORIZON,
        state_weight=DT * Q_DIAG,
        input_weight=DT * R_INPUT,
        terminal_weight=Q_DIAG,
        input_lower=-F_MAX,
        input_upper=F_MAX,
        dt=DT,
        continuous_time=True,
        second_order=False,
    )
    settings.update(changes)
    return MPCConfig(**settings)


def stage_cost_np(x, u):
    """The running cost of one step, for closed-loop accounting on the host."""
    return DT * (float(np.sum(Q_DIAG * x**2)) + R_INPUT * float(np.sum(u**2)))


class CasadiCartPole:
    """The same problem for IPOPT: multiple shooting, RK4, ``x0`` a parameter."""

    def __init__(self, tol: float = 1e-10):
        import casadi as ca

        self.ca = ca
        x_sym, u_sym = ca.SX.sym("x", 4), ca.SX.sym("u", 1)
        rhs = _rhs(x_sym, u_sym[0], ca.cos, ca.sin, lambda v: ca.vertcat(*v))
        f = ca.Function("f", [x_sym, u_sym], [rhs])

        def rk4(x, u):
            k1 = f(x, u)
            k2 = f(x + DT / 2 * k1, u)
            k3 = f(x + DT / 2 * k2, u)
            k4 = f(x + DT * k3, u)
            return x + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

        xs = ca.SX.sym("X", 4, HORIZON + 1)
        us = ca.SX.sym("U", 1, HORIZON)
        x0 = ca.SX.sym("x0", 4)
        q = ca.DM(Q_DIAG)
        cost, gaps = 0, [xs[:, 0] - x0]
        for k in range(HORIZON):
            cost += DT * (ca.dot(q, xs[:, k] ** 2) + R_INPUT * us[0, k] ** 2)
            gaps.append(xs[:, k + 1] - rk4(xs[:, k], us[:, k]))
        cost += ca.dot(q, xs[:, HORIZON] ** 2)
        w = ca.vertcat(ca.vec(xs), ca.vec(us))
        opts = {"print_time": 0, "ipopt": {"print_level": 0, "tol": tol, "sb": "yes"}}
        self.solver = ca.nlpsol(
            "ipopt", "ipopt", {"x": w, "p": x0, "f": cost, "g": ca.vertcat(*gaps)}, opts
        )
        n_x = 4 * (HORIZON + 1)
        self.n_x = n_x
        self.lbw = np.concatenate([np.full(n_x, -np.inf), np.full(HORIZON, -F_MAX)])
        self.ubw = np.concatenate([np.full(n_x, np.inf), np.full(HORIZON, F_MAX)])

    def solve(self, x0, guess=None):
        """Return ``(cost, controls [N], states [N+1, 4], w)``; ``guess`` warm-starts."""
        w0 = np.zeros(self.n_x + HORIZON) if guess is None else guess
        if guess is None:
            w0[: self.n_x] = np.tile(np.asarray(x0), HORIZON + 1)
        out = self.solver(x0=w0, p=np.asarray(x0), lbx=self.lbw, ubx=self.ubw, lbg=0, ubg=0)
        w = np.asarray(out["x"]).ravel()
        states = w[: self.n_x].reshape(HORIZON + 1, 4)
        return float(out["f"]), w[self.n_x :], states, w

    @staticmethod
    def shift(w, n_x):
        """Warm start for the next step: states and controls moved one step ahead."""
        states = w[:n_x].reshape(-1, 4)
        controls = w[n_x:]
        states = np.concatenate([states[1:], states[-1:]])
        controls = np.concatenate([controls[1:], controls[-1:]])
        return np.concatenate([states.ravel(), controls])
