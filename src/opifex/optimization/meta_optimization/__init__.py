"""Meta-optimization: the learned-optimizer front door and warm starts for related problems."""

from opifex.optimization.meta_optimization.config import (
    META_METHODS,
    WARM_START_STRATEGIES,
    MetaOptimizerConfig,
)
from opifex.optimization.meta_optimization.learn_to_optimize import LearnToOptimize, OptimizeResult
from opifex.optimization.meta_optimization.warm_start import (
    STRATEGIES,
    WarmStart,
    WarmStarter,
    WarmStartMemory,
    warm_start,
)

__all__ = [
    "META_METHODS",
    "STRATEGIES",
    "WARM_START_STRATEGIES",
    "LearnToOptimize",
    "MetaOptimizerConfig",
    "OptimizeResult",
    "WarmStart",
    "WarmStartMemory",
    "WarmStarter",
    "warm_start",
]
