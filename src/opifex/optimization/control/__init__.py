"""Control: system identification, differentiable MPC and barrier-function safety."""

from opifex.optimization.control.mpc import DifferentiableMPC, MPCConfig, MPCSolution, rk4
from opifex.optimization.control.safety import (
    ControlBarrierFunction,
    FilterInfo,
    QPInfo,
    SafetyFilter,
    SafetyFilterConfig,
    cbf_filter,
    cbf_qp,
    discrete_cbf_constraint,
)
from opifex.optimization.control.system_id import (
    ARX,
    FittedModel,
    GreyBox,
    HamiltonianModel,
    LinearStateSpace,
    NeuralStateSpace,
    StableLinear,
    SystemIdConfig,
    SystemIdentifier,
    fit_percent,
    rmse,
)

__all__ = [
    "ARX",
    "ControlBarrierFunction",
    "DifferentiableMPC",
    "FilterInfo",
    "FittedModel",
    "GreyBox",
    "HamiltonianModel",
    "LinearStateSpace",
    "MPCConfig",
    "MPCSolution",
    "NeuralStateSpace",
    "QPInfo",
    "SafetyFilter",
    "SafetyFilterConfig",
    "StableLinear",
    "SystemIdConfig",
    "SystemIdentifier",
    "cbf_filter",
    "cbf_qp",
    "discrete_cbf_constraint",
    "fit_percent",
    "rk4",
    "rmse",
]
