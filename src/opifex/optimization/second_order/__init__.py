"""Second-order optimizers: L-BFGS, BFGS, NysNewton-CG, Gauss-Newton, Levenberg-Marquardt,
Adam->L-BFGS and NNX integration."""

from opifex.optimization.second_order.config import (
    BFGSConfig,
    GaussNewtonConfig,
    HybridOptimizerConfig,
    LBFGSConfig,
    LevenbergMarquardtConfig,
    NysNewtonCGConfig,
)
from opifex.optimization.second_order.hybrid_optimizer import HybridOptimizer
from opifex.optimization.second_order.nnx_integration import (
    NNXLBFGSWrapper,
    create_nnx_lbfgs_optimizer,
)
from opifex.optimization.second_order.wrappers import (
    create_bfgs_solver,
    create_gauss_newton_solver,
    create_lbfgs_optimizer,
    create_lbfgs_solver,
    create_levenberg_marquardt_solver,
    create_nys_newton_cg_solver,
)

__all__ = [
    "BFGSConfig",
    "GaussNewtonConfig",
    "HybridOptimizer",
    "HybridOptimizerConfig",
    "LBFGSConfig",
    "LevenbergMarquardtConfig",
    "NNXLBFGSWrapper",
    "NysNewtonCGConfig",
    "create_bfgs_solver",
    "create_gauss_newton_solver",
    "create_lbfgs_optimizer",
    "create_lbfgs_solver",
    "create_levenberg_marquardt_solver",
    "create_nnx_lbfgs_optimizer",
    "create_nys_newton_cg_solver",
]
