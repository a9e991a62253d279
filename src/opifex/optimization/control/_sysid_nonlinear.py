"""Nonlinear model families: grey box (physics + neural residual), neural state space,
Hamiltonian (energy-conserving) structure."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from opifex.optimization.control._sysid_base import (
    Model,
    apply_mlp,
    check_dim,
    check_hidden,
    check_positive,
    make_mlp,
    rk4_step,
)


def _check_substeps(substeps) -> int:
    return check_dim("substeps", substeps)


class GreyBox(Model):
    """Known structure ``f(x, u; p)`` with an optional neural residual.

    The model is ``dx/dt = f(x, u; p) + N([x, u])`` (``continuous=True``, integrated by RK4
    with ``substeps`` steps per sample) or ``x_{k+1} = f(x, u; p) + N([x, u])``. ``N`` is a
    Flax NNX tanh MLP with hidden widths ``residual_hidden`` whose last layer starts at zero,
    so fitting starts from the pure physics. The parameters are ``p`` itself without a
    residual, else ``{"physics": p, "residual": nnx.State}``.

    Args:
        physics_fn: ``(x, u, p) -> dx/dt`` or ``x_next``, pure and jittable.
        params: Initial physics parameters ``p`` (any pytree of floats).
        state_dim: ``nx``.
        input_dim: ``nu``.
        dt: Sample time.
        continuous: Whether ``physics_fn`` is a vector field.
        substeps: RK4 steps per sample (continuous time only).
        output_fn: ``(x, params) -> y`` for a partly measured state (``None``: ``y = x``);
            it receives the whole parameter pytree.
        output_dim: ``ny`` (required with ``output_fn``).
        residual_hidden: Hidden widths of the neural residual, or ``None`` for none.
        initial_state_fn: ``(y0, params) -> x0`` guess used before estimating the initial
            state (``None``: ``y0`` zero-padded).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> decay = lambda x, u, p: -p["k"] * x + u
        >>> m = GreyBox(decay, {"k": 1.0}, state_dim=1, input_dim=1, dt=0.1)
        >>> p = m.init_params(jax.random.key(0))
        >>> round(float(m.dynamics(jnp.ones(1), jnp.zeros(1), p)[0]), 6)  # exp(-0.1)
        0.904837
    """

    def __init__(
        self,
        physics_fn: Callable,
        params,
        *,
        state_dim: int,
        input_dim: int,
        dt=1.0,
        continuous: bool = True,
        substeps: int = 1,
        output_fn: Callable | None = None,
        output_dim: int | None = None,
        residual_hidden=None,
        initial_state_fn: Callable | None = None,
    ) -> None:
        if not callable(physics_fn):
            raise TypeError(f"physics_fn must be callable (x, u, params), got {physics_fn!r}.")
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"output_fn must be callable (x, params), got {output_fn!r}.")
        if (output_fn is None) != (output_dim is None):
            raise ValueError(
                "output_fn and output_dim go together: give both for a partly measured state, "
                f"or neither for y = x; got output_fn={output_fn!r}, output_dim={output_dim!r}."
            )
        self.physics_fn = physics_fn
        self.physics_params = jax.tree.map(jnp.asarray, params)
        self.state_dim = check_dim("state_dim", state_dim)
        self.input_dim = check_dim("input_dim", input_dim)
        self.output_dim = state_dim if output_dim is None else check_dim("output_dim", output_dim)
        self.output_fn = output_fn
        self.dt = check_positive("dt", dt)
        self.continuous = bool(continuous)
        self.substeps = _check_substeps(substeps)
        self.residual_hidden = None if residual_hidden is None else check_hidden(residual_hidden)
        self.initial_state_fn = initial_state_fn
        if self.residual_hidden is not None:
            self._sizes = (state_dim + input_dim, *self.residual_hidden, state_dim)
            self._graphdef, _ = make_mlp(self._sizes, jax.random.key(0))

    @property
    def full_state(self) -> bool:
        return self.output_fn is None

    def init_params(self, key):
        if self.residual_hidden is None:
            return self.physics_params
        _, net = make_mlp(self._sizes, key, last_scale=0.0)
        return {"physics": self.physics_params, "residual": net}

    def _rhs(self, x, u, params):
        if self.residual_hidden is None:
            return self.physics_fn(x, u, params)
        correction = apply_mlp(self._graphdef, params["residual"], jnp.concatenate([x, u]))
        return self.physics_fn(x, u, params["physics"]) + correction

    def vector_field(self, x, u, params):
        return self._rhs(x, u, params)

    def dynamics(self, x, u, params):
        if self.continuous:
            return rk4_step(self._rhs, x, u, params, self.dt, self.substeps)
        return self._rhs(x, u, params)

    def output(self, x, params):
        return x if self.output_fn is None else self.output_fn(x, params)

    def initial_state(self, y0, params):
        if self.initial_state_fn is None:
            return super().initial_state(y0, params)
        return self.initial_state_fn(y0, params)


class NeuralStateSpace(Model):
    """Neural state space ``x_{k+1} = x_k + A x_k + B u_k + N([x_k, u_k])`` (discrete) or
    ``dx/dt = A x + B u + N([x, u])`` (continuous, RK4).

    ``N`` is a Flax NNX tanh MLP (hidden widths ``hidden``) whose last layer starts at 0.1
    of its default scale; ``A``, ``B`` (present where ``linear``) start at zero. The
    measured output is the first ``output_dim`` states (all by default). Params
    ``{"A", "B", "net"}``.

    Args:
        state_dim: ``nx``.
        input_dim: ``nu``.
        hidden: Hidden layer widths.
        dt: Sample time.
        continuous: Continuous time (RK4 over one sample).
        substeps: RK4 steps per sample.
        linear: Include the linear part.
        output_dim: Measured leading states (``None``: all).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = NeuralStateSpace(2, 1, hidden=(8,))
        >>> p = m.init_params(jax.random.key(0))
        >>> m.dynamics(jnp.ones(2), jnp.ones(1), p).shape
        (2,)
    """

    def __init__(
        self,
        state_dim: int,
        input_dim: int,
        *,
        hidden=(32,),
        dt=1.0,
        continuous: bool = False,
        substeps: int = 1,
        linear: bool = True,
        output_dim: int | None = None,
    ) -> None:
        self.state_dim = check_dim("state_dim", state_dim)
        self.input_dim = check_dim("input_dim", input_dim)
        self.hidden = check_hidden(hidden)
        self.dt = check_positive("dt", dt)
        self.continuous = bool(continuous)
        self.substeps = _check_substeps(substeps)
        self.linear = bool(linear)
        if output_dim is not None and not 1 <= output_dim <= state_dim:
            raise ValueError(f"output_dim must be in [1, state_dim={state_dim}], got {output_dim}.")
        self.output_dim = state_dim if output_dim is None else output_dim
        self._sizes = (state_dim + input_dim, *self.hidden, state_dim)
        self._graphdef, _ = make_mlp(self._sizes, jax.random.key(0))

    @property
    def full_state(self) -> bool:
        return self.output_dim == self.state_dim

    def init_params(self, key):
        _, net = make_mlp(self._sizes, key, last_scale=0.1)
        params = {"net": net}
        if self.linear:
            params["A"] = jnp.zeros((self.state_dim, self.state_dim))
            params["B"] = jnp.zeros((self.state_dim, self.input_dim))
        return params

    def _increment(self, x, u, params):
        out = apply_mlp(self._graphdef, params["net"], jnp.concatenate([x, u]))
        if self.linear:
            out = out + params["A"] @ x + params["B"] @ u
        return out

    def vector_field(self, x, u, params):
        return self._increment(x, u, params)

    def dynamics(self, x, u, params):
        if self.continuous:
            return rk4_step(self._increment, x, u, params, self.dt, self.substeps)
        return x + self._increment(x, u, params)

    def output(self, x, params):
        del params
        return x[: self.output_dim]


class HamiltonianModel(Model):
    """Port-Hamiltonian mechanical model with state ``x = [q, p]`` (``dof`` each).

    ``H(q, p) = sum(p^2 / (2 m)) + q'Kq / 2 + V(q)`` with masses ``m = exp(log_mass)``,
    stiffness ``K = L L'`` (positive semi-definite) and an optional Flax NNX MLP potential
    ``V``; ``dq/dt = dH/dp``, ``dp/dt = -dH/dq - D dH/dp + G u`` with ``D = diag(softplus(
    damping))`` >= 0 where ``dissipation`` and ``D = 0`` otherwise, so without input the
    energy ``H`` is conserved (or can only decrease). Integrated by RK4 (Greydanus et al.,
    "Hamiltonian neural networks", NeurIPS 2019; van der Schaft & Jeltsema, *Port-Hamiltonian
    Systems Theory*, 2014). Params ``{"log_mass", "L", "G"}`` plus ``"damping"`` and ``"net"``.

    Args:
        dof: Degrees of freedom (state dimension ``2 * dof``).
        input_dim: ``nu``.
        dt: Sample time.
        hidden: Hidden widths of the potential network, or ``None`` for a quadratic potential.
        dissipation: Learn a non-negative linear damping.
        substeps: RK4 steps per sample.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = HamiltonianModel(1, 1, dt=0.01, dissipation=False)
        >>> p = m.init_params(jax.random.key(0))
        >>> x = jnp.array([1.0, 0.0])
        >>> for _ in range(100):
        ...     x = m.dynamics(x, jnp.zeros(1), p)
        >>> round(float(m.energy(x, p) / m.energy(jnp.array([1.0, 0.0]), p)), 6)
        1.0
    """

    def __init__(
        self,
        dof: int,
        input_dim: int,
        *,
        dt=1.0,
        hidden=None,
        dissipation: bool = True,
        substeps: int = 1,
    ) -> None:
        self.dof = check_dim("dof", dof)
        self.state_dim = 2 * dof
        self.output_dim = 2 * dof
        self.input_dim = check_dim("input_dim", input_dim)
        self.dt = check_positive("dt", dt)
        self.hidden = None if hidden is None else check_hidden(hidden)
        self.dissipation = bool(dissipation)
        self.substeps = _check_substeps(substeps)
        self.continuous = True
        if self.hidden is not None:
            self._graphdef, _ = make_mlp((dof, *self.hidden, 1), jax.random.key(0))

    def init_params(self, key):
        kg, kn = jax.random.split(key)
        params = {
            "log_mass": jnp.zeros((self.dof,)),
            "L": jnp.eye(self.dof),
            "G": 0.1 * jax.random.normal(kg, (self.dof, self.input_dim)),
        }
        if self.dissipation:
            params["damping"] = jnp.full((self.dof,), -2.0)
        if self.hidden is not None:
            _, params["net"] = make_mlp((self.dof, *self.hidden, 1), kn, 0.1)
        return params

    def energy(self, x, params):
        """The Hamiltonian ``H(q, p)``."""
        q, p = x[: self.dof], x[self.dof :]
        low = jnp.tril(params["L"])
        h = 0.5 * jnp.sum(p**2 * jnp.exp(-params["log_mass"])) + 0.5 * jnp.sum((low.T @ q) ** 2)
        if self.hidden is not None:
            h = h + apply_mlp(self._graphdef, params["net"], q)[0]
        return h

    def vector_field(self, x, u, params):
        grad = jax.grad(self.energy)(x, params)
        dh_dq, dh_dp = grad[: self.dof], grad[self.dof :]
        dp = -dh_dq + params["G"] @ u
        if self.dissipation:
            dp = dp - jax.nn.softplus(params["damping"]) * dh_dp
        return jnp.concatenate([dh_dp, dp])
