"""DC3's convex QP family and its OSQP baseline.

``minimize_y 1/2 y'Qy + p'y  subject to  A y = x,  G y <= h``, one instance per row ``x`` of
``X``, generated as DC3's ``datasets/simple/make_dataset.py`` does (same random calls in the same
order from ``np.random.seed(17)``): ``Q = diag(random(n))``, ``p = random(n)``,
``A = normal(0, 1, (m_eq, n))``, ``X = uniform(-1, 1, (N, m_eq))``, ``G = normal(0, 1, (m_in, n))``,
``h = sum(|G pinv(A)|, axis=1)``. The last construction makes ``pinv(A) x`` strictly feasible
whenever ``max|x| < 1`` (``G pinv(A) x <= sum|G pinv(A)| max|x| < h``), which
:meth:`DC3QP.interior_point` exposes. DC3 then picks its free variables with further
``np.random.choice`` calls; our completion uses the last ``m_eq`` variables instead, which needs
no random draw and leaves the data unchanged.

DC3's OSQP baseline (``utils.py``, ``SimpleProblem.opt_solve``) sets up a fresh solver per
instance with OSQP's defaults (``eps_abs = eps_rel = 1e-3``, polishing off) and only
``eps_prim_inf = 1e-4``, and times ``solve()`` alone. :func:`solve_osqp` with
``protocol="dc3"`` repeats that call and reproduces DC3's published row on the test set
(objective -15.047, mean per-instance max equality residual 1.436e-4 and inequality violation
5.37e-4); the default ``protocol="tight"`` sets ``eps_abs = eps_rel = eps``, the fair peer for
accuracy claims.

Reference: Donti, Rolnick & Kolter, "DC3: A learning method for optimization with hard
constraints", ICLR 2021, Table 1 and github.com/locuslab/DC3.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from opifex.optimization.l2o.constraint_learning import LinearConstraints

_PROTOCOLS = ("tight", "dc3")


class DC3Split(NamedTuple):
    """Instance parameters of DC3's train / validation / test split."""

    train: np.ndarray  # (N_train, m_eq)
    valid: np.ndarray  # (N_valid, m_eq)
    test: np.ndarray  # (N_test, m_eq)


class DC3QP(NamedTuple):
    """The QP family: shared ``Q, p, A, G, h`` and one instance per row of ``X``."""

    Q: np.ndarray  # (n, n) diagonal, entries in [0, 1)
    p: np.ndarray  # (n,)
    A: np.ndarray  # (m_eq, n)
    G: np.ndarray  # (m_in, n)
    h: np.ndarray  # (m_in,)
    X: np.ndarray  # (N, m_eq) instance parameters, uniform on [-1, 1]
    valid_frac: float = 0.0833
    test_frac: float = 0.0833

    def split(self) -> DC3Split:
        """DC3's split: train first, then validation, then test (833 each of 10000 rows).

        The boundaries are computed with DC3's float arithmetic, ``int(N * fraction)``.
        """
        num = self.X.shape[0]
        train_frac = 1 - self.valid_frac - self.test_frac
        end_train = int(num * train_frac)
        end_valid = int(num * (train_frac + self.valid_frac))
        return DC3Split(self.X[:end_train], self.X[end_train:end_valid], self.X[end_valid:])

    def objective(self, y):
        """``1/2 y'Qy + p'y`` over the last axis (numpy or JAX arrays, differentiable)."""
        return 0.5 * ((y @ self.Q) * y).sum(-1) + y @ self.p

    def constraints(self) -> LinearConstraints:
        """The constraints as :class:`LinearConstraints` (numpy arrays)."""
        return LinearConstraints(self.A, self.G, self.h)

    def interior_point(self, x):
        """``pinv(A) x`` (rows of a batch ``x``): on ``A y = x``, strictly feasible if |x| < 1."""
        return x @ np.linalg.pinv(self.A).T


def make_dc3_qp(
    num_var: int = 100,
    num_eq: int = 50,
    num_ineq: int = 50,
    num_examples: int = 10000,
    seed: int = 17,
) -> DC3QP:
    """Generate DC3's convex QP family (see the module docstring).

    The draws match DC3's dataset bit for bit; NumPy's global random state is left alone.

    Args:
        num_var: Variables ``n``.
        num_eq: Equality constraints ``m_eq`` (``<= num_var``).
        num_ineq: Inequality constraints ``m_in``.
        num_examples: Instances ``N``.
        seed: The seed (DC3: 17).

    Returns:
        The :class:`DC3QP`.

    Raises:
        ValueError: On non-positive sizes or ``num_eq > num_var``.

    Example:
        >>> qp = make_dc3_qp(num_var=4, num_eq=2, num_ineq=2, num_examples=12)
        >>> qp.A.shape, qp.X.shape, [s.shape[0] for s in qp.split()]
        ((2, 4), (12, 2), [10, 1, 1])
    """
    sizes = {"num_var": num_var, "num_eq": num_eq, "num_ineq": num_ineq}
    sizes["num_examples"] = num_examples
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    if num_eq > num_var:
        raise ValueError(f"num_eq must be <= num_var, got num_eq={num_eq} > num_var={num_var}.")
    # A RandomState draws the same stream as DC3's calls on NumPy's global state, in the same
    # order, without touching the caller's global state; a Generator would change every number.
    rng = np.random.RandomState(seed)
    Q = np.diag(rng.random(num_var))
    p = rng.random(num_var)
    A = rng.normal(loc=0, scale=1.0, size=(num_eq, num_var))
    X = rng.uniform(-1, 1, size=(num_examples, num_eq))
    G = rng.normal(loc=0, scale=1.0, size=(num_ineq, num_var))
    h = np.sum(np.abs(G @ np.linalg.pinv(A)), axis=1)
    return DC3QP(Q, p, A, G, h, X)


class OSQPResult(NamedTuple):
    """Per-instance results of :func:`solve_osqp` (all arrays have one entry per row of X)."""

    Y: np.ndarray  # (N, n) OSQP's primal iterate (returned whatever the status)
    objective: np.ndarray  # (N,) 1/2 y'Qy + p'y of Y
    iterations: np.ndarray  # (N,) int, ADMM iterations
    times: np.ndarray  # (N,) s, wall time per instance: setup (or update) plus solve
    solve_times: np.ndarray  # (N,) s, the solve() call alone (what DC3 timed)
    solved: np.ndarray  # (N,) bool, status "solved" (DC3 replaced the others by NaN)
    setup_time: float  # s, the one shared setup when reuse=True, else 0.0


def solve_osqp(
    problem: DC3QP,
    X,
    *,
    eps: float = 1e-4,
    reuse: bool = False,
    protocol: str = "tight",
) -> OSQPResult:
    """Solve the instances ``X`` one at a time with OSQP, timing each with ``perf_counter``.

    Args:
        problem: The QP family.
        X: Instance parameters, shape ``(N, m_eq)``.
        eps: ``protocol="tight"``: ``eps_abs = eps_rel = eps``. ``protocol="dc3"``: DC3's call,
            OSQP's default ``eps_abs = eps_rel = 1e-3`` and ``eps_prim_inf = eps``.
        reuse: ``False``: a fresh ``setup`` per instance (DC3's protocol). ``True``: one setup,
            then ``update(l=, u=)`` per instance, warm-started from the previous solution
            (OSQP's default), the stronger sequential peer.
        protocol: ``"tight"`` or ``"dc3"`` (see ``eps``). Polishing is off in both, as in DC3.

    Returns:
        An :class:`OSQPResult`.

    Raises:
        ValueError: On a bad ``X`` shape, ``eps`` or ``protocol``.
        ImportError: If ``osqp`` is not installed (``pip install osqp``).

    Example:
        >>> qp = make_dc3_qp(num_var=6, num_eq=2, num_ineq=3, num_examples=4)
        >>> res = solve_osqp(qp, qp.X, reuse=True)
        >>> bool(res.solved.all()), res.Y.shape
        (True, (4, 6))
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}.")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a float > 0, got {eps!r}.")
    X = np.asarray(X, dtype=np.float64)
    m_eq, n = problem.A.shape
    if X.ndim != 2 or X.shape[1] != m_eq:
        raise ValueError(
            f"X must have shape (N, {m_eq}) (one row per instance), got {X.shape}. "
            "Pass a 2-D batch, e.g. X[None] for one instance."
        )
    import osqp
    import scipy.sparse as sp

    if protocol == "tight":
        settings = {"eps_abs": eps, "eps_rel": eps}
    else:
        settings = {"eps_prim_inf": eps}
    settings["verbose"] = False
    P = sp.csc_matrix(np.triu(problem.Q))
    M = sp.csc_matrix(np.vstack([problem.A, problem.G]))
    open_below = np.full(problem.h.shape, -np.inf)

    def bounds(x):
        return np.concatenate([x, open_below]), np.concatenate([x, problem.h])

    num = X.shape[0]
    Y = np.full((num, n), np.nan)
    iterations = np.zeros(num, dtype=np.int64)
    times, solve_times = np.zeros(num), np.zeros(num)
    solved = np.zeros(num, dtype=bool)
    setup_time = 0.0
    if reuse and num:
        start = time.perf_counter()
        solver = osqp.OSQP()
        solver.setup(P=P, q=problem.p, A=M, l=bounds(X[0])[0], u=bounds(X[0])[1], **settings)
        setup_time = time.perf_counter() - start
    for i, x in enumerate(X):
        lower, upper = bounds(x)
        start = time.perf_counter()
        if reuse:
            solver.update(l=lower, u=upper)
        else:
            solver = osqp.OSQP()
            solver.setup(P=P, q=problem.p, A=M, l=lower, u=upper, **settings)
        solve_start = time.perf_counter()
        result = solver.solve(raise_error=False)
        end = time.perf_counter()
        times[i], solve_times[i] = end - start, end - solve_start
        if result.x is not None:
            Y[i] = result.x
        iterations[i] = result.info.iter
        solved[i] = result.info.status == "solved"
    return OSQPResult(Y, problem.objective(Y), iterations, times, solve_times, solved, setup_time)
