"""Residuals of the system-identification losses and the initial-state estimate.

Each residual is a pure ``(theta, args) -> r`` over a batch of ``B`` equal-length records:
``args = {"y": (B, T, ny), "u": (B, T, nu), "w": (ny,), ...}`` carries the data (``w`` the
per-channel weights, the inverse standard deviations of ``y``), ``theta = {"model": params,
...}`` the unknowns. The model description is static structure, not data. Residuals are
returned jitted: a Levenberg-Marquardt solve traces its residual four times (value and
Jacobian, at the start and in the step), and an inner ``jit`` traces the model once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from opifex.optimization.control._sysid_base import Model
from opifex.optimization.core import solve
from opifex.optimization.second_order import LevenbergMarquardtConfig
from opifex.optimization.second_order.wrappers import create_levenberg_marquardt_solver


def rollout(model: Model, params, x0, inputs):
    """Free-run states ``(x_0, ..., x_{T-1})`` from ``x0`` under ``inputs`` (T, nu), and the
    state ``x_T`` after the last input."""

    def step(x, u):
        return model.dynamics(x, u, params), x

    x_last, states = jax.lax.scan(step, x0, inputs)
    return states, x_last


def outputs_of(model: Model, params, states):
    """``h(x)`` over any leading axes of ``states``."""
    flat = states.reshape(-1, model.state_dim)
    ys = jax.vmap(lambda x: model.output(x, params))(flat)
    return ys.reshape((*states.shape[:-1], model.output_dim))


def simulation_residual(model: Model, estimate_x0: bool):
    """Free-run (output-error) residual ``w * (h(x_k) - y_k)`` from ``x_0 = theta["x0"]``
    (``estimate_x0``) or ``args["x0"]``."""

    def residual(theta, args):
        params = theta["model"]
        x0 = theta["x0"] if estimate_x0 else args["x0"]
        states, _ = jax.vmap(rollout, in_axes=(None, None, 0, 0))(model, params, x0, args["u"])
        return ((outputs_of(model, params, states) - args["y"]) * args["w"]).ravel()

    return jax.jit(residual)


def one_step_residual(model: Model):
    """Equation-error residual ``w * (f(x_k, u_k) - x_{k+1})`` for a measured state."""

    def residual(theta, args):
        params = theta["model"]
        x, u = args["y"][:, :-1], args["u"][:, :-1]
        pred = jax.vmap(jax.vmap(lambda x, u: model.dynamics(x, u, params)))(x, u)
        return ((pred - args["y"][:, 1:]) * args["w"]).ravel()

    return jax.jit(residual)


def shooting_segments(num_samples: int, horizon: int) -> int:
    """Number of whole shooting segments of ``horizon`` steps in ``num_samples`` samples."""
    return (num_samples - 1) // horizon


def multiple_shooting_residual(model: Model, horizon: int, continuity_weight: float):
    """Multiple-shooting residual (Bock & Plitt 1984; Ribeiro et al., "On the smoothness of
    nonlinear system identification", Automatica 2020).

    Segment ``s`` starts from its own free state ``theta["x0"][:, s]`` at sample ``s *
    horizon`` and runs ``horizon`` steps; the residual stacks the output errors of every
    segment and ``continuity_weight * (x_end_s - x0_{s+1})``, the defects that vanish on a
    single continuous trajectory. Samples after the last whole segment are not used.
    """

    def residual(theta, args):
        params = theta["model"]
        x0 = theta["x0"]
        b, s = x0.shape[:2]
        n = s * horizon
        u = args["u"][:, :n].reshape(b, s, horizon, model.input_dim)
        y = args["y"][:, : n + 1]
        sim = jax.vmap(jax.vmap(rollout, in_axes=(None, None, 0, 0)), in_axes=(None, None, 0, 0))
        states, x_end = sim(model, params, x0, u)
        ys = outputs_of(model, params, states).reshape(b, n, model.output_dim)
        y_last = outputs_of(model, params, x_end[:, -1])
        out_err = jnp.concatenate([ys, y_last[:, None]], axis=1) - y
        defects = continuity_weight * (x_end[:, :-1] - x0[:, 1:])
        return jnp.concatenate([(out_err * args["w"]).ravel(), defects.ravel()])

    return jax.jit(residual)


def initial_state_residual(model: Model):
    """Output error of the first ``n`` samples as a function of the initial state only."""

    def residual(x0, args):
        states, _ = rollout(model, args["params"], x0, args["u"])
        return ((outputs_of(model, args["params"], states) - args["y"]) * args["w"]).ravel()

    return jax.jit(residual)


def initial_state_solver(model: Model, max_iterations: int):
    """Levenberg-Marquardt solver of :func:`initial_state_residual`."""
    config = LevenbergMarquardtConfig(max_iterations=max_iterations)
    return create_levenberg_marquardt_solver(initial_state_residual(model), config)


def estimate_initial_state(solver, model: Model, params, outputs, inputs, weights):
    """Least-squares initial state from the first measured ``outputs`` (n, ny) and the
    ``inputs`` (n, nu) over the same samples, by ``solver`` (from :func:`initial_state_solver`)
    started at the model's guess."""
    guess = model.initial_state(outputs[0], params)
    args = {"params": params, "y": outputs, "u": inputs, "w": weights}
    return solve(solver, guess, args).params
