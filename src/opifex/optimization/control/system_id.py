"""System identification: fit a dynamics model to measured states or outputs and inputs.

Model families (descriptions holding structure; numbers live in a parameter pytree):
:class:`LinearStateSpace` and :class:`ARX` (closed-form least squares, ARX optionally
polynomial), :class:`StableLinear` (Schur-stable by construction), :class:`NeuralStateSpace`
(Flax NNX), :class:`GreyBox` (known physics plus an optional neural residual) and
:class:`HamiltonianModel` (energy-conserving structure). Continuous-time models integrate
with fixed-step RK4 over one sample. :class:`SystemIdentifier` fits any of them (or a plain
``dynamics(x, u, params)`` function) by one-step, simulation (output-error) or
multiple-shooting least squares with opifex's Levenberg-Marquardt solver or its hybrid
Adam -> L-BFGS optimizer, and returns a :class:`FittedModel` that a controller such as
:class:`~opifex.optimization.control.mpc.DifferentiableMPC` accepts as its system model::

    system_id = SystemIdentifier(model=dynamics_model)
    trained_model = system_id.fit(state_data, input_data)
    mpc = DifferentiableMPC(system_model=trained_model, config=mpc_config)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.control import _sysid_losses as losses
from opifex.optimization.control._sysid_base import Model
from opifex.optimization.control._sysid_fitted import FittedModel, check_data, fit_percent, rmse
from opifex.optimization.control._sysid_linear import ARX, LinearStateSpace, StableLinear
from opifex.optimization.control._sysid_nonlinear import GreyBox, HamiltonianModel, NeuralStateSpace
from opifex.optimization.core import solve
from opifex.optimization.second_order import (
    HybridOptimizer,
    HybridOptimizerConfig,
    LevenbergMarquardtConfig,
)
from opifex.optimization.second_order.wrappers import create_levenberg_marquardt_solver

_LOSSES = ("simulation", "one_step", "multiple_shooting")
_OPTIMIZERS = ("levenberg_marquardt", "hybrid")


def _fail(name, value, rule):
    raise ValueError(f"{name} must be {rule}, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class SystemIdConfig:
    """How :class:`SystemIdentifier` fits a model.

    Attributes:
        loss: ``"simulation"`` (free-run output error from the initial state),
            ``"one_step"`` (equation error; needs the measured state, or an ARX model) or
            ``"multiple_shooting"`` (segments of ``shooting_horizon`` steps, each from its own
            fitted state, tied by continuity defects).
        optimizer: ``"levenberg_marquardt"`` (on the stacked residuals) or ``"hybrid"``
            (Adam -> L-BFGS on half their mean square).
        max_iterations: Solver steps.
        shooting_horizon: Steps per multiple-shooting segment.
        continuity_weight: Weight of the multiple-shooting continuity defects.
        estimate_initial_state: Fit the initial state of each record under the simulation
            loss; ``None`` does so exactly when the model does not measure its whole state.
        normalize: Weight each output channel by the inverse of its standard deviation.
        seed: Seed of the neural parameters' initialisation.
        levenberg_marquardt: Tolerances and damping of the Levenberg-Marquardt solver (its
            ``max_iterations`` is superseded by this config's).
        hybrid: Configuration of the hybrid optimizer.
    """

    loss: str = "simulation"
    optimizer: str = "levenberg_marquardt"
    max_iterations: int = 100
    shooting_horizon: int = 10
    continuity_weight: float = 1.0
    estimate_initial_state: bool | None = None
    normalize: bool = True
    seed: int = 0
    levenberg_marquardt: LevenbergMarquardtConfig = field(default_factory=LevenbergMarquardtConfig)
    hybrid: HybridOptimizerConfig = field(default_factory=HybridOptimizerConfig)

    def __post_init__(self) -> None:
        if self.loss not in _LOSSES:
            _fail("loss", self.loss, f"one of {_LOSSES}")
        if self.optimizer not in _OPTIMIZERS:
            _fail("optimizer", self.optimizer, f"one of {_OPTIMIZERS}")
        for name in ("max_iterations", "shooting_horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, value, "an int >= 1")
        w = self.continuity_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < np.inf:
            _fail("continuity_weight", w, "a finite float > 0")
        if self.estimate_initial_state not in (None, True, False):
            _fail("estimate_initial_state", self.estimate_initial_state, "None or a bool")
        if not isinstance(self.normalize, bool):
            _fail("normalize", self.normalize, "a bool")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            _fail("seed", self.seed, "an int >= 0")
        if not isinstance(self.levenberg_marquardt, LevenbergMarquardtConfig):
            _fail("levenberg_marquardt", self.levenberg_marquardt, "a LevenbergMarquardtConfig")
        if not isinstance(self.hybrid, HybridOptimizerConfig):
            _fail("hybrid", self.hybrid, "a HybridOptimizerConfig")


class SystemIdentifier:
    """Fit a dynamics model to records of states (or outputs) and inputs.

    The data convention: ``state_data[k]`` is the state (or measured output) at sample ``k``
    and ``input_data[k]`` the input applied from sample ``k`` to ``k + 1``; both have shape
    ``(T, n)`` (or ``(T,)`` for one channel, or ``(batch, T, n)`` for several records of
    equal length fitted together). Where the model has a closed-form least-squares fit
    (:class:`LinearStateSpace` with measured state, :class:`ARX`) it gives the one-step answer
    and the starting point of the other losses. Otherwise the chosen loss is minimised by
    Levenberg-Marquardt (``solve(create_levenberg_marquardt_solver(r), theta, args)``, the
    unknowns ``theta`` being the model parameters plus, for the simulation loss with an
    unmeasured state and for multiple shooting, the initial states) or by the hybrid
    Adam -> L-BFGS optimizer on ``0.5 * mean(r^2)``. Data are checked before anything is
    compiled; one compilation serves every fit of the same shapes.

    Args:
        model: A model description (:class:`LinearStateSpace`, :class:`StableLinear`,
            :class:`ARX`, :class:`NeuralStateSpace`, :class:`GreyBox`,
            :class:`HamiltonianModel`) or a plain discrete-time ``dynamics(x, u, params)``
            function of a measured state (initial params then go to :meth:`fit`).
        config: A :class:`SystemIdConfig`; keyword ``overrides`` replace its fields
            (``SystemIdentifier(model=m, loss="one_step")``).

    Raises:
        TypeError: ``model`` is neither a model description nor callable, or ``config`` is
            not a :class:`SystemIdConfig`.
        ValueError: Invalid config fields.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a, b = np.array([[0.9, 0.1], [0.0, 0.8]]), np.array([[0.0], [1.0]])
        >>> u = rng.normal(size=(50, 1)); x = np.zeros((50, 2))
        >>> for k in range(49):
        ...     x[k + 1] = a @ x[k] + b @ u[k]
        >>> fitted = SystemIdentifier(model=LinearStateSpace(2, 1)).fit(x, u)
        >>> [[round(float(v), 4) + 0.0 for v in row] for row in fitted.params["A"]]
        [[0.9, 0.1], [0.0, 0.8]]
        >>> round(float(fit_percent(x, fitted.simulate(x[0], u))), 3)
        100.0
    """

    def __init__(self, model, config: SystemIdConfig | None = None, **overrides) -> None:
        if not isinstance(model, Model) and not callable(model):
            raise TypeError(
                "model must be a model description (LinearStateSpace, ARX, GreyBox, ...) or a "
                f"function dynamics(x, u, params), got {type(model).__name__}."
            )
        if config is None:
            config = SystemIdConfig()
        if not isinstance(config, SystemIdConfig):
            raise TypeError(f"config must be a SystemIdConfig, got {type(config).__name__}.")
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.model = model
        self._function_models: dict = {}
        self._solvers: dict = {}

    def _describe(self, state_data, input_data) -> Model:
        if isinstance(self.model, Model):
            return self.model
        y, u = np.shape(state_data), np.shape(input_data)
        nx = 1 if len(y) == 1 else y[-1]
        nu = 1 if len(u) == 1 else u[-1]
        key = (nx, nu)
        if key not in self._function_models:
            self._function_models[key] = _FunctionModel(self.model, nx, nu)
        return self._function_models[key]

    def _residual_and_solver(self, model: Model, kind: str):
        key = (model, kind)
        if key not in self._solvers:
            cfg = self.config
            if kind == "one_step":
                residual = losses.one_step_residual(model)
            elif kind == "multiple_shooting":
                residual = losses.multiple_shooting_residual(
                    model, cfg.shooting_horizon, float(cfg.continuity_weight)
                )
            else:
                residual = losses.simulation_residual(model, kind == "simulation_x0")
            if cfg.optimizer == "levenberg_marquardt":
                lm = cfg.levenberg_marquardt.replace(max_iterations=cfg.max_iterations)
                solver = create_levenberg_marquardt_solver(residual, lm)
            else:
                solver = (HybridOptimizer(cfg.hybrid), _MeanSquare(residual))
            self._solvers[key] = solver
        return self._solvers[key]

    def fit(self, state_data, input_data, *, params=None) -> FittedModel:
        """Fit the model to one record (or a batch of equal-length records).

        Args:
            state_data: ``(T, ny)`` measured states or outputs (``(T,)`` for one channel,
                ``(batch, T, ny)`` for several records).
            input_data: ``(T, nu)`` inputs, aligned with ``state_data``.
            params: Initial parameters (default: the closed-form fit where there is one, else
                the model's initialisation); required for a plain dynamics function.

        Returns:
            A :class:`FittedModel`.

        Raises:
            ValueError: Bad data (NaN/inf, mismatched lengths, wrong channel counts, too
                short for the loss) or a loss the model cannot use.
            TypeError: A plain dynamics function without ``params``.
        """
        cfg = self.config
        model = self._describe(state_data, input_data)
        min_samples = cfg.shooting_horizon + 1 if cfg.loss == "multiple_shooting" else 2
        if isinstance(model, ARX):
            min_samples = max(min_samples, max(model.na, model.nb) + 1)
        y, u = check_data(model, state_data, input_data, min_samples=min_samples)
        if params is None and isinstance(model, _FunctionModel):
            raise TypeError(
                "a plain dynamics function has no default parameters; call "
                "fit(state_data, input_data, params=initial_params)."
            )
        one_step = cfg.loss == "one_step"
        if one_step and not model.full_state and not isinstance(model, ARX):
            raise ValueError(
                f"loss='one_step' needs the whole state measured, but {model!r} measures "
                f"{model.output_dim} output(s) of {model.state_dim} states; use "
                "loss='simulation' or 'multiple_shooting'."
            )
        dtype = jnp.result_type(float)
        std = y.reshape(-1, y.shape[2]).std(axis=0)
        weights = 1.0 / np.where(std > 0, std, 1.0) if cfg.normalize else np.ones(y.shape[2])
        args = {
            "y": jnp.asarray(y, dtype),
            "u": jnp.asarray(u, dtype),
            "w": jnp.asarray(weights, dtype),
        }
        initial = model.init_params(jax.random.key(cfg.seed))
        closed_form = None
        if params is None:
            closed_form = model.least_squares(y, u)
            params = initial if closed_form is None else closed_form
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        if one_step and closed_form is not None and model.exact_least_squares:
            return FittedModel(model, params, weights=args["w"])

        estimate_x0 = cfg.estimate_initial_state
        if estimate_x0 is None:
            estimate_x0 = not model.full_state
        theta = {"model": params}
        if cfg.loss == "multiple_shooting":
            kind = "multiple_shooting"
            starts = args["y"][:, :: cfg.shooting_horizon]
            starts = starts[:, : losses.shooting_segments(y.shape[1], cfg.shooting_horizon)]
            theta["x0"] = self._guess_states(model, params, starts)
        elif one_step:
            kind = "one_step"
        elif estimate_x0:
            kind = "simulation_x0"
            theta["x0"] = self._guess_states(model, params, args["y"][:, :1])[:, 0]
        else:
            if not model.full_state:
                raise ValueError(
                    f"estimate_initial_state=False needs the whole state measured, but {model!r}"
                    " does not measure it; leave estimate_initial_state=None."
                )
            kind = "simulation"
            args["x0"] = args["y"][:, 0]

        solver = self._residual_and_solver(model, kind)
        if cfg.optimizer == "levenberg_marquardt":
            sol = solve(solver, theta, args, max_steps=cfg.max_iterations, implicit_diff=False)
            theta, status, steps, value = sol.params, sol.status, sol.num_steps, sol.value
        else:
            optimizer, objective = solver
            res = optimizer.optimize(objective, theta, args, num_steps=cfg.max_iterations)
            theta, status, steps, value = res.params, res.status, res.num_steps, res.value
        if kind == "multiple_shooting":
            x0 = theta["x0"][:, 0]
        elif kind == "simulation_x0":
            x0 = theta["x0"]
        else:
            x0 = args.get("x0")
        return FittedModel(
            model,
            theta["model"],
            initial_states=x0,
            status=int(status),
            num_steps=int(steps),
            loss=float(value),
            weights=args["w"],
        )

    @staticmethod
    def _guess_states(model: Model, params, outputs):
        if model.full_state:
            return outputs
        guess = jax.vmap(jax.vmap(lambda y: model.initial_state(y, params)))
        return guess(outputs)

    def __repr__(self) -> str:
        return f"SystemIdentifier(model={self.model!r}, config={self.config!r})"


class _MeanSquare:
    """``0.5 * mean(r^2)`` of a residual, hashable by identity (a static jit argument)."""

    def __init__(self, residual: Callable) -> None:
        self.residual = residual

    def __call__(self, theta, args):
        r = self.residual(theta, args)
        return 0.5 * jnp.mean(r**2)


class _FunctionModel(GreyBox):
    """A plain discrete-time ``dynamics(x, u, params)`` of a measured state."""

    def __init__(self, fn: Callable, state_dim: int, input_dim: int) -> None:
        super().__init__(fn, (), state_dim=state_dim, input_dim=input_dim, continuous=False)

    def __repr__(self) -> str:
        name = getattr(self.physics_fn, "__name__", type(self.physics_fn).__name__)
        return f"dynamics function {name}(x, u, params)"


__all__ = [
    "ARX",
    "FittedModel",
    "GreyBox",
    "HamiltonianModel",
    "LinearStateSpace",
    "NeuralStateSpace",
    "StableLinear",
    "SystemIdConfig",
    "SystemIdentifier",
    "fit_percent",
    "rmse",
]
