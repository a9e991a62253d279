"""Differentiable model predictive control.

:class:`DifferentiableMPC` is the front door: it validates the model, the configuration and
every call on the host, then runs the functional core, box-constrained iterative LQR
(:func:`~opifex.optimization.control._ilqr.box_ddp`) under one ``jit``. The solution is
differentiable with respect to the initial state, the reference, the cost weights and the
dynamics parameters by implicit differentiation of the optimality conditions at the solution
(:func:`~opifex.optimization.core.attach_implicit_grad`), never by unrolling the iterations;
controls at an active input bound have zero derivative. ``solve`` works under ``jax.grad``,
``jax.jit`` and ``jax.vmap`` (or use :meth:`DifferentiableMPC.solve_batch`).

State constraints ``g(x) <= 0`` (or a discrete-time control barrier function) are handled by
an augmented Lagrangian around the same DDP (:mod:`._mpc_constraints`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.control._ilqr import OCPArgs, box_ddp, rollout
from opifex.optimization.control._mpc_config import MPCConfig, weight_matrix
from opifex.optimization.control._mpc_constraints import augmented_lagrangian_ddp
from opifex.optimization.core import Status, solve

__all__ = ["DifferentiableMPC", "MPCConfig", "MPCSolution", "rk4"]


class MPCSolution(NamedTuple):
    """Result of one MPC solve (every field gains a leading axis in a batched solve).

    Attributes:
        control: First control ``u_0 [nu]``, the one to apply.
        controls: Optimal control sequence ``[N, nu]``.
        states: Predicted trajectory ``[N + 1, nx]``.
        cost: Optimal cost.
        iterations: DDP iterations (outer and inner together for state constraints).
        status: int32 :class:`~opifex.optimization.core.Status` code.
        constraint_violation: Largest state-constraint violation (0 without constraints).
    """

    control: jax.Array
    controls: jax.Array
    states: jax.Array
    cost: jax.Array
    iterations: jax.Array
    status: jax.Array
    constraint_violation: jax.Array

    @property
    def converged(self) -> bool | np.ndarray:
        """Whether the solve converged (an array for a batched solve)."""
        ok = np.asarray(self.status) == Status.CONVERGED
        return bool(ok) if ok.ndim == 0 else ok

    def shifted_controls(self) -> jax.Array:
        """The controls moved one step ahead (last one repeated): the next warm start."""
        return jnp.concatenate([self.controls[1:], self.controls[-1:]], axis=0)


def rk4(f: Callable, dt: float, steps: int = 1) -> Callable:
    """Discretise ``dx/dt = f(x, u, p)`` by ``steps`` classical Runge-Kutta steps over ``dt``.

    Example:
        >>> import jax.numpy as jnp
        >>> step = rk4(lambda x, u, p: -x, 0.1)
        >>> round(float(step(jnp.ones(1), None, None)[0]), 6)  # exp(-0.1) = 0.904837...
        0.904837
    """
    h = dt / steps

    def one(x, u, p):
        k1 = f(x, u, p)
        k2 = f(x + 0.5 * h * k1, u, p)
        k3 = f(x + 0.5 * h * k2, u, p)
        k4 = f(x + h * k3, u, p)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    def stepped(x, u, p):
        return (
            jax.lax.fori_loop(0, steps, lambda _, x: one(x, u, p), x) if steps > 1 else one(x, u, p)
        )

    return stepped


def _quadratic_stage(x, u, r, c):
    dx = x - r
    return dx @ c["Q"] @ dx + u @ c["R"] @ u


def _quadratic_derivatives(x, u, r, c):
    """Gradient and Hessian of :func:`_quadratic_stage` in ``z = (x, u)``, in closed form."""
    q, rr = c["Q"] + c["Q"].T, c["R"] + c["R"].T
    grad = jnp.concatenate([q @ (x - r), rr @ u])
    nx, nu = x.shape[0], u.shape[0]
    hess = jnp.block([[q, jnp.zeros((nx, nu), q.dtype)], [jnp.zeros((nu, nx), q.dtype), rr]])
    return grad, hess


def _quadratic_terminal(x, r, c):
    dx = x - r
    return dx @ c["Q_N"] @ dx


def _arity(fn: Callable) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional)


def _on_next_state(g: Callable) -> Callable:
    def constraint(x, x_next):
        del x
        return g(x_next)

    return constraint


def _resolve_model(system_model, model_params):
    """``(f(x, u, d), default d, state_dim, input_dim)`` from a fitted model or a function."""
    if hasattr(system_model, "dynamics") and hasattr(system_model, "params"):
        params = system_model.params if model_params is None else model_params
        return (
            system_model.dynamics,
            params,
            getattr(system_model, "state_dim", None),
            getattr(system_model, "input_dim", None),
        )
    if not callable(system_model):
        raise TypeError(
            "system_model must be a function f(x, u) / f(x, u, params) or a fitted model with "
            f"`.dynamics(x, u, params)` and `.params`, got {type(system_model).__name__}."
        )
    if _arity(system_model) == 2:
        if model_params is not None:
            raise ValueError("model_params given but system_model takes only (x, u).")
        return (lambda x, u, d: system_model(x, u)), None, None, None
    return system_model, model_params, None, None


class DifferentiableMPC:
    """Model predictive control by box-constrained iterative LQR, differentiable end to end.

    Args:
        system_model: The plant model: a JAX function ``f(x, u)`` or ``f(x, u, params)``
            (discrete time, or ``dx/dt`` with ``config.continuous_time``), or a fitted
            :class:`~opifex.optimization.control.system_id.SystemIdentifier` model (anything
            with ``.dynamics(x, u, params)`` and ``.params``).
        config: An :class:`MPCConfig` (defaults if ``None``).
        model_params: Parameters passed to ``f`` (a fitted model's own by default);
            gradients with respect to them flow through :meth:`solve`.
        stage_cost: Optional general cost ``l(x, u, r_t, cost_params)`` replacing the
            quadratic one; ``terminal_cost(x, r_N, cost_params)`` likewise.
        cost_params: Pytree passed to general costs (differentiable).
        state_constraints: Optional ``g(x) -> [nc]`` required ``<= 0`` at the predicted states
            ``x_1 .. x_N``, or ``g(x_t, x_next) -> [nc]`` over each step, e.g. the negated
            discrete-time barrier condition of
            :func:`~opifex.optimization.control.safety.discrete_cbf_constraint` (augmented
            Lagrangian; gradients by implicit differentiation of its KKT conditions).
        input_dim: Number of controls, when neither the model, the bounds nor ``R`` say it.

    Example:
        >>> import jax.numpy as jnp
        >>> A = jnp.array([[1.0, 0.1], [0.0, 1.0]]); B = jnp.array([[0.005], [0.1]])
        >>> mpc = DifferentiableMPC(
        ...     system_model=lambda x, u: A @ x + B @ u,
        ...     config=MPCConfig(horizon=20, input_lower=-1.0, input_upper=1.0),
        ...     input_dim=1,
        ... )
        >>> sol = mpc.solve(jnp.array([1.0, 0.0]), jnp.zeros(2))
        >>> sol.converged, bool(jnp.all(jnp.abs(sol.controls) <= 1.0))
        (True, True)
    """

    def __init__(
        self,
        system_model,
        config: MPCConfig | None = None,
        *,
        model_params: Any = None,
        stage_cost: Callable | None = None,
        terminal_cost: Callable | None = None,
        cost_params: Any = None,
        state_constraints: Callable | None = None,
        input_dim: int | None = None,
    ):
        self.config = config = MPCConfig() if config is None else config
        if not isinstance(config, MPCConfig):
            raise TypeError(f"config must be an MPCConfig, got {type(config).__name__}.")
        f, params, state_dim, model_inputs = _resolve_model(system_model, model_params)
        if config.continuous_time:
            f = rk4(f, config.dt, config.integration_steps)
        self.dynamics, self.model_params = f, params
        self.input_dim = input_dim or model_inputs or config.input_dim_hint()
        if self.input_dim is None:
            raise ValueError(
                "cannot tell the number of controls: give input_dim=..., per-input bounds, a "
                "matrix input_weight, or a model with an `input_dim` attribute."
            )
        self.state_dim = state_dim
        if (stage_cost is None) != (terminal_cost is None):
            raise ValueError("give both stage_cost and terminal_cost, or neither.")
        self._quadratic = stage_cost is None
        if self._quadratic:
            r = weight_matrix("input_weight", config.input_weight, self.input_dim)
            if np.linalg.eigvalsh(r).min() <= 0:
                raise ValueError(
                    "input_weight must be positive definite for the quadratic cost (the DDP "
                    f"subproblems need curvature in u), got {config.input_weight!r}."
                )
            stage_cost, terminal_cost = _quadratic_stage, _quadratic_terminal
        self.cost_params = cost_params
        self._lower, self._upper = config.bounds(self.input_dim)
        self._constrained = state_constraints is not None
        if self._constrained and _arity(state_constraints) == 1:
            state_constraints = _on_next_state(state_constraints)
        max_steps = config.real_time_iterations or config.max_iterations
        ddp = box_ddp(
            f,
            stage_cost,
            terminal_cost,
            max_iterations=max_steps,
            gtol=config.tolerance,
            ftol=config.cost_tolerance,
            second_order=config.second_order,
            cost_derivatives=_quadratic_derivatives if self._quadratic else None,
        )
        self._stage_cost, self._terminal_cost = stage_cost, terminal_cost
        if self._constrained:
            solver = augmented_lagrangian_ddp(
                f,
                stage_cost,
                terminal_cost,
                state_constraints,
                inner_iterations=max_steps,
                gtol=config.tolerance,
                ftol=config.cost_tolerance,
                second_order=config.second_order,
                penalty=config.penalty,
                penalty_growth=config.penalty_growth,
                constraint_tolerance=config.constraint_tolerance,
            )
            self._constraint_fn = state_constraints
            outer_steps = config.max_outer_iterations
        else:
            solver, outer_steps = ddp, max_steps
        self._core = jax.jit(functools.partial(self._solve_core, solver, outer_steps))
        self._previous: MPCSolution | None = None
        self._weights: dict = {}

    # -- functional core -------------------------------------------------------------------

    def _solve_core(
        self, solver, max_steps, x0, reference, model_params, cost_params, controls, shift
    ):
        # ``solver`` and ``max_steps`` are bound by functools.partial before jit, so they are
        # constants of the compiled function, not traced arguments.
        n = self.config.horizon
        shifted = jnp.concatenate([controls[1:], controls[-1:]], axis=0)
        controls = jnp.where(shift, shifted, controls)
        lower = jnp.broadcast_to(jnp.asarray(self._lower, x0.dtype), (n, self.input_dim))
        upper = jnp.broadcast_to(jnp.asarray(self._upper, x0.dtype), (n, self.input_dim))
        args = OCPArgs(x0, reference, model_params, cost_params, lower, upper)
        controls = jnp.clip(controls, lower, upper)
        violation = jnp.zeros((), x0.dtype)
        if self._constrained:
            nc = jax.eval_shape(self._constraint_fn, x0, x0).shape[0]
            sol = solve(solver, (controls, jnp.zeros((n, nc), x0.dtype)), args, max_steps=max_steps)
            controls, iterations = sol.params[0], sol.state.inner_iterations
        else:
            sol = solve(solver, controls, args, max_steps=max_steps)
            controls, iterations = sol.params, sol.num_steps
        # Recomputed outside the loop so they carry the implicit derivatives of the controls.
        states, cost = rollout(self.dynamics, self._stage_cost, self._terminal_cost, controls, args)
        if self._constrained:
            g = jax.vmap(self._constraint_fn)(states[:-1], states[1:])
            violation = jnp.max(jnp.maximum(g, 0.0))
        return MPCSolution(controls[0], controls, states, cost, iterations, sol.status, violation)

    # -- host-side front door ------------------------------------------------------------

    def _cost_params(self, x, cost_params):
        if not self._quadratic:
            return self.cost_params if cost_params is None else cost_params
        if cost_params is not None:
            return cost_params
        key = (x.shape[0], np.dtype(x.dtype))
        if key not in self._weights:
            self._weights[key] = self._weights_for(x.shape[0], x.dtype)
        return self._weights[key]

    def _weights_for(self, nx, dtype):
        c = self.config
        q = weight_matrix("state_weight", c.state_weight, nx)
        qn = (
            q
            if c.terminal_weight is None
            else weight_matrix("terminal_weight", c.terminal_weight, q.shape[0])
        )
        r = weight_matrix("input_weight", c.input_weight, self.input_dim)
        return {
            "Q": jnp.asarray(q, dtype),
            "R": jnp.asarray(r, dtype),
            "Q_N": jnp.asarray(qn, dtype),
        }

    def _check_state(self, x):
        if isinstance(x, jax.core.Tracer):
            shape, arr = x.shape, x
        else:
            # Host-side checks in numpy: no device round trip on the real-time path.
            arr = np.asarray(x)
            dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
            arr = arr.astype(jax.dtypes.canonicalize_dtype(dtype), copy=False)
            shape = arr.shape
        if len(shape) != 1:
            raise ValueError(f"current_state must be a 1-D state vector, got shape {shape}.")
        if self.state_dim is not None and shape[0] != self.state_dim:
            raise ValueError(
                f"current_state has dimension {shape[0]} but the model's state has "
                f"{self.state_dim}."
            )
        if not isinstance(arr, jax.core.Tracer) and not np.all(np.isfinite(arr)):
            raise ValueError(f"current_state contains NaN or Inf: {arr}.")
        return arr

    def _check_reference(self, reference, x):
        n, nx = self.config.horizon, x.shape[0]
        if reference is None:
            reference = np.zeros(nx)
        if isinstance(reference, jax.core.Tracer):
            ref = reference.astype(x.dtype)
        else:
            ref = np.asarray(reference, dtype=x.dtype)
            if not np.all(np.isfinite(ref)):
                raise ValueError("reference_trajectory contains NaN or Inf.")
        if ref.shape == (nx,):
            return (
                jnp.broadcast_to(ref, (n + 1, nx))
                if isinstance(ref, jax.Array)
                else (np.broadcast_to(ref, (n + 1, nx)))
            )
        if ref.shape != (n + 1, nx):
            raise ValueError(
                f"reference_trajectory must be one state ({nx},) or horizon + 1 = {n + 1} states "
                f"x_0..x_N of shape ({n + 1}, {nx}), got shape {ref.shape}."
            )
        return ref

    def _initial_controls(self, initial_controls, dtype):
        """``(controls, shift)``: the starting guess and whether the core shifts it."""
        n, nu = self.config.horizon, self.input_dim
        if initial_controls is not None:
            u = jnp.asarray(initial_controls, dtype)
            if u.shape != (n, nu):
                raise ValueError(
                    f"initial_controls must have shape (horizon, inputs) = ({n}, {nu}), got "
                    f"{u.shape}."
                )
            return u, False
        previous = self._previous
        if self.config.warm_start and previous is not None and previous.controls.dtype == dtype:
            return previous.controls, True
        return jnp.zeros((n, nu), dtype), False

    def solve(
        self,
        current_state,
        reference_trajectory=None,
        *,
        initial_controls=None,
        model_params: Any = None,
        cost_params: Any = None,
    ) -> MPCSolution:
        """Solve the MPC problem from ``current_state``.

        Args:
            current_state: ``x_0 [nx]``.
            reference_trajectory: One target state ``[nx]`` or ``[N + 1, nx]`` (zeros if
                ``None``); passed to general costs as ``r_t``.
            initial_controls: Starting guess ``[N, nu]``; by default the previous solution
                shifted by one step (``config.warm_start``), else zeros.
            model_params: Override the dynamics parameters (differentiable).
            cost_params: Override the cost parameters (for the quadratic cost a dict with
                ``Q``, ``R``, ``Q_N`` matrices; differentiable).

        Returns:
            An :class:`MPCSolution`; ``.control`` is the action to apply. A solve that does not
            converge returns the best control found (always within the input bounds) and a
            status saying why.

        Raises:
            ValueError: On a state or reference of the wrong shape, or NaN input, before any
                compilation.
        """
        x = self._check_state(current_state)
        ref = self._check_reference(reference_trajectory, x)
        u0, shift = self._initial_controls(initial_controls, x.dtype)
        params = self.model_params if model_params is None else model_params
        sol = self._core(x, ref, params, self._cost_params(x, cost_params), u0, shift)
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(sol)):
            self._previous = sol
        return sol

    def solve_batch(self, states, reference_trajectory=None) -> MPCSolution:
        """Solve from each row of ``states [B, nx]`` (vmapped; no warm start)."""
        states = jnp.asarray(states)
        if states.ndim != 2:
            raise ValueError(f"states must have shape (batch, nx), got {states.shape}.")
        ref = self._check_reference(reference_trajectory, self._check_state(states[0]))
        cost = self._cost_params(states[0], None)
        u0 = jnp.zeros((self.config.horizon, self.input_dim), states.dtype)
        batched = jax.vmap(self._core, in_axes=(0, None, None, None, None, None))
        return batched(states, ref, self.model_params, cost, u0, False)

    def reset(self) -> None:
        """Forget the warm start."""
        self._previous = None
