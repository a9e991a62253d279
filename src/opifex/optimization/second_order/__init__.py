"""Second-order optimizers: L-BFGS, Gauss-Newton, Levenberg-Marquardt, Adam->L-BFGS, NNX."""

from opifex.optimization.second_order.config import (
    GaussNewtonConfig,
    HybridOptimizerConfig,
    LBFGSConfig,
    LevenbergMarquardtConfig,
)
from opifex.optimization.second_order.hybrid_optimizer import HybridOptimizer
from opifex.optimization.second_order.nnx_integration import (
    NNXLBFGSWrapper,
    create_nnx_lbfgs_optimizer,
)
from opifex.optimization.second_order.wrappers import (
    create_gauss_newton_solver,
    create_lbfgs_optimizer,
    create_lbfgs_solver,
    create_levenberg_marquardt_solver,
)

__all__ = [
    "GaussNewtonConfig",
    "HybridOptimizer",
    "HybridOptimizerConfig",
    "LBFGSConfig",
    "LevenbergMarquardtConfig",
    "NNXLBFGSWrapper",
    "create_gauss_newton_solver",
    "create_lbfgs_optimizer",
    "create_lbfgs_solver",
    "create_levenberg_marquardt_solver",
    "create_nnx_lbfgs_optimizer",
]
