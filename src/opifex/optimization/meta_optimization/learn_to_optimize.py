"""``LearnToOptimize``: the front door to learned optimizers with warm starts.

It holds the meta-parameters ``theta`` of the per-parameter learned optimizer of
:mod:`opifex.optimization.l2o.l2o_engine` and a warm-start memory
(:mod:`~opifex.optimization.meta_optimization.warm_start`), and calls those functional
cores; it adds no numerics of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from opifex.optimization.l2o.l2o_engine import (
    TaskFamily,
    init_meta_params,
    learned_optimizer,
    load_meta_params,
    meta_train,
    save_meta_params,
)
from opifex.optimization.meta_optimization._adaptation import (
    Raveled,
    WithoutArgs,
    run_learned,
    single_objective_family,
)
from opifex.optimization.meta_optimization.config import MetaOptimizerConfig
from opifex.optimization.meta_optimization.warm_start import WarmStarter


class OptimizeResult(NamedTuple):
    """What the last :meth:`LearnToOptimize.optimize` call did.

    Attributes:
        params: The optimized parameters (also returned by ``optimize``).
        losses: Objective at iterates ``0..num_steps`` (float64 numpy array).
        fallback_count: Steps where the learned update was not finite and the base
            optimizer's update was used instead.
        start: ``"given"`` or the warm-start strategy whose proposal replaced ``params``.
        num_steps: Learned-optimizer steps taken.
        adaptation_loss: Meta-loss of each adaptation meta-step (empty without adaptation).
    """

    params: Any
    losses: np.ndarray
    fallback_count: int
    start: str
    num_steps: int
    adaptation_loss: np.ndarray


def _signature(params, features) -> tuple:
    leaves, treedef = jax.tree.flatten(params)
    shapes = tuple((np.shape(x), np.asarray(x).dtype.str) for x in leaves)
    return treedef, shapes, None if features is None else np.shape(features)


class LearnToOptimize:
    """Learned optimizer with per-problem adaptation and warm starts for related problems.

    ``optimize`` (1) picks the start (warm start, see :meth:`optimize`), (2) takes
    ``config.adaptation_steps`` meta-steps of :func:`~opifex.optimization.l2o.l2o_engine.meta_train`
    on this objective alone (truncated unrolls of ``config.unroll_length`` steps from the
    start, step ``config.meta_learning_rate``, method ``config.meta_method``), adapting a copy
    of ``theta``, and (3) runs ``num_steps`` steps of the learned optimizer with the adapted
    ``theta`` in one jitted ``lax.scan``. The update rule is that of
    :func:`~opifex.optimization.l2o.l2o_engine.learned_optimizer`; a step whose learned update
    is not finite takes Adam's (``config.base_learning_rate``) instead and is counted.
    Untrained, ``theta`` is AMSGrad with step ``config.learning_rate``; :meth:`meta_train` on a
    task family improves it.

    Args:
        config: A :class:`MetaOptimizerConfig` (defaults if ``None``).
        rngs: ``nnx.Rngs`` for the initial meta-parameters and meta-training keys
            (``nnx.Rngs(0)`` if ``None``).

    Raises:
        TypeError: If ``config`` is not a :class:`MetaOptimizerConfig`.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from opifex.optimization.meta_optimization import (
        ...     LearnToOptimize, MetaOptimizerConfig)
        >>> params = {"w": jnp.zeros(3), "b": jnp.array(0.0)}
        >>> def objective_fn(p):
        ...     return jnp.sum((p["w"] - jnp.array([1.0, -2.0, 0.5])) ** 2) + (p["b"] - 3.0) ** 2
        >>> config = MetaOptimizerConfig(warm_start_strategy="previous_params")
        >>> l2o = LearnToOptimize(config=config, rngs=nnx.Rngs(42))
        >>> out = l2o.optimize(params, objective_fn, num_steps=1000)
        >>> [round(float(v), 2) for v in out["w"]], round(float(out["b"]), 2)
        ([1.0, -2.0, 0.5], 3.0)
        >>> _ = l2o.optimize(params, objective_fn, num_steps=10)  # warm: starts at the solution
        >>> l2o.last_result.start, bool(l2o.last_result.losses[0] < 1e-3)
        ('previous_params', True)
    """

    def __init__(
        self,
        config: MetaOptimizerConfig | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        if config is None:
            config = MetaOptimizerConfig()
        if not isinstance(config, MetaOptimizerConfig):
            raise TypeError(f"config must be a MetaOptimizerConfig, got {type(config).__name__}.")
        self.config = config
        self.rngs = nnx.Rngs(0) if rngs is None else rngs
        self.theta = init_meta_params(
            self.rngs.params(),
            hidden_sizes=config.hidden_sizes,
            learning_rate=config.learning_rate,
        )
        self.history: dict[str, np.ndarray] | None = None
        self.last_result: OptimizeResult | None = None
        self._starter = None
        if config.warm_start_strategy != "none":
            self._starter = WarmStarter(
                config.warm_start_strategy, capacity=config.warm_start_memory
            )
        self._signature: tuple | None = None

    @property
    def warm_starter(self) -> WarmStarter | None:
        """The warm-start memory (``None`` when ``warm_start_strategy`` is ``"none"``)."""
        return self._starter

    def meta_train(
        self,
        family: TaskFamily,
        *,
        meta_steps: int = 100,
        num_tasks: int = 8,
        progress: Any = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Meta-train ``theta`` on ``family`` with ``l2o_engine.meta_train``.

        Uses ``config.meta_learning_rate``, ``config.unroll_length`` and ``config.meta_method``.

        Args:
            family: The task family.
            meta_steps: Meta-steps (>= 1).
            num_tasks: Tasks per meta-step (>= 1).
            progress: Optional ``rich.progress.Progress`` showing the meta-steps.
            **kwargs: Further keyword arguments of ``meta_train`` (``horizon``,
                ``num_perturbations``, ``sigma``, ``max_grad_norm``).

        Returns:
            The history (``meta_loss`` and ``time_s`` per meta-step); also kept in ``history``.
        """
        cfg = self.config
        self.theta, self.history = meta_train(
            self.theta,
            family,
            meta_learning_rate=cfg.meta_learning_rate,
            meta_steps=meta_steps,
            unroll_length=cfg.unroll_length,
            num_tasks=num_tasks,
            method=cfg.meta_method,
            key=self.rngs(),
            progress=progress,
            **kwargs,
        )
        return self.history

    def optimize(
        self,
        params: Any,
        objective_fn: Callable,
        num_steps: int = 1000,
        *,
        args: Any = None,
        features: Any = None,
    ) -> Any:
        """Minimise ``objective_fn`` from ``params`` (or a warm start) with the learned optimizer.

        **When the given params are replaced:** if ``config.warm_start_strategy`` is not
        ``"none"`` and this object has already solved a problem whose parameters have the
        same pytree structure, shapes and dtypes (and whose ``features`` have the same
        shape), the optimizer starts from the strategy's proposal (the last solution, the
        solution of the nearest stored ``features``, or the ridge prediction from
        ``features``) instead of ``params``; otherwise it starts from ``params``. A problem
        of another structure empties the memory. Each run whose final loss is finite is
        recorded (at most ``config.warm_start_memory`` are kept).

        Args:
            params: Initial parameters (any pytree of float arrays).
            objective_fn: ``objective_fn(params) -> scalar``, or ``objective_fn(params, args)``
                when ``args`` is given (data in ``args`` compile once for every problem of a
                family).
            num_steps: Learned-optimizer steps (>= 1).
            args: Optional problem data passed to ``objective_fn``.
            features: 1-D vector describing the problem; required by the
                ``"nearest_neighbor"`` and ``"learned"`` strategies.

        Returns:
            The optimized parameters, with the structure of ``params``. Details (losses,
            fallback count, start used) are in ``last_result``.

        Raises:
            ValueError: If ``num_steps < 1``, or the strategy needs ``features`` and none
                are given.
        """
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
        if not callable(objective_fn):
            raise TypeError(f"objective_fn must be callable, got {type(objective_fn).__name__}.")
        cfg = self.config
        fn = WithoutArgs(objective_fn) if args is None else objective_fn
        start, used = params, "given"
        if self._starter is not None:
            signature = _signature(params, features)
            if signature != self._signature:
                self._starter.reset()
                self._signature = signature
            before = self._starter.size
            start = self._starter.propose(features, params)
            if before:
                used = cfg.warm_start_strategy

        # The update rule is elementwise, so one raveled vector is the same optimizer with a
        # much smaller program to compile than one learned update per pytree leaf.
        flat_fn, flat_start = Raveled.of(fn, start)
        theta, adaptation_loss = self.theta, np.zeros(0)
        if cfg.adaptation_steps:
            family, task = single_objective_family(flat_fn, flat_start, args)
            theta, history = meta_train(
                self.theta,
                family,
                task=task,
                meta_learning_rate=cfg.meta_learning_rate,
                meta_steps=cfg.adaptation_steps,
                unroll_length=cfg.unroll_length,
                num_tasks=1,
                method=cfg.meta_method,
                key=self.rngs(),
            )
            adaptation_loss = history["meta_loss"]

        base_lr = jnp.asarray(cfg.base_learning_rate, flat_start.dtype)
        out = run_learned(theta, flat_fn, flat_start, args, num_steps, base_lr)
        optimized = flat_fn.unravel(out.params)
        losses = np.asarray(out.losses, dtype=np.float64)
        if self._starter is not None and np.isfinite(losses[-1]):
            self._starter.record(features, optimized)
        self.last_result = OptimizeResult(
            optimized, losses, int(out.fallback_count), used, num_steps, adaptation_loss
        )
        return optimized

    def as_transform(self) -> optax.GradientTransformationExtraArgs:
        """The learned optimizer with the current ``theta`` as an optax transform.

        Its fallback is Adam with ``config.base_learning_rate``; ``update`` needs ``params``.
        """
        return learned_optimizer(self.theta, base=optax.adam(self.config.base_learning_rate))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``theta`` to ``path`` (``.npz``, :func:`save_meta_params`)."""
        save_meta_params(path, self.theta)

    def load(self, path: str | os.PathLike) -> None:
        """Read ``theta`` from ``path`` (the file's network widths replace the config's)."""
        self.theta = load_meta_params(path)
