"""Linear model families: state space (least squares), Schur-stable state space, (N)ARX."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from opifex.optimization.control._sysid_base import Model, check_dim, check_positive


def _lstsq(phi: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(phi, target, rcond=None)[0]


class LinearStateSpace(Model):
    """Discrete-time linear model ``x_{k+1} = A x_k + B u_k``, ``y_k = C x_k``.

    With ``output_dim=None`` the state is measured (``y = x``, params ``{"A", "B"}``) and
    :meth:`least_squares` gives the exact one-step fit ``[A B] = argmin sum ||x_{k+1} - A
    x_k - B u_k||^2``; otherwise ``C`` is a parameter too and the fit is iterative.

    Args:
        state_dim: ``nx``.
        input_dim: ``nu``.
        output_dim: ``ny`` of ``y = C x``, or ``None`` for ``y = x``.
        dt: Sample time (reported to controllers; the model is discrete).

    Example:
        >>> import jax
        >>> m = LinearStateSpace(2, 1)
        >>> p = m.init_params(jax.random.key(0))
        >>> sorted(p), m.dynamics(jax.numpy.ones(2), jax.numpy.ones(1), p).shape
        (['A', 'B'], (2,))
    """

    exact_least_squares = True

    def __init__(self, state_dim: int, input_dim: int, output_dim: int | None = None, dt=1.0):
        self.state_dim = check_dim("state_dim", state_dim)
        self.input_dim = check_dim("input_dim", input_dim)
        self.measured = output_dim is None
        self.output_dim = state_dim if output_dim is None else check_dim("output_dim", output_dim)
        self.dt = check_positive("dt", dt)

    @property
    def full_state(self) -> bool:
        return self.measured

    def init_params(self, key):
        ka, kb, kc = jax.random.split(key, 3)
        nx, nu = self.state_dim, self.input_dim
        params = {
            "A": 0.5 * jnp.eye(nx) + 0.05 * jax.random.normal(ka, (nx, nx)),
            "B": 0.1 * jax.random.normal(kb, (nx, nu)),
        }
        if not self.measured:
            params["C"] = jax.random.normal(kc, (self.output_dim, nx)) / np.sqrt(nx)
        return params

    def matrices(self, params):
        """``(A, B)``."""
        return params["A"], params["B"]

    def dynamics(self, x, u, params):
        a, b = self.matrices(params)
        return a @ x + b @ u

    def output(self, x, params):
        return x if self.measured else params["C"] @ x

    def least_squares(self, outputs, inputs):
        if not self.measured:
            return None
        x0 = np.asarray(outputs[:, :-1]).reshape(-1, self.state_dim)
        u0 = np.asarray(inputs[:, :-1]).reshape(-1, self.input_dim)
        x1 = np.asarray(outputs[:, 1:]).reshape(-1, self.state_dim)
        theta = _lstsq(np.concatenate([x0, u0], axis=1), x1).T
        return {
            "A": jnp.asarray(theta[:, : self.state_dim]),
            "B": jnp.asarray(theta[:, self.state_dim :]),
        }


class StableLinear(LinearStateSpace):
    """Linear state space whose ``A`` is Schur stable (spectral radius < 1) by construction.

    ``A = T S T^{-1}`` with ``S = W / sqrt(1 + ||W||_2^2)``, so ``||S||_2 < 1`` and
    ``rho(A) = rho(S) < 1`` for every ``(T, W)`` with ``T`` invertible; conversely every
    Schur-stable ``A`` has this form (``T = P^{-1/2}`` for the Lyapunov solution ``P - A'PA = I``),
    which :meth:`least_squares` uses to start from the least-squares ``A`` (shrunk to radius
    0.99 if that is unstable). Params ``{"T", "W", "B"}`` (and ``"C"``).

    Example:
        >>> import jax, numpy as np
        >>> m = StableLinear(3, 1)
        >>> p = m.init_params(jax.random.key(0))
        >>> p["W"] = 100.0 * p["W"]
        >>> bool(np.max(np.abs(np.linalg.eigvals(np.asarray(m.matrices(p)[0])))) < 1.0)
        True
    """

    exact_least_squares = False

    def init_params(self, key):
        base = super().init_params(key)
        params = {"T": jnp.eye(self.state_dim), "W": base["A"], "B": base["B"]}
        if "C" in base:
            params["C"] = base["C"]
        return params

    def matrices(self, params):
        w = params["W"]
        s = w / jnp.sqrt(1.0 + jnp.linalg.norm(w, 2) ** 2)
        t = params["T"]
        return t @ jnp.linalg.solve(t.T, s.T).T, params["B"]

    def least_squares(self, outputs, inputs):
        fit = super().least_squares(outputs, inputs)
        if fit is None:
            return None
        a = np.asarray(fit["A"])
        radius = np.max(np.abs(np.linalg.eigvals(a)))
        if radius >= 0.99:
            a = a * (0.99 / radius)
        p = scipy.linalg.solve_discrete_lyapunov(a.T, np.eye(self.state_dim))
        evals, evecs = np.linalg.eigh(p)
        t = (evecs / np.sqrt(evals)) @ evecs.T
        s = np.linalg.solve(t, a @ t)
        w = s / np.sqrt(1.0 - np.linalg.norm(s, 2) ** 2)
        return {"T": jnp.asarray(t), "W": jnp.asarray(w), "B": fit["B"]}


class ARX(Model):
    """(N)ARX model ``y_{k+1} = theta' phi_k`` in state-space form.

    The regressor ``phi_k`` holds ``y_k .. y_{k-na+1}``, ``u_k .. u_{k-nb+1}``, with
    ``degree > 1`` all monomials of degrees ``2..degree`` of the ``nonlinear_lags`` most recent
    outputs (a polynomial NARX), and a constant where ``bias``. The state is
    ``x_k = [y_k .. y_{k-na+1}, u_{k-1} .. u_{k-nb+1}]`` and ``y_k = x_k[:ny]``. Params
    ``{"theta": (num_features, ny)}``; :meth:`least_squares` is the closed-form equation-error
    fit (Ljung, *System Identification*, 2nd ed., Sec. 4.2 and 7.3).

    Args:
        na: Output lags (>= 1).
        nb: Input lags (>= 1; ``u_k`` is always one of them).
        output_dim: ``ny``.
        input_dim: ``nu``.
        degree: Polynomial degree of the nonlinear terms (1: linear ARX).
        nonlinear_lags: Output lags entering the monomials (<= ``na``).
        bias: Include a constant regressor.
        dt: Sample time.

    Example:
        >>> import numpy as np
        >>> u = np.sin(np.arange(50.0))[None, :, None]
        >>> y = np.zeros_like(u)
        >>> for k in range(49):
        ...     y[0, k + 1] = 0.5 * y[0, k] + 2.0 * u[0, k]
        >>> ARX(1, 1).least_squares(y, u)["theta"].ravel().round(6).tolist()
        [0.5, 2.0]
    """

    exact_least_squares = True

    def __init__(
        self,
        na: int,
        nb: int,
        *,
        output_dim: int = 1,
        input_dim: int = 1,
        degree: int = 1,
        nonlinear_lags: int = 1,
        bias: bool = False,
        dt=1.0,
    ) -> None:
        self.na = check_dim("na", na)
        self.nb = check_dim("nb", nb)
        self.output_dim = check_dim("output_dim", output_dim)
        self.input_dim = check_dim("input_dim", input_dim)
        self.degree = check_dim("degree", degree)
        self.nonlinear_lags = check_dim("nonlinear_lags", nonlinear_lags)
        if nonlinear_lags > na:
            raise ValueError(f"nonlinear_lags must be <= na={na}, got {nonlinear_lags}.")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {bias!r}.")
        self.bias = bias
        self.dt = check_positive("dt", dt)
        self.state_dim = na * output_dim + (nb - 1) * input_dim
        m = nonlinear_lags * output_dim
        self.monomials = tuple(
            combo
            for d in range(2, degree + 1)
            for combo in itertools.combinations_with_replacement(range(m), d)
        )
        self.num_features = na * output_dim + nb * input_dim + len(self.monomials) + int(bias)

    def features(self, x, u):
        """The regressor ``phi`` from the state ``x`` and the input ``u``."""
        ny_lags = self.na * self.output_dim
        y_past, u_past = x[:ny_lags], x[ny_lags:]
        parts = [y_past, u, u_past]
        if self.monomials:
            z = y_past[: self.nonlinear_lags * self.output_dim]
            parts.append(jnp.stack([jnp.prod(z[jnp.array(c)]) for c in self.monomials]))
        if self.bias:
            parts.append(jnp.ones((1,), x.dtype))
        return jnp.concatenate(parts)

    def init_params(self, key):
        del key
        return {"theta": jnp.zeros((self.num_features, self.output_dim))}

    def dynamics(self, x, u, params):
        ny_lags = self.na * self.output_dim
        y_next = self.features(x, u) @ params["theta"]
        y_hist = jnp.concatenate([y_next, x[: ny_lags - self.output_dim]])
        u_hist = jnp.concatenate([u, x[ny_lags:]])[: (self.nb - 1) * self.input_dim]
        return jnp.concatenate([y_hist, u_hist])

    def output(self, x, params):
        del params
        return x[: self.output_dim]

    @property
    def full_state(self) -> bool:
        return False

    def initial_state(self, y0, params):
        del params
        u_part = jnp.zeros(((self.nb - 1) * self.input_dim,), jnp.result_type(y0))
        return jnp.concatenate([jnp.tile(y0, self.na), u_part])

    def state_from_history(self, outputs, inputs):
        n = len(outputs)
        if n < max(self.na, self.nb):
            return None
        y = np.reshape(outputs, (n, self.output_dim))
        u = np.reshape(inputs, (n, self.input_dim))
        lags = [y[n - 1 - i] for i in range(self.na)] + [u[n - 1 - i] for i in range(1, self.nb)]
        return jnp.asarray(np.concatenate(lags))

    def least_squares(self, outputs, inputs):
        outputs, inputs = np.asarray(outputs), np.asarray(inputs)
        start = max(self.na, self.nb) - 1
        feats = jax.vmap(self.features)
        rows, targets = [], []
        for y, u in zip(outputs, inputs, strict=True):
            idx = np.arange(start, y.shape[0] - 1)
            lags = [y[idx - i] for i in range(self.na)] + [u[idx - i] for i in range(1, self.nb)]
            rows.append(np.asarray(feats(jnp.asarray(np.concatenate(lags, axis=1)), u[idx])))
            targets.append(y[idx + 1])
        theta = _lstsq(np.concatenate(rows), np.concatenate(targets))
        return {"theta": jnp.asarray(theta)}

    def __repr__(self) -> str:
        return (
            f"ARX(na={self.na}, nb={self.nb}, output_dim={self.output_dim}, "
            f"input_dim={self.input_dim}, degree={self.degree}, bias={self.bias})"
        )
