"""DC3's QP family: the generator's draws, its split, its interior point and the OSQP row."""

import time

import numpy as np
import pytest

from opifex.benchmarks.problems.dc3_qp import make_dc3_qp, solve_osqp
from opifex.optimization.l2o.constraint_learning import feasibility_report


@pytest.fixture(scope="module")
def qp():
    return make_dc3_qp()


def test_draws_follow_dc3_script(qp):
    # np.random.seed(17); random(3) and, after 200 uniform draws, normal(0, 1, 3): the values
    # DC3's script gets for diag(Q)[:3] and A[0, :3].
    np.testing.assert_allclose(np.diag(qp.Q)[:3], [0.294665, 0.53058676, 0.19152079], atol=1e-8)
    np.testing.assert_allclose(qp.A[0, :3], [0.95457384, -0.00645671, 0.21486642], atol=1e-8)
    assert np.count_nonzero(qp.Q - np.diag(np.diag(qp.Q))) == 0
    assert qp.X.shape == (10000, 50) and qp.G.shape == (50, 100) and qp.p.shape == (100,)
    np.testing.assert_allclose(qp.h, np.abs(qp.G @ np.linalg.pinv(qp.A)).sum(axis=1))
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global state must not move)
    make_dc3_qp(num_var=5, num_eq=2, num_ineq=2, num_examples=3)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_split_is_dc3s(qp):
    train, valid, test = qp.split()
    assert (len(train), len(valid), len(test)) == (8334, 833, 833)
    np.testing.assert_array_equal(test, qp.X[-833:])
    np.testing.assert_array_equal(valid, qp.X[-1666:-833])


def test_interior_point_is_strictly_feasible(qp):
    Y0 = qp.interior_point(qp.X)
    np.testing.assert_allclose(Y0 @ qp.A.T, qp.X, atol=1e-12)
    assert np.max(Y0 @ qp.G.T - qp.h) < 0


def test_objective_matches_formula(qp):
    y = np.linspace(-1, 1, 100)
    assert qp.objective(y) == pytest.approx(0.5 * y @ qp.Q @ y + qp.p @ y, rel=1e-14)
    assert qp.objective(np.stack([y, 2 * y])).shape == (2,)


@pytest.mark.slow
def test_osqp_reproduces_dc3_published_row(qp):
    # DC3 Table 1, OSQP: objective -15.047, max eq. 1.436e-4, max ineq. 5.37e-4 (each "max"
    # is the mean over test instances of the per-instance max). Measured with osqp 1.1.3:
    # -15.04695, 1.4357e-4, 5.367e-4. The residuals depend on OSQP's version, hence 25%.
    test = qp.split().test
    start = time.perf_counter()
    res = solve_osqp(qp, test, protocol="dc3")
    elapsed = time.perf_counter() - start
    assert res.solved.all()
    assert float(np.mean(res.objective)) == pytest.approx(-15.047, abs=1e-2)
    report = feasibility_report(res.Y, test, qp.constraints())
    assert float(report["eq_max_mean"]) == pytest.approx(1.436e-4, rel=0.25)
    assert float(report["ineq_max_mean"]) == pytest.approx(5.37e-4, rel=0.25)
    assert np.all(res.times >= res.solve_times) and np.all(res.solve_times > 0)
    assert res.times.sum() <= elapsed and res.setup_time == 0.0


def test_osqp_tight_fresh_and_reused_agree(qp):
    test = qp.split().test[:40]
    fresh = solve_osqp(qp, test, eps=1e-4)
    reused = solve_osqp(qp, test, eps=1e-4, reuse=True)
    for res in (fresh, reused):
        assert res.solved.all() and np.all(res.iterations > 0)
        report = feasibility_report(res.Y, test, qp.constraints())
        assert float(report["eq_max"]) < 1e-6 and float(report["ineq_max"]) < 1e-4
        # The DC3 test set's optimal objectives average -15.047; this slice is close.
        assert np.all(res.objective < 0)
    np.testing.assert_allclose(fresh.objective, reused.objective, atol=1e-3)
    assert reused.setup_time > 0


def test_bad_input(qp):
    with pytest.raises(ValueError, match=r"X must have shape \(N, 50\).*\(50,\)"):
        solve_osqp(qp, qp.X[0])
    with pytest.raises(ValueError, match="protocol must be one of"):
        solve_osqp(qp, qp.X[:1], protocol="fast")
    with pytest.raises(ValueError, match="eps must be"):
        solve_osqp(qp, qp.X[:1], eps=0.0)
    with pytest.raises(ValueError, match="num_eq must be <= num_var"):
        make_dc3_qp(num_var=3, num_eq=4)
    with pytest.raises(ValueError, match="num_examples must be an int >= 1"):
        make_dc3_qp(num_examples=0)
