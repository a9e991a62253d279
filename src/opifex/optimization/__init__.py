"""Optimization methods for scientific machine learning."""

from opifex.optimization.core import (
    Solution,
    Solver,
    SolverError,
    Status,
    advance,
    solve,
    solve_batch,
)

__all__ = ["Solution", "Solver", "SolverError", "Status", "advance", "solve", "solve_batch"]
