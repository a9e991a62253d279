"""The fitted model returned by system identification, data checks and fit metrics."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.control import _sysid_losses as losses
from opifex.optimization.control._sysid_base import Model
from opifex.optimization.core import Status


def _as_records(name: str, data) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a numeric array, got {type(data).__name__}: {exc}"
        ) from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (T,), (T, n) or (batch, T, n), got {np.shape(data)}."
        )
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name} contains {bad.shape[0]} NaN/inf value(s), the first at (batch, sample, "
            f"channel) {where}; drop or interpolate those samples first."
        )
    return arr


def check_data(model: Model, state_data, input_data, *, min_samples: int = 2):
    """Validated ``(y, u)`` as float arrays of shape ``(B, T, ny)`` and ``(B, T, nu)``.

    Raises:
        TypeError: Non-numeric data.
        ValueError: NaN/inf, mismatched batch or sample counts, wrong channel counts, too
            few samples.
    """
    y = _as_records("state_data", state_data)
    u = _as_records("input_data", input_data)
    if y.shape[:2] != u.shape[:2]:
        raise ValueError(
            "state_data and input_data must hold the same records and number of samples, got "
            f"(batch, samples) {y.shape[:2]} and {u.shape[:2]}; align them (input_data[k] is "
            "the input applied at sample k)."
        )
    if y.shape[2] != model.output_dim:
        what = "states" if model.full_state else "outputs"
        raise ValueError(
            f"state_data has {y.shape[2]} channel(s) but {model!r} measures {model.output_dim} "
            f"{what}; pass data of shape (T, {model.output_dim}) or change the model."
        )
    if u.shape[2] != model.input_dim:
        raise ValueError(
            f"input_data has {u.shape[2]} channel(s) but {model!r} has input_dim="
            f"{model.input_dim}; pass inputs of shape (T, {model.input_dim})."
        )
    if y.shape[1] < min_samples:
        raise ValueError(f"need at least {min_samples} samples per record, got {y.shape[1]}.")
    return y, u


def rmse(y_true, y_pred) -> jax.Array:
    """Root-mean-square error over all samples and channels.

    Example:
        >>> round(float(rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])), 6)  # sqrt(4 / 3)
        1.154701
    """
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred shapes differ: {y_true.shape} vs {y_pred.shape}.")
    return jnp.sqrt(jnp.mean((y_true - y_pred) ** 2))


def fit_percent(y_true, y_pred) -> jax.Array:
    """Normalised fit ``100 (1 - ||y - yhat|| / ||y - mean(y)||)`` (mean per channel over the
    sample axis 0; 100 is perfect, 0 is no better than the mean; Ljung's ``compare``).

    Example:
        >>> round(float(fit_percent([0.0, 1.0, 2.0], [0.0, 1.0, 3.0])), 4)  # 1 - 1/sqrt(2)
        29.2893
    """
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred shapes differ: {y_true.shape} vs {y_pred.shape}.")
    spread = jnp.linalg.norm(y_true - jnp.mean(y_true, axis=0))
    return 100.0 * (1.0 - jnp.linalg.norm(y_true - y_pred) / spread)


@functools.partial(jax.jit, static_argnums=0)
def _simulate(model, params, x0, inputs):
    states, _ = losses.rollout(model, params, x0, inputs)
    return states, losses.outputs_of(model, params, states)


class FittedModel:
    """A fitted discrete-time model: ``x_{k+1} = dynamics(x_k, u_k, params)``, ``y = output(x)``.

    Attributes:
        model: The model description.
        params: Fitted parameter pytree (jax arrays); differentiate through ``dynamics``
            w.r.t. it.
        dynamics: Pure, jittable ``(x (nx,), u (nu,), params) -> x_next`` (one sample; RK4
            over ``dt`` for continuous-time models).
        state_dim, input_dim, output_dim: ``nx``, ``nu``, ``ny``.
        dt: Sample time.
        initial_states: ``(B, nx)`` initial states of the training records (fitted or
            measured), or ``None`` (one-step fits).
        status: :class:`~opifex.optimization.core.Status` of the fit.
        num_steps: Solver steps taken (0 for a closed-form fit).
        loss: Final value of the fitting objective.
    """

    def __init__(
        self,
        model: Model,
        params,
        *,
        initial_states=None,
        status=Status.CONVERGED,
        num_steps: int = 0,
        loss: float = float("nan"),
        weights=None,
    ) -> None:
        self.model = model
        self.params = params
        self.dynamics = model.dynamics
        self.state_dim = model.state_dim
        self.input_dim = model.input_dim
        self.output_dim = model.output_dim
        self.dt = float(model.dt)
        self.initial_states = initial_states
        self.status = Status(int(status))
        self.num_steps = int(num_steps)
        self.loss = float(loss)
        self._weights = jnp.ones(model.output_dim) if weights is None else weights
        self._x0_solver = None

    def __call__(self, x, u):
        """``dynamics(x, u, params)``."""
        return self.dynamics(x, u, self.params)

    def output(self, x):
        """The measured output ``h(x)``."""
        return self.model.output(x, self.params)

    def simulate(self, x0, inputs) -> jax.Array:
        """States ``(x_0, ..., x_{T-1})`` (T, nx) from ``x0`` under ``inputs`` (T, nu); the
        last input only moves the state past the returned horizon."""
        x0 = jnp.asarray(x0, jnp.result_type(float))
        if x0.shape != (self.state_dim,):
            raise ValueError(f"x0 must have shape ({self.state_dim},), got {x0.shape}.")
        u = _as_records("inputs", inputs)[0]
        if u.shape[1] != self.input_dim:
            raise ValueError(
                f"inputs must have shape (T, {self.input_dim}), got {np.shape(inputs)}."
            )
        return _simulate(self.model, self.params, x0, jnp.asarray(u, x0.dtype))[0]

    def initial_state(self, initial_outputs, inputs) -> jax.Array:
        """Least-squares state at sample 0 from the first ``n`` measured outputs (n, ny) and
        the inputs over (at least) the same samples."""
        y, u = check_data(self.model, initial_outputs, inputs, min_samples=1)
        n = y.shape[1]
        if self._x0_solver is None:
            self._x0_solver = losses.initial_state_solver(self.model, max_iterations=100)
        dtype = jnp.result_type(float)
        return losses.estimate_initial_state(
            self._x0_solver,
            self.model,
            self.params,
            jnp.asarray(y[0], dtype),
            jnp.asarray(u[0, :n], dtype),
            self._weights,
        )

    def predict(self, inputs, *, x0=None, initial_outputs=None) -> jax.Array:
        """Free-run outputs (T, ny) under ``inputs`` (T, nu).

        Args:
            inputs: Inputs ``u_0 .. u_{T-1}``.
            x0: Initial state; or
            initial_outputs: The first ``n`` measured outputs ``y_0 .. y_{n-1}``, from which
                the initial state is estimated (:meth:`initial_state`). A model whose state is
                made of past outputs and inputs (:class:`ARX`, with ``n >= max(na, nb)``)
                reads its state at sample ``n - 1`` off the data instead, and returns the
                measured ``y_0 .. y_{n-2}`` before its simulation.

        Raises:
            ValueError: Neither or both of ``x0`` and ``initial_outputs``, or bad shapes.
        """
        if (x0 is None) == (initial_outputs is None):
            raise ValueError("give exactly one of x0 and initial_outputs to predict.")
        u = _as_records("inputs", inputs)[0]
        if x0 is None:
            n = np.shape(np.atleast_1d(initial_outputs))[0]
            if n > u.shape[0]:
                raise ValueError(f"initial_outputs has {n} samples but inputs only {u.shape[0]}.")
            history = self.model.state_from_history(np.asarray(initial_outputs), u[:n])
            if history is not None:
                seen = np.reshape(initial_outputs, (n, self.output_dim))[: n - 1]
                rest = self.output_trajectory(history, u[n - 1 :])
                return jnp.concatenate([jnp.asarray(seen, rest.dtype), rest])
            x0 = self.initial_state(initial_outputs, u[:n])
        return self.output_trajectory(x0, u)

    def output_trajectory(self, x0, inputs) -> jax.Array:
        """Outputs ``h(x_k)`` (T, ny) of :meth:`simulate`."""
        self.simulate(x0, inputs)  # validates shapes
        u = _as_records("inputs", inputs)[0]
        x0 = jnp.asarray(x0, jnp.result_type(float))
        return _simulate(self.model, self.params, x0, jnp.asarray(u, x0.dtype))[1]

    def score(self, outputs, inputs, **predict_kwargs) -> dict[str, float]:
        """``{"rmse", "fit_percent"}`` of :meth:`predict` against measured ``outputs``."""
        y, _ = check_data(self.model, outputs, inputs)
        pred = np.asarray(self.predict(inputs, **predict_kwargs))
        return {"rmse": float(rmse(y[0], pred)), "fit_percent": float(fit_percent(y[0], pred))}

    def __repr__(self) -> str:
        return (
            f"FittedModel({self.model!r}, status={self.status.name}, steps={self.num_steps}, "
            f"loss={self.loss:.4g})"
        )
