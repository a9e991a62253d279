"""MGH problems: every published minimum checked, and a smoke run of the MGH benchmark part."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console
from scipy.optimize import least_squares

from opifex.benchmarks._harness import Context
from opifex.benchmarks.problems import mgh

PROBLEMS = mgh.problems()

# f* as printed by Moré, Garbow & Hillstrom (1981), to the digits printed there.
PUBLISHED = {
    "jennrich_sampson": 124.362,
    "bard": 8.21487e-3,
    "gaussian": 1.12793e-8,
    "meyer": 87.9458,
    "kowalik_osborne": 3.07505e-4,
    "brown_dennis": 85822.2,
    "osborne1": 5.46489e-5,
    "osborne2": 4.01377e-2,
    "watson6": 2.28767e-3,
    "watson9": 1.39976e-6,
    "penalty1_4": 2.24998e-5,
    "chebyquad8": 3.51687e-3,
    "linear_full_rank10": 10.0,
}

# Published minimisers of problems whose minimiser is not unique (f* = 0 there).
KNOWN_POINTS = {
    "box_3d": [1.0, 10.0, 1.0],
    "biggs_exp6": [1.0, 10.0, 1.0, 5.0, 4.0, 3.0],
    "brown_almost_linear10": [1.0] * 10,
    "powell_badly_scaled": [1.098159e-5, 9.106146],
}


def _f(problem, x):
    r = jax.jit(problem.residual)(jnp.asarray(x, jnp.float64), problem.args)
    return float(jnp.vdot(r, r))


def test_names_unique_and_shapes():
    names = [p.name for p in PROBLEMS]
    assert len(names) == len(set(names)) >= 25
    for p in PROBLEMS:
        r = jax.jit(p.residual)(jnp.asarray(p.x0), p.args)
        assert r.ndim == 1 and r.size >= p.n, p.name
        assert np.isfinite(_f(p, p.x0)) and _f(p, p.x0) > p.f_star, p.name


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_published_minimum(problem):
    if problem.name in PUBLISHED:
        digits = PUBLISHED[problem.name]
        assert abs(problem.f_star - digits) <= 6e-6 * abs(digits), problem.name
    if problem.x_star is not None:
        assert _f(problem, problem.x_star) == pytest.approx(problem.f_star, abs=1e-20, rel=1e-12)
    elif problem.name in KNOWN_POINTS:
        assert _f(problem, KNOWN_POINTS[problem.name]) <= 1e-10 + problem.f_star
    else:
        # No closed-form minimiser: scipy's Levenberg-Marquardt from x0 must reach f*.
        fun = jax.jit(problem.residual)
        jac = jax.jit(jax.jacfwd(problem.residual))
        res = least_squares(
            lambda x: np.asarray(fun(x, problem.args)),
            problem.x0,
            jac=lambda x: np.asarray(jac(x, problem.args)),
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
            max_nfev=5000,
        )
        f = float(np.sum(res.fun**2))
        assert f == pytest.approx(problem.f_star, rel=1e-9, abs=1e-20)


def test_get_unknown_name():
    with pytest.raises(KeyError, match="rosenbrock"):
        mgh.get("no_such_problem")


def test_mgh_benchmark_smoke(tmp_path, monkeypatch):
    from opifex.benchmarks.second_order import _mgh

    monkeypatch.setattr(_mgh, "QUICK_PROBLEMS", ("rosenbrock",))
    ctx = Context(suite="second-order", quick=True, out_dir=tmp_path, console=Console(quiet=True))
    records = _mgh.run(ctx)
    assert records and all(r.name and np.isfinite(r.value) for r in records)
    by_name = {r.name: r for r in records}
    assert by_name["mgh lbfgs: f on rosenbrock"].value <= 1e-10
    assert (tmp_path / "mgh_lbfgs.png").exists()
    assert (tmp_path / "mgh_details.json").exists()
