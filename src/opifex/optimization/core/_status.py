"""Status codes shared by every solver, and the host-side error that reports them."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Outcome of a solve, stored as an int32 scalar in every solver state.

    ``RUNNING`` is the only code under which the driver keeps stepping.
    """

    RUNNING = 0
    CONVERGED = 1
    MAX_STEPS = 2
    NONFINITE = 3
    LINESEARCH_FAILED = 4
    STAGNATED = 5


_ADVICE = {
    Status.RUNNING: (
        "the solve stopped while still running (was the state taken from inside the loop?)",
        "call `solve` to run the solver to termination",
    ),
    Status.CONVERGED: ("the solver converged", ""),
    Status.MAX_STEPS: (
        "the step budget ran out before the tolerances were met",
        "raise `max_steps`, loosen the tolerances, or start closer to the solution",
    ),
    Status.NONFINITE: (
        "the objective or the iterate became NaN or Inf; the last finite iterate is returned",
        "check the objective for overflow/division by zero near the returned params, rescale "
        "the problem, enable float64 (jax.config.update('jax_enable_x64', True)) or add bounds",
    ),
    Status.LINESEARCH_FAILED: (
        "the line search found no step with sufficient decrease",
        "the gradient may be inaccurate or the problem badly scaled; try float64, rescale the "
        "variables or loosen the tolerances (the iterate may already be as good as precision "
        "allows)",
    ),
    Status.STAGNATED: (
        "the iterate stopped changing before the convergence tests were met",
        "the tolerances may be tighter than the precision allows; loosen them or use float64",
    ),
}


def describe(status: int) -> tuple[str, str]:
    """Return ``(what happened, what to try)`` for a status code."""
    return _ADVICE[Status(int(status))]


class SolverError(RuntimeError):
    """Raised on the host by ``Solution.raise_for_status`` when a solve did not converge."""

    def __init__(self, status: int, num_steps: int | None = None, value: float | None = None):
        self.status = Status(int(status))
        what, hint = describe(self.status)
        where = []
        if num_steps is not None:
            where.append(f"after {num_steps} steps")
        if value is not None:
            where.append(f"at objective value {value:.6g}")
        loc = f" ({', '.join(where)})" if where else ""
        super().__init__(
            f"Solver stopped with status {self.status.name}{loc}: {what}. Try: {hint}."
        )
