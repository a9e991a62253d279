"""Learn-to-optimize: learned optimizers, parametric solvers and constraint learning.

- :mod:`~opifex.optimization.l2o.l2o_engine`: per-parameter learned optimizers as optax
  transforms, meta-trained on a task family by truncated unrolls (ES or backprop);
- :mod:`~opifex.optimization.l2o.parametric_solver`: amortized solvers trained on the objective
  alone, refined by a real solver and made exactly feasible;
- :mod:`~opifex.optimization.l2o.constraint_learning`: DC3 completion and correction, exact
  projections onto linear constraints, feasibility reports;
- :mod:`~opifex.optimization.l2o.compare`: a learned solver against a classical one, measured.
"""

from opifex.optimization.l2o.compare import ComparisonReport, compare
from opifex.optimization.l2o.constraint_learning import (
    ConstraintLayer,
    ConstraintLayerConfig,
    LinearConstraints,
    equality_completion,
    feasibility_report,
    inequality_correction,
    project_equality,
    project_to_interior_ray,
    project_to_interior_ray_bisection,
)
from opifex.optimization.l2o.l2o_engine import (
    FAMILIES,
    L2OEngine,
    LearnedOptimizerState,
    TaskFamily,
    init_meta_params,
    learned_optimizer,
    load_meta_params,
    logistic_family,
    meta_train,
    mlp_regression_family,
    quadratic_family,
    save_meta_params,
)
from opifex.optimization.l2o.parametric_solver import (
    MLP,
    DualQPConfig,
    DualQPSolver,
    ParametricSolver,
    ParametricSolverConfig,
    QPSolution,
    ReducedQP,
    TrainingHistory,
    dc3_solver,
    dual_function,
    reduce_qp,
    solver_refinement,
)

__all__ = [
    "FAMILIES",
    "MLP",
    "ComparisonReport",
    "ConstraintLayer",
    "ConstraintLayerConfig",
    "DualQPConfig",
    "DualQPSolver",
    "L2OEngine",
    "LearnedOptimizerState",
    "LinearConstraints",
    "ParametricSolver",
    "ParametricSolverConfig",
    "QPSolution",
    "ReducedQP",
    "TaskFamily",
    "TrainingHistory",
    "compare",
    "dc3_solver",
    "dual_function",
    "equality_completion",
    "feasibility_report",
    "inequality_correction",
    "init_meta_params",
    "learned_optimizer",
    "load_meta_params",
    "logistic_family",
    "meta_train",
    "mlp_regression_family",
    "project_equality",
    "project_to_interior_ray",
    "project_to_interior_ray_bisection",
    "quadratic_family",
    "reduce_qp",
    "save_meta_params",
    "solver_refinement",
]
