"""Learned optimizers: a per-parameter MLP update rule, meta-trained on a family of tasks.

The functional core:

- :class:`TaskFamily` and the families :func:`quadratic_family`, :func:`logistic_family`,
  :func:`mlp_regression_family` (problems to meta-train and test on);
- :func:`init_meta_params` and :func:`learned_optimizer` (the update rule as an optax
  ``GradientTransformationExtraArgs``; it drops into ``nnx.Optimizer`` and ``optax.chain``);
- :func:`meta_train` (truncated unrolls, antithetic ES or gradient through ``lax.scan``);
- :func:`save_meta_params` / :func:`load_meta_params` (plain ``.npz``).

:class:`L2OEngine` is the front door over them and adds no numerics of its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from opifex.optimization.l2o._learned_optimizer import (
    LearnedOptimizerState,
    check_network_args,
    init_meta_params,
    learned_optimizer,
    num_layers,
)
from opifex.optimization.l2o._meta_training import meta_train
from opifex.optimization.l2o._task_families import (
    FAMILIES,
    TaskFamily,
    logistic_family,
    mlp_regression_family,
    quadratic_family,
)

__all__ = [
    "FAMILIES",
    "L2OEngine",
    "LearnedOptimizerState",
    "TaskFamily",
    "init_meta_params",
    "learned_optimizer",
    "load_meta_params",
    "logistic_family",
    "meta_train",
    "mlp_regression_family",
    "quadratic_family",
    "save_meta_params",
]


def save_meta_params(path: str | os.PathLike, theta: dict[str, Any]) -> None:
    """Write ``theta`` to ``path`` as an uncompressed ``.npz`` (one array per key).

    Args:
        path: Destination file (numpy appends ``.npz`` if missing).
        theta: Meta-parameters from :func:`init_meta_params` or :func:`meta_train`.

    Raises:
        ValueError: If ``theta`` is malformed.

    Example:
        >>> import jax, tempfile, pathlib
        >>> theta = init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(4,))
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "theta.npz"
        >>> save_meta_params(path, theta)
        >>> sorted(load_meta_params(path)) == sorted(theta)
        True
    """
    num_layers(theta)
    np.savez(path, **{k: np.asarray(v) for k, v in theta.items()})


def load_meta_params(path: str | os.PathLike) -> dict[str, jax.Array]:
    """Read meta-parameters written by :func:`save_meta_params`.

    Args:
        path: The ``.npz`` file.

    Returns:
        The ``theta`` dict of arrays.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file does not hold a learned optimizer's meta-parameters.

    Example:
        See :func:`save_meta_params`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no meta-parameter file at {os.fspath(path)!r}.")
    with np.load(path) as data:
        theta = {k: jnp.asarray(data[k]) for k in data.files}
    num_layers(theta)
    return theta


class L2OEngine:
    """Front door: a learned optimizer for one task family (init, meta-train, use, save).

    Attributes:
        family: The :class:`TaskFamily` meta-training samples from.
        theta: Current meta-parameters (set by :meth:`init`, :meth:`meta_train`, :meth:`load`).
        history: The last :meth:`meta_train` history, or None.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> engine = L2OEngine(quadratic_family(4), hidden_sizes=(8,))
        >>> theta = engine.init(jax.random.PRNGKey(0))
        >>> opt = optax.chain(optax.clip_by_global_norm(10.0), engine.as_transform())
        >>> state = opt.init(jnp.ones(3))
        >>> updates, state = jax.jit(opt.update)(jnp.ones(3), state, jnp.ones(3))
        >>> [round(float(u), 2) for u in updates]  # untrained: about AMSGrad, lr 1e-2
        [-0.01, -0.01, -0.01]
    """

    def __init__(
        self,
        family: TaskFamily | None = None,
        *,
        hidden_sizes: Sequence[int] = (32, 32),
        learning_rate: float = 1e-2,
        base: optax.GradientTransformation | None = None,
    ) -> None:
        """Args: the task family, the network widths, the initial step size, the fallback."""
        if family is not None and not isinstance(family, TaskFamily):
            raise TypeError(f"family must be a TaskFamily or None, got {type(family).__name__}.")
        self.family = family
        self.hidden_sizes = tuple(hidden_sizes)
        self.learning_rate = learning_rate
        self.base = base
        self.theta: dict[str, Any] | None = None
        self.history: dict[str, np.ndarray] | None = None
        check_network_args(self.hidden_sizes, learning_rate)

    def init(self, key: jax.Array) -> dict[str, Any]:
        """Fresh meta-parameters (:func:`init_meta_params`), stored and returned."""
        self.theta = init_meta_params(
            key, hidden_sizes=self.hidden_sizes, learning_rate=self.learning_rate
        )
        return self.theta

    def meta_train(self, key: jax.Array, **kwargs: Any) -> dict[str, np.ndarray]:
        """Run :func:`meta_train` from the current ``theta`` (fresh if none); return history."""
        if self.family is None:
            raise ValueError("L2OEngine.meta_train needs a family; pass one to L2OEngine(...).")
        k_init, key = jax.random.split(key)
        theta = self.theta if self.theta is not None else self.init(k_init)
        self.theta, self.history = meta_train(theta, self.family, key=key, **kwargs)
        return self.history

    def as_transform(self, theta: dict[str, Any] | None = None):
        """The learned optimizer for ``theta`` (default: the stored one) as an optax transform."""
        theta = self.theta if theta is None else theta
        if theta is None:
            raise ValueError("no meta-parameters yet; call init, meta_train or load first.")
        return learned_optimizer(theta, base=self.base)

    def save(self, path: str | os.PathLike) -> None:
        """Save the stored ``theta`` (:func:`save_meta_params`)."""
        if self.theta is None:
            raise ValueError("no meta-parameters to save; call init or meta_train first.")
        save_meta_params(path, self.theta)

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load ``theta`` from ``path`` (:func:`load_meta_params`), store and return it."""
        self.theta = load_meta_params(path)
        return self.theta
