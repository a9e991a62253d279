"""Task families for meta-training learned optimizers: each a ``TaskFamily(sample, init, loss)``.

A task is a pytree of arrays (the data of one problem); ``loss(params, task)`` is a pure
function of both, so a batch of tasks is ``jax.vmap(family.sample)(keys)`` and one compiled
unroll serves every task of the family. The factories are cached by their arguments: equal
calls return the same family object, so compilations keyed on the family (``meta_train``'s
meta-step) are shared between them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class TaskFamily(NamedTuple):
    """A distribution over optimization problems of one shape.

    Attributes:
        sample: ``key -> task``, a pytree of arrays describing one problem (data, targets).
        init: ``(key, task) -> params``, the starting point of an optimizer on that task.
        loss: ``(params, task) -> scalar``, the objective to minimise.
        name: Short label used in benchmark reports.
    """

    sample: Callable[[jax.Array], Any]
    init: Callable[[jax.Array, Any], Any]
    loss: Callable[[Any, Any], jax.Array]
    name: str = "custom"


def _draw(key: jax.Array, *shapes: tuple[int, ...]) -> list[jax.Array]:
    """Standard normals of the given shapes from ONE random call.

    Each ``jax.random`` call compiles to its own Threefry hash, which dominates the compile
    time of small vmapped samplers on CPU; one call, then slicing, keeps it to one.
    """
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),))
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def _uniform(z: jax.Array) -> jax.Array:
    """Map a standard normal ``z`` to a uniform variate on ``(0, 1)`` (its CDF)."""
    return 0.5 * (1.0 + jax.scipy.special.erf(z / math.sqrt(2.0)))


def _log_uniform(z: jax.Array, low: float, high: float) -> jax.Array:
    """Map a standard normal ``z`` to a log-uniform variate on ``[low, high]``."""
    return jnp.exp(math.log(low) + _uniform(z) * (math.log(high) - math.log(low)))


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


@functools.cache
def quadratic_family(dim: int = 20, *, max_condition: float = 1000.0) -> TaskFamily:
    """Random ill-conditioned quadratics ``0.5 (x - x*)' A (x - x*)``.

    ``A = Q diag(lam) Q'`` with ``Q`` a random rotation and ``log lam`` uniform on
    ``[-log kappa, 0]``, where the task's condition number ``kappa`` is log-uniform on
    ``[10, max_condition]``; ``x* ~ N(0, I)``; the optimizer starts at ``x0 ~ N(0, I)``.
    The minimum value is 0.

    Args:
        dim: Number of variables.
        max_condition: Largest condition number sampled (>= 10).

    Returns:
        The :class:`TaskFamily`.

    Raises:
        ValueError: If ``dim < 1`` or ``max_condition < 10``.

    Example:
        >>> import jax
        >>> fam = quadratic_family(5, max_condition=50.0)
        >>> task = fam.sample(jax.random.PRNGKey(0))
        >>> round(float(fam.loss(task["x_star"], task)), 6)
        0.0
    """
    _positive_int("dim", dim)
    if not max_condition >= 10.0:
        raise ValueError(f"max_condition must be >= 10, got {max_condition!r}.")

    def sample(key):
        zq, zk, zl, x_star = _draw(key, (dim, dim), (), (dim,), (dim,))
        q, _ = jnp.linalg.qr(zq)
        kappa = _log_uniform(zk, 10.0, max_condition)
        lam = kappa ** (-_uniform(zl))
        return {"A": (q * lam) @ q.T, "x_star": x_star}

    def init(key, task):
        return jax.random.normal(key, task["x_star"].shape, task["x_star"].dtype)

    def loss(x, task):
        r = x - task["x_star"]
        return 0.5 * r @ (task["A"] @ r)

    return TaskFamily(sample, init, loss, f"quadratic{dim}")


@functools.cache
def logistic_family(num_features: int = 10, num_samples: int = 64) -> TaskFamily:
    """Logistic regressions on random data with labels drawn from a random true model.

    Features ``X ~ N(0, I)`` times a per-task scale log-uniform on ``[0.3, 3]``; labels
    ``y ~ Bernoulli(sigmoid(X w_true))`` with ``w_true ~ N(0, I)``. Loss: mean binary
    cross-entropy plus ``1e-3 ||w||^2`` (so a minimiser exists on separable data); start at 0.

    Args:
        num_features: Number of weights (a bias is included as an extra weight).
        num_samples: Data points per task.

    Returns:
        The :class:`TaskFamily`.

    Raises:
        ValueError: If a size is < 1.

    Example:
        >>> import jax
        >>> fam = logistic_family(3, 8)
        >>> task = fam.sample(jax.random.PRNGKey(0))
        >>> params = fam.init(jax.random.PRNGKey(1), task)
        >>> round(float(fam.loss(params, task)), 4)  # log 2 at w = 0
        0.6931
    """
    _positive_int("num_features", num_features)
    _positive_int("num_samples", num_samples)

    def sample(key):
        zx, zs, w_true, zy = _draw(
            key, (num_samples, num_features), (), (num_features + 1,), (num_samples,)
        )
        x = _log_uniform(zs, 0.3, 3.0) * zx
        x = jnp.concatenate([x, jnp.ones((num_samples, 1), x.dtype)], axis=1)
        # Bernoulli(sigmoid(a)) as 1[a + logistic noise > 0]; the noise is the logit of a
        # uniform obtained from zy through the normal CDF.
        u = jnp.clip(_uniform(zy), 1e-7, 1 - 1e-7)
        y = (x @ w_true + jnp.log(u) - jnp.log1p(-u) > 0).astype(x.dtype)
        return {"x": x, "y": y}

    def init(key, task):
        del key
        return jnp.zeros(task["x"].shape[1], task["x"].dtype)

    def loss(w, task):
        z = task["x"] @ w
        # log(1 + exp(z)) - y z, written with softplus for large |z|.
        return jnp.mean(jax.nn.softplus(z) - task["y"] * z) + 1e-3 * w @ w

    return TaskFamily(sample, init, loss, f"logistic{num_features}")


def _mlp_apply(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[..., 0]


@functools.cache
def mlp_regression_family(
    in_dim: int = 4, hidden: int = 16, num_samples: int = 64, *, noise: float = 0.1
) -> TaskFamily:
    """Regression of a random tanh teacher network by a tanh student MLP (mean squared error).

    Each task draws inputs ``X ~ N(0, I)``, a teacher with ``hidden`` tanh units and weights
    ``N(0, 1/fan_in)`` scaled by a per-task factor log-uniform on ``[0.5, 2]``, and targets
    ``teacher(X) + noise * N(0, 1)``. The student has the teacher's shape and LeCun-normal
    initial weights (zero biases), so the loss surface is non-convex.

    Args:
        in_dim: Input dimension.
        hidden: Hidden units of teacher and student.
        num_samples: Data points per task.
        noise: Standard deviation of the target noise (>= 0).

    Returns:
        The :class:`TaskFamily`.

    Raises:
        ValueError: If a size is < 1 or ``noise < 0``.

    Example:
        >>> import jax
        >>> fam = mlp_regression_family(2, 4, 8)
        >>> task = fam.sample(jax.random.PRNGKey(0))
        >>> params = fam.init(jax.random.PRNGKey(1), task)
        >>> sorted(params), bool(fam.loss(params, task) > 0)
        (['b1', 'b2', 'w1', 'w2'], True)
    """
    for name, value in (("in_dim", in_dim), ("hidden", hidden), ("num_samples", num_samples)):
        _positive_int(name, value)
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise!r}.")

    def _weights(z1, z2, scale=1.0):
        return {
            "w1": scale * z1 / jnp.sqrt(in_dim),
            "b1": jnp.zeros(hidden, z1.dtype),
            "w2": scale * z2 / jnp.sqrt(hidden),
            "b2": jnp.zeros(1, z1.dtype),
        }

    def sample(key):
        x, z1, z2, zs, zn = _draw(
            key, (num_samples, in_dim), (in_dim, hidden), (hidden, 1), (), (num_samples,)
        )
        teacher = _weights(z1, z2, 2.0 * _log_uniform(zs, 0.5, 2.0))
        return {"x": x, "y": _mlp_apply(teacher, x) + noise * zn}

    def init(key, task):
        z1, z2 = _draw(key, (in_dim, hidden), (hidden, 1))
        return jax.tree.map(lambda a: a.astype(task["x"].dtype), _weights(z1, z2))

    def loss(params, task):
        return jnp.mean((_mlp_apply(params, task["x"]) - task["y"]) ** 2)

    return TaskFamily(sample, init, loss, f"mlp{in_dim}x{hidden}")


FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "quadratic": quadratic_family,
    "logistic": logistic_family,
    "mlp": mlp_regression_family,
}
