"""Configurations of the second-order optimizers.

Each config is a frozen, keyword-only dataclass validated at construction; its fields map
one-to-one onto the keyword arguments of the matching factory in
:mod:`opifex.optimization.second_order.wrappers`, and every field changes behaviour.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

_LINESEARCHES = ("zoom", "backtracking")
_LINEAR_SOLVERS = ("qr", "cholesky")
_JACOBIANS = ("auto", "fwd", "rev")
_SWITCH_CRITERIA = ("step", "plateau", "gradient_variance")


def _check(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {rule}, got {value!r}.")


def _int_at_least(name: str, value, lo: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    _check(ok, name, value, f"an int >= {lo}")


def _nonneg(name: str, value) -> None:
    _check(isinstance(value, (int, float)) and value >= 0, name, value, "a float >= 0")


def _positive(name: str, value) -> None:
    _check(isinstance(value, (int, float)) and value > 0, name, value, "a float > 0")


def _choice(name: str, value, options) -> None:
    _check(value in options, name, value, f"one of {options}")


class _Config:
    def replace(self, **changes):
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_kwargs(self) -> dict:
        """The fields as the keyword arguments of the matching factory."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class LBFGSConfig(_Config):
    """L-BFGS (Nocedal & Wright, Alg. 7.4 and 7.5) with a strong-Wolfe line search.

    Attributes:
        memory_size: Number of curvature pairs ``(s, y)`` kept (>= 1).
        max_iterations: Iterations after which the solver stops with ``MAX_STEPS``.
        gtol: Converged when ``max|grad| <= gtol`` (scipy's ``pgtol``).
        ftol: Converged when ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``
            (scipy's ``factr * eps``); 0 disables the test.
        learning_rate: Scale of the first trial step along the search direction.
        linesearch: ``"zoom"`` (strong Wolfe, Nocedal & Wright Alg. 3.5/3.6, with a
            backtracking fallback) or ``"backtracking"`` (Armijo only).
        max_linesearch_steps: Function evaluations a line search may spend.
        c1: Sufficient-decrease (Armijo) constant, ``0 < c1 < c2``.
        c2: Curvature constant of the strong Wolfe condition, ``c1 < c2 < 1``.
        curvature_eps: A pair is skipped unless ``s'y > curvature_eps * ||s|| * ||y||``.
        scale_init_precond: Scale the initial inverse Hessian by ``s'y / y'y``.
    """

    memory_size: int = 10
    max_iterations: int = 1000
    gtol: float = 1e-8
    ftol: float = 0.0
    learning_rate: float = 1.0
    linesearch: str = "zoom"
    max_linesearch_steps: int = 30
    c1: float = 1e-4
    c2: float = 0.9
    curvature_eps: float = 1e-12
    scale_init_precond: bool = True

    def __post_init__(self) -> None:
        _int_at_least("memory_size", self.memory_size, 1)
        _int_at_least("max_iterations", self.max_iterations, 1)
        _nonneg("gtol", self.gtol)
        _nonneg("ftol", self.ftol)
        _positive("learning_rate", self.learning_rate)
        _choice("linesearch", self.linesearch, _LINESEARCHES)
        _int_at_least("max_linesearch_steps", self.max_linesearch_steps, 1)
        _check(0 < self.c1 < 1, "c1", self.c1, "in (0, 1)")
        _check(self.c1 < self.c2 < 1, "c2", self.c2, f"in (c1={self.c1}, 1)")
        _nonneg("curvature_eps", self.curvature_eps)
        _check(
            isinstance(self.scale_init_precond, bool),
            "scale_init_precond",
            self.scale_init_precond,
            "a bool",
        )


@dataclass(frozen=True, kw_only=True)
class BFGSConfig(_Config):
    """Dense (optionally self-scaled) BFGS with a strong-Wolfe line search.

    Attributes:
        max_iterations: Iterations after which the solver stops with ``MAX_STEPS``.
        gtol: Converged when ``max|grad| <= gtol``.
        ftol: Converged when the relative reduction of ``f`` falls below ``ftol`` (0: off).
        self_scaling: Oren-Luenberger self-scaled updates with Al-Baali's ``tau <= 1``.
        max_linesearch_steps: Function evaluations a line search may spend.
        c1: Sufficient-decrease (Armijo) constant, ``0 < c1 < c2``.
        c2: Curvature constant of the strong Wolfe condition, ``c1 < c2 < 1``.
        curvature_eps: A pair is skipped unless ``s'y > curvature_eps * ||s|| * ||y||``.
    """

    max_iterations: int = 1000
    gtol: float = 1e-8
    ftol: float = 0.0
    self_scaling: bool = True
    max_linesearch_steps: int = 30
    c1: float = 1e-4
    c2: float = 0.9
    curvature_eps: float = 1e-12

    def __post_init__(self) -> None:
        _int_at_least("max_iterations", self.max_iterations, 1)
        _nonneg("gtol", self.gtol)
        _nonneg("ftol", self.ftol)
        _check(isinstance(self.self_scaling, bool), "self_scaling", self.self_scaling, "a bool")
        _int_at_least("max_linesearch_steps", self.max_linesearch_steps, 1)
        _check(0 < self.c1 < 1, "c1", self.c1, "in (0, 1)")
        _check(self.c1 < self.c2 < 1, "c2", self.c2, f"in (c1={self.c1}, 1)")
        _nonneg("curvature_eps", self.curvature_eps)


@dataclass(frozen=True, kw_only=True)
class NysNewtonCGConfig(_Config):
    """Nyström-preconditioned damped Newton-CG (Rathore et al. 2024).

    Attributes:
        max_iterations: Newton iterations after which the solver stops with ``MAX_STEPS``.
        rank: Rank of the randomized Nyström sketch of the Hessian (>= 1).
        mu: Damping added to the Hessian (> 0).
        precond_update_freq: Iterations between sketch refreshes (>= 1).
        cg_tol: Relative residual tolerance of the preconditioned CG solve.
        cg_max_iterations: Hessian-vector products one CG solve may spend (>= 1).
        learning_rate: First trial step of the Armijo backtracking search.
        gtol: Converged when ``max|grad| <= gtol``.
        seed: Seed of the random sketches.
    """

    max_iterations: int = 100
    rank: int = 60
    mu: float = 1e-2
    precond_update_freq: int = 20
    cg_tol: float = 1e-10
    cg_max_iterations: int = 100
    learning_rate: float = 1.0
    gtol: float = 1e-10
    seed: int = 0

    def __post_init__(self) -> None:
        _int_at_least("max_iterations", self.max_iterations, 1)
        _int_at_least("rank", self.rank, 1)
        _positive("mu", self.mu)
        _int_at_least("precond_update_freq", self.precond_update_freq, 1)
        _nonneg("cg_tol", self.cg_tol)
        _int_at_least("cg_max_iterations", self.cg_max_iterations, 1)
        _positive("learning_rate", self.learning_rate)
        _nonneg("gtol", self.gtol)
        _int_at_least("seed", self.seed, 0)


@dataclass(frozen=True, kw_only=True)
class GaussNewtonConfig(_Config):
    """Gauss-Newton for nonlinear least squares ``min 0.5 ||r(x)||^2``.

    Attributes:
        max_iterations: Iterations after which the solver stops with ``MAX_STEPS``.
        ftol: Converged when the relative reduction of ``||r||^2`` falls below ``ftol``.
        xtol: Converged when ``||dx|| <= xtol * (xtol + ||x||)``.
        gtol: Converged when ``max|J' r| <= gtol``.
        linear_solver: ``"qr"`` (least-squares solve of ``J dx = -r``) or ``"cholesky"`` of
            ``J'J`` (falls back to QR when the factor is not finite).
        jacobian: ``"fwd"``, ``"rev"`` or ``"auto"`` (forward mode when residuals >= params).
        line_search: Backtrack (Armijo) along the Gauss-Newton step to guarantee decrease.
        max_linesearch_steps: Halvings a backtracking search may spend.
    """

    max_iterations: int = 100
    ftol: float = 1e-12
    xtol: float = 1e-12
    gtol: float = 1e-12
    linear_solver: str = "qr"
    jacobian: str = "auto"
    line_search: bool = True
    max_linesearch_steps: int = 30

    def __post_init__(self) -> None:
        _int_at_least("max_iterations", self.max_iterations, 1)
        _nonneg("ftol", self.ftol)
        _nonneg("xtol", self.xtol)
        _nonneg("gtol", self.gtol)
        _choice("linear_solver", self.linear_solver, _LINEAR_SOLVERS)
        _choice("jacobian", self.jacobian, _JACOBIANS)
        _check(isinstance(self.line_search, bool), "line_search", self.line_search, "a bool")
        _int_at_least("max_linesearch_steps", self.max_linesearch_steps, 1)


@dataclass(frozen=True, kw_only=True)
class LevenbergMarquardtConfig(_Config):
    """Levenberg-Marquardt with Moré's diagonal scaling (Moré 1978; MINPACK ``lmder``).

    The defaults are tuned on the NIST StRD problems in float64 (``opifex bench
    second-order``): tight tolerances for accuracy, a small initial damping for few
    evaluations.

    Attributes:
        max_iterations: Steps (accepted or rejected) after which the solver stops with
            ``MAX_STEPS``.
        ftol: Converged when actual and predicted relative reductions of ``||r||^2`` are
            both below ``ftol``, or the predicted one is for a step the damping does not
            dominate (the actual one is rounding noise there).
        xtol: Converged when the scaled step ``||D p||`` is below ``max(xtol, eps)`` times
            ``||D x||``.
        gtol: Converged when the cosine between ``r`` and every Jacobian column is below
            ``gtol``.
        initial_damping: Initial damping, relative to the largest diagonal entry of
            ``D^-1 J'J D^-1`` (Nielsen's ``tau``).
        damping_increase: Growth factor of the damping at the first rejected step in a row
            (doubled after each further rejection, Nielsen 1999).
        min_damping: Lower clip of the damping.
        max_damping: A rejection that would raise the damping above this ends the solve with
            ``STAGNATED``.
        scale_diag: Moré scaling, ``D = diag`` of the running max of Jacobian column norms;
            ``False`` uses ``D = I`` (plain Marquardt damping).
        linear_solver: ``"qr"`` of the stacked ``[J; sqrt(lambda) D]`` or ``"cholesky"`` of
            ``J'J + lambda D'D`` (falls back to QR when the factor is not finite).
        jacobian: ``"fwd"``, ``"rev"`` or ``"auto"`` (forward mode when residuals >= params).
    """

    max_iterations: int = 1000
    ftol: float = 1e-20
    xtol: float = 1e-15
    gtol: float = 1e-15
    initial_damping: float = 1e-6
    damping_increase: float = 2.0
    min_damping: float = 1e-30
    max_damping: float = 1e15
    scale_diag: bool = True
    linear_solver: str = "qr"
    jacobian: str = "auto"

    def __post_init__(self) -> None:
        _int_at_least("max_iterations", self.max_iterations, 1)
        _nonneg("ftol", self.ftol)
        _nonneg("xtol", self.xtol)
        _nonneg("gtol", self.gtol)
        _positive("initial_damping", self.initial_damping)
        _check(self.damping_increase > 1, "damping_increase", self.damping_increase, "> 1")
        _positive("min_damping", self.min_damping)
        _check(
            self.max_damping > self.min_damping,
            "max_damping",
            self.max_damping,
            f"> min_damping={self.min_damping}",
        )
        _check(isinstance(self.scale_diag, bool), "scale_diag", self.scale_diag, "a bool")
        _choice("linear_solver", self.linear_solver, _LINEAR_SOLVERS)
        _choice("jacobian", self.jacobian, _JACOBIANS)


@dataclass(frozen=True, kw_only=True)
class HybridOptimizerConfig(_Config):
    """Adam first, then L-BFGS, switching inside ``jit``.

    Attributes:
        adam_learning_rate: Adam's step size.
        adam_b1: Adam's first-moment decay.
        adam_b2: Adam's second-moment decay.
        adam_eps: Adam's denominator offset.
        switch_criterion: ``"step"`` (at ``switch_step``), ``"plateau"`` (relative loss
            improvement over ``plateau_window`` steps below ``plateau_threshold``) or
            ``"gradient_variance"`` (coefficient of variation of the gradient norm over
            ``plateau_window`` steps below ``gradient_variance_threshold``). Under every
            criterion the switch happens at ``switch_step`` at the latest.
        switch_step: Adam steps after which L-BFGS takes over regardless.
        min_adam_steps: Adam steps before any criterion may trigger.
        plateau_window: Window (steps) of the plateau and gradient-variance tests.
        plateau_threshold: Relative loss improvement over the window that counts as plateau.
        gradient_variance_threshold: Coefficient of variation below which gradients count as
            settled.
        lbfgs: The L-BFGS phase's configuration.
    """

    adam_learning_rate: float = 1e-3
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    switch_criterion: str = "plateau"
    switch_step: int = 1000
    min_adam_steps: int = 10
    plateau_window: int = 50
    plateau_threshold: float = 1e-3
    gradient_variance_threshold: float = 0.1
    lbfgs: LBFGSConfig = field(default_factory=LBFGSConfig)

    def __post_init__(self) -> None:
        _positive("adam_learning_rate", self.adam_learning_rate)
        _check(0 <= self.adam_b1 < 1, "adam_b1", self.adam_b1, "in [0, 1)")
        _check(0 <= self.adam_b2 < 1, "adam_b2", self.adam_b2, "in [0, 1)")
        _positive("adam_eps", self.adam_eps)
        _choice("switch_criterion", self.switch_criterion, _SWITCH_CRITERIA)
        _int_at_least("switch_step", self.switch_step, 0)
        _int_at_least("min_adam_steps", self.min_adam_steps, 0)
        _int_at_least("plateau_window", self.plateau_window, 1)
        _nonneg("plateau_threshold", self.plateau_threshold)
        _nonneg("gradient_variance_threshold", self.gradient_variance_threshold)
        _check(isinstance(self.lbfgs, LBFGSConfig), "lbfgs", self.lbfgs, "an LBFGSConfig")


__all__ = [
    "BFGSConfig",
    "GaussNewtonConfig",
    "HybridOptimizerConfig",
    "LBFGSConfig",
    "LevenbergMarquardtConfig",
    "NysNewtonCGConfig",
]
