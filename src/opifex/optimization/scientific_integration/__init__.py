"""Physics-informed optimization: objectives, loss balancing, second-order training,
conservation laws, numerical validation, profiling and benchmarking.

The front door is :class:`ScientificComputingIntegrator`; every piece it uses is public too.
"""

from opifex.optimization.scientific_integration.benchmarking import (
    BenchmarkValidationResult,
    ConvergenceOrder,
    RefinementStudyResult,
    ScientificBenchmarkValidator,
)
from opifex.optimization.scientific_integration.conservation import (
    AugmentedLagrangianState,
    ConservationCheckResult,
    ConservationLaw,
    augmented_lagrangian_solver,
    penalty_loss,
)
from opifex.optimization.scientific_integration.integrator import (
    ScientificComputingIntegrator,
    ScientificIntegrationConfig,
    ScientificTrainingResult,
    TrainingDivergedError,
)
from opifex.optimization.scientific_integration.loss_balancing import (
    FixedWeightsState,
    GradNormAnnealingState,
    NTKWeightsState,
    ReLoBRaLoState,
    causal_loss,
    causal_weights,
    fixed_weights,
    grad_norm_annealing,
    ntk_trace,
    ntk_weights,
    relobralo,
    term_gradients,
)
from opifex.optimization.scientific_integration.networks import (
    apply_mlp,
    from_nnx,
    init_mlp,
    to_nnx,
)
from opifex.optimization.scientific_integration.physics_loss import (
    PhysicsInformedLoss,
    ResidualTerm,
    partial,
)
from opifex.optimization.scientific_integration.profiling import PhysicsProfiler, ProfileReport
from opifex.optimization.scientific_integration.validation import (
    Finding,
    NumericalValidationResult,
    NumericalValidator,
    SkipNonfiniteState,
    hessian_vector_product,
    lanczos_eigenvalues,
    skip_nonfinite,
)

__all__ = [
    "AugmentedLagrangianState",
    "BenchmarkValidationResult",
    "ConservationCheckResult",
    "ConservationLaw",
    "ConvergenceOrder",
    "Finding",
    "FixedWeightsState",
    "GradNormAnnealingState",
    "NTKWeightsState",
    "NumericalValidationResult",
    "NumericalValidator",
    "PhysicsInformedLoss",
    "PhysicsProfiler",
    "ProfileReport",
    "ReLoBRaLoState",
    "RefinementStudyResult",
    "ResidualTerm",
    "ScientificBenchmarkValidator",
    "ScientificComputingIntegrator",
    "ScientificIntegrationConfig",
    "ScientificTrainingResult",
    "SkipNonfiniteState",
    "TrainingDivergedError",
    "apply_mlp",
    "augmented_lagrangian_solver",
    "causal_loss",
    "causal_weights",
    "fixed_weights",
    "from_nnx",
    "grad_norm_annealing",
    "hessian_vector_product",
    "init_mlp",
    "lanczos_eigenvalues",
    "ntk_trace",
    "ntk_weights",
    "partial",
    "penalty_loss",
    "relobralo",
    "skip_nonfinite",
    "term_gradients",
    "to_nnx",
]
