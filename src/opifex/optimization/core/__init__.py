"""The solver protocol shared by every opifex solver (see ``STYLE.md``)."""

from opifex.optimization.core._batch import solve_batch
from opifex.optimization.core._implicit import attach_implicit_grad
from opifex.optimization.core._solver import Solution, Solver, advance, solve
from opifex.optimization.core._status import SolverError, Status
from opifex.optimization.core._tree import tree_all_finite, tree_norm, tree_select, tree_vdot

__all__ = [
    "Solution",
    "Solver",
    "SolverError",
    "Status",
    "advance",
    "attach_implicit_grad",
    "solve",
    "solve_batch",
    "tree_all_finite",
    "tree_norm",
    "tree_select",
    "tree_vdot",
]
