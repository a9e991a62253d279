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

from opifex.optimization.l2o import _meta_training
from opifex.optimization.l2o._learned_optimizer import (
    LearnedOptimizerState,
    check_network_args,
    init_meta_params,
    learned_optimizer,
    num_layers,
)
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


def meta_train(
    theta: dict[str, Any],
    family: TaskFamily,
    *,
    meta_learning_rate: float,
    meta_steps: int,
    unroll_length: int,
    num_tasks: int,
    method: str = "es",
    key: jax.Array,
    progress: Any = None,
    horizon: int | None = None,
    num_perturbations: int = 8,
    sigma: float = 0.01,
    max_grad_norm: float = 1.0,
    task: Any = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Meta-train the learned optimizer's ``theta`` on ``family`` by truncated unrolls.

    Each meta-step (one jitted call) continues a batch of ``num_tasks`` tasks by
    ``unroll_length`` learned-optimizer steps, tasks that reached ``horizon`` inner steps
    being replaced by fresh samples first. The meta-loss of a segment is the mean over its
    steps of ``log(f_t / f_0 + 1e-12)`` (``f_0``: the task's initial loss; non-finite or
    ``> 5`` values count as 5), averaged over tasks. Its gradient is estimated by

    - ``"es"``: antithetic evolution strategies with ``num_perturbations`` pairs of Gaussian
      perturbations of scale ``sigma``, every perturbation scored on the same tasks
      (Salimans et al. 2017; robust where unrolled gradients explode), or
    - ``"grad"``: reverse-mode differentiation through the ``lax.scan`` unroll (non-finite
      entries zeroed),

    then clipped to global norm ``max_grad_norm`` and applied by Adam with step
    ``meta_learning_rate``. The segment's end state continues to the next meta-step (for
    ES, the first positive perturbation's end state). The meta-step is compiled once per
    family object, method and sizes, and reused by later calls with the same settings.

    Args:
        theta: Initial meta-parameters (:func:`init_meta_params`).
        family: The task family to train on.
        meta_learning_rate: Adam step on ``theta`` (> 0).
        meta_steps: Number of meta-steps (>= 1).
        unroll_length: Inner steps per meta-step (>= 1).
        num_tasks: Tasks per meta-step (>= 1).
        method: ``"es"`` or ``"grad"``.
        key: PRNG key (task sampling and perturbations).
        progress: Optional ``rich.progress.Progress``; a task advancing per meta-step is added.
        horizon: Inner steps after which a task is resampled (>= ``unroll_length``; default
            ``unroll_length``, i.e. untruncated unrolls from fresh tasks).
        num_perturbations: ES antithetic pairs per meta-step (>= 1).
        sigma: ES perturbation scale (> 0).
        max_grad_norm: Clip of the meta-gradient's global norm (> 0).
        task: Optional fixed task (a pytree of arrays as ``family.sample`` returns): every
            task of the batch is this one instead of a sample (``family.init`` still gives
            its start). It is data to the compiled step, so problems of one shape share a
            compilation.

    Returns:
        ``(theta, history)``: trained meta-parameters and a dict with ``meta_loss`` (per
        meta-step; for ES the mean over perturbations) and ``time_s`` (cumulative wall clock,
        including compilation in the first step).

    Raises:
        ValueError: If a size or rate is out of range, ``method`` is unknown, ``theta`` is
            malformed or ``family.loss`` does not return a scalar.
        TypeError: If ``family`` is not a :class:`TaskFamily` or ``key`` is not a PRNG key.

    Example:
        >>> import jax
        >>> family = quadratic_family(6)
        >>> theta = init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(8,), learning_rate=0.1)
        >>> theta, history = meta_train(theta, family, meta_learning_rate=0.03, meta_steps=3,
        ...     unroll_length=20, num_tasks=4, method="grad", key=jax.random.PRNGKey(1))
        >>> history["meta_loss"].shape
        (3,)

    References:
        Salimans, Ho, Chen, Sidor, Sutskever, "Evolution strategies as a scalable alternative
        to reinforcement learning", arXiv:1703.03864 (2017). Metz et al., "Understanding and
        correcting pathologies in the training of learned optimizers", ICML 2019.
    """
    return _meta_training.meta_train(
        theta,
        family,
        meta_learning_rate=meta_learning_rate,
        meta_steps=meta_steps,
        unroll_length=unroll_length,
        num_tasks=num_tasks,
        method=method,
        key=key,
        progress=progress,
        horizon=horizon,
        num_perturbations=num_perturbations,
        sigma=sigma,
        max_grad_norm=max_grad_norm,
        task=task,
    )


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
