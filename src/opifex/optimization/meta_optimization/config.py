"""Configuration of :class:`~opifex.optimization.meta_optimization.LearnToOptimize`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from opifex.optimization.meta_optimization.warm_start import check_strategy
from opifex.optimization.second_order.config import _check, _int_at_least

WARM_START_STRATEGIES = ("none", "previous_params", "nearest_neighbor", "learned")
META_METHODS = ("es", "grad")


def _positive(name: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    _check(ok, name, value, "a float > 0")


@dataclass(frozen=True, kw_only=True)
class MetaOptimizerConfig:
    """Settings of the learned optimizer front door, each one used by :class:`LearnToOptimize`.

    Attributes:
        meta_learning_rate: Step size of the meta-optimizer (Adam on the learned optimizer's
            meta-parameters), both in :meth:`LearnToOptimize.meta_train` and in the
            per-problem adaptation.
        adaptation_steps: Meta-steps taken on each objective given to
            :meth:`LearnToOptimize.optimize` before optimizing it (0 disables adaptation).
        warm_start_strategy: ``"none"``, ``"previous_params"``, ``"nearest_neighbor"`` or
            ``"learned"`` (see :mod:`~opifex.optimization.meta_optimization.warm_start`).
        learning_rate: Step size of the learned optimizer before any meta-training (the
            initial ``log_lr`` of its meta-parameters; untrained, it is AMSGrad with this step,
            whose effective step shrinks with the gradient, hence the default 0.1).
        base_learning_rate: Learning rate of the base optimizer (Adam) that takes a step
            whenever the learned update is not finite.
        unroll_length: Optimizer steps per truncated unroll in meta-training and adaptation.
        meta_method: ``"es"`` (antithetic evolution strategies) or ``"grad"`` (gradient
            through the unroll).
        hidden_sizes: Widths of the learned optimizer's per-parameter MLP.
        warm_start_memory: Most solved problems the warm-start memory keeps.
    """

    meta_learning_rate: float = 1e-3
    adaptation_steps: int = 0
    warm_start_strategy: str = "none"
    learning_rate: float = 1e-1
    base_learning_rate: float = 1e-3
    unroll_length: int = 20
    meta_method: str = "es"
    hidden_sizes: tuple[int, ...] = (32, 32)
    warm_start_memory: int = 64

    def __post_init__(self) -> None:
        _positive("meta_learning_rate", self.meta_learning_rate)
        _int_at_least("adaptation_steps", self.adaptation_steps, 0)
        if self.warm_start_strategy != "none":
            check_strategy(self.warm_start_strategy, "warm_start_strategy", ("none",))
        _positive("learning_rate", self.learning_rate)
        _positive("base_learning_rate", self.base_learning_rate)
        _int_at_least("unroll_length", self.unroll_length, 1)
        _check(self.meta_method in META_METHODS, "meta_method", self.meta_method, "'es' or 'grad'")
        sizes = self.hidden_sizes
        ok = isinstance(sizes, tuple) and all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in sizes
        )
        _check(ok, "hidden_sizes", sizes, "a tuple of ints >= 1, e.g. (32, 32)")
        _int_at_least("warm_start_memory", self.warm_start_memory, 1)

    def replace(self, **changes) -> MetaOptimizerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
