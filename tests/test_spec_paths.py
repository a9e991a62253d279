"""The SPEC's second-order names live at the SPEC's module paths."""

import dataclasses
import importlib

import optax
import pytest

SPEC = {
    "opifex.optimization.second_order.config": [
        "LBFGSConfig",
        "GaussNewtonConfig",
        "LevenbergMarquardtConfig",
        "HybridOptimizerConfig",
    ],
    "opifex.optimization.second_order.wrappers": [
        "create_lbfgs_optimizer",
        "create_gauss_newton_solver",
    ],
    "opifex.optimization.second_order.hybrid_optimizer": ["HybridOptimizer"],
    "opifex.optimization.second_order.nnx_integration": [
        "NNXLBFGSWrapper",
        "create_nnx_lbfgs_optimizer",
    ],
    "opifex.optimization": ["Solver", "Solution", "Status", "SolverError", "solve", "advance"],
    # Issue 3: the names the issue documents for "Scientific Computing Integration".
    "opifex.optimization.scientific_integration": [
        "ScientificComputingIntegrator",
        "ConservationLaw",
        "ConservationCheckResult",
        "NumericalValidator",
        "NumericalValidationResult",
        "PhysicsProfiler",
        "ScientificBenchmarkValidator",
    ],
    # Issue 5: the SPEC's learn-to-optimize modules and the documented front door.
    "opifex.optimization.meta_optimization": ["LearnToOptimize", "MetaOptimizerConfig"],
    "opifex.optimization.l2o.l2o_engine": ["L2OEngine", "learned_optimizer", "meta_train"],
    "opifex.optimization.l2o.parametric_solver": ["ParametricSolver", "DualQPSolver"],
    "opifex.optimization.l2o.constraint_learning": [
        "equality_completion",
        "inequality_correction",
        "project_equality",
        "project_to_interior_ray",
    ],
}


@pytest.mark.parametrize("module", sorted(SPEC))
def test_names_exist(module):
    mod = importlib.import_module(module)
    for name in SPEC[module]:
        assert hasattr(mod, name), f"{module}.{name} missing"


def test_configs_are_frozen_kw_only_and_validated():
    from opifex.optimization.second_order import config

    for name in SPEC["opifex.optimization.second_order.config"]:
        cls = getattr(config, name)
        cfg = cls()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.max_iterations = 3  # type: ignore[misc]
        with pytest.raises(TypeError):
            cls(1)  # keyword-only


def test_lbfgs_optimizer_is_an_optax_transform():
    from opifex.optimization.second_order.wrappers import create_lbfgs_optimizer

    assert isinstance(create_lbfgs_optimizer(), optax.GradientTransformationExtraArgs)
