"""The front door: manufactured solutions reach a stated error; failures are reported."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization.scientific_integration import (
    ConservationLaw,
    PhysicsInformedLoss,
    ResidualTerm,
    ScientificComputingIntegrator,
    ScientificIntegrationConfig,
    TrainingDivergedError,
    apply_mlp,
    init_mlp,
    partial,
)

QUIET = {"progress": False, "validate": False}


def _poisson():
    """-u'' = pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0; u = sin(pi x)."""
    pde = lambda u, x, f: -partial(u, x, 0, 2)[2] - f  # noqa: E731
    bc = lambda u, x, _: u(x)  # noqa: E731
    loss = PhysicsInformedLoss(apply_mlp, (ResidualTerm("pde", pde), ResidualTerm("bc", bc)))
    x = np.linspace(0, 1, 32)[:, None]
    batch = {
        "pde": {"points": x, "targets": np.pi**2 * np.sin(np.pi * x[:, 0])},
        "bc": {"points": np.array([[0.0], [1.0]]), "targets": None},
    }
    xt = np.linspace(0, 1, 101)[:, None]
    return loss, batch, (xt, np.sin(np.pi * xt[:, 0]))


def test_helmholtz_2d_manufactured_solution_reaches_stated_error():
    """u_xx + u_yy + k^2 u = q on [-1, 1]^2 with u = sin(pi x) sin(2 pi y), u = 0 on the edge."""
    k = 1.0

    def exact(p):
        return np.sin(np.pi * p[:, 0]) * np.sin(2 * np.pi * p[:, 1])

    def pde(u, p, q):
        value, _, uxx = partial(u, p, 0, 2)
        _, _, uyy = partial(u, p, 1, 2)
        return uxx + uyy + k**2 * value - q

    g = np.linspace(-1, 1, 14)
    xx, yy = np.meshgrid(g[1:-1], g[1:-1])
    inner = np.stack([xx.ravel(), yy.ravel()], 1)
    edge = np.concatenate(
        [
            np.stack([g, -np.ones_like(g)], 1),
            np.stack([g, np.ones_like(g)], 1),
            np.stack([-np.ones_like(g), g], 1),
            np.stack([np.ones_like(g), g], 1),
        ]
    )
    q = (k**2 - 5 * np.pi**2) * exact(inner)
    loss = PhysicsInformedLoss(
        apply_mlp, (ResidualTerm("pde", pde), ResidualTerm("bc", lambda u, p, _: u(p), 10.0))
    )
    batch = {"pde": {"points": inner, "targets": q}, "bc": {"points": edge, "targets": None}}
    t = np.linspace(-1, 1, 41)
    tx, ty = np.meshgrid(t, t)
    test = np.stack([tx.ravel(), ty.ravel()], 1)
    config = ScientificIntegrationConfig(
        adam_steps=200, adam_learning_rate=1e-2, second_order_steps=400, log_every=600, **QUIET
    )
    params = init_mlp(jax.random.PRNGKey(0), (2, 20, 20, 1))
    result = ScientificComputingIntegrator(config=config).train(
        loss, params, batch, reference=(test, exact(test))
    )
    assert result.relative_l2 < 2e-2


def test_nonfinite_run_stops_with_last_finite_params_and_findings():
    # 0 * sqrt(1.5 - u) adds nothing until the pull towards u = 10 takes u past 1.5: NaN.
    term = ResidualTerm("fit", lambda u, x, _: (u(x) - 10.0) + 0.0 * jnp.sqrt(1.5 - u(x)))
    loss = PhysicsInformedLoss(apply_mlp, (term,))
    batch = {"fit": {"points": np.linspace(0, 1, 8)[:, None], "targets": None}}
    config = ScientificIntegrationConfig(
        adam_steps=500, adam_learning_rate=0.1, second_order="none", log_every=50, **QUIET
    )
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    with pytest.raises(TrainingDivergedError, match="non-finite in stage 'adam'") as info:
        ScientificComputingIntegrator(config=config).train(loss, params, batch)
    result = info.value.result
    assert np.isfinite(float(loss(result.params, loss.check_batch(batch))))
    assert result.validation is not None
    assert "Validator findings" in str(info.value)
    assert result.stages[0]["status"] == "NONFINITE"


def test_bad_reference_and_batch_are_rejected_before_training():
    loss, batch, (xt, ut) = _poisson()
    integrator = ScientificComputingIntegrator(config=ScientificIntegrationConfig(**QUIET))
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    bad = ut.copy()
    bad[[4, 9]] = np.nan
    with pytest.raises(ValueError, match="4"):
        integrator.train(loss, params, batch, reference=(xt, bad))
    batch["bc"]["points"] = np.array([[0.0], [np.inf]])
    with pytest.raises(ValueError, match=r"points of term 'bc'.*\[1\]"):
        integrator.train(loss, params, batch, reference=(xt, ut))


@pytest.mark.parametrize(
    ("changes", "stages"),
    [
        ({}, ["adam", "bfgs"]),
        ({"adam_steps": 0}, ["bfgs"]),
        ({"second_order": "lbfgs"}, ["adam", "lbfgs"]),
        ({"second_order": "none"}, ["adam"]),
        ({"polish": "nncg", "polish_steps": 3}, ["adam", "bfgs", "nncg"]),
    ],
)
def test_stage_plan_follows_config(changes, stages):
    loss, _, _ = _poisson()
    config = ScientificIntegrationConfig(**{**QUIET, **changes})
    assert [s.name for s in ScientificComputingIntegrator(config=config).stages(loss)] == stages


def test_config_fields_take_effect_in_a_run():
    loss, batch, ref = _poisson()
    params = init_mlp(jax.random.PRNGKey(0), (1, 6, 1))
    base = dict(
        adam_steps=20,
        second_order="lbfgs",
        second_order_steps=10,
        lbfgs_memory=3,
        log_every=10,
        **QUIET,
    )
    result = ScientificComputingIntegrator(config=ScientificIntegrationConfig(**base)).train(
        loss, params, batch, reference=ref
    )
    assert [s["iterations"] for s in result.stages] == [20, 10]
    # The history is recorded per chunk of log_every iterations, on one clock, across stages.
    # (The Poisson run to 1e-4 by Adam then BFGS is the README's example: tests/test_readme.py.)
    assert list(result.history["iteration"]) == [10, 20, 30]
    assert np.all(np.diff(result.history["seconds"]) >= 0)
    assert result.history["relative_l2"][-1] == pytest.approx(result.relative_l2)
    assert result.stages[1]["name"] == "lbfgs" and result.validation is None
    small = {"adam_steps": 20, "second_order": "none", "log_every": 10, "progress": False}
    validated = ScientificComputingIntegrator(
        config=ScientificIntegrationConfig(**small, adam_learning_rate=1e-2)
    ).train(loss, params, batch)
    assert validated.validation is not None and validated.validation.loss > 0
    assert validated.history["loss"][0] != result.history["loss"][0]


def test_conservation_laws_are_checked_on_outputs():
    loss, batch, _ = _poisson()
    config = ScientificIntegrationConfig(adam_steps=10, second_order="none", **QUIET)
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    law = ConservationLaw.linear("mean zero", np.ones((1, 3)) / 3, np.zeros(1), tolerance=1e9)
    result = ScientificComputingIntegrator(config=config).train(
        loss,
        params,
        batch,
        conservation_laws=[law],
        outputs_fn=lambda p: apply_mlp(p, jnp.array([[0.1], [0.5], [0.9]])),
    )
    outputs = apply_mlp(result.params, jnp.array([[0.1], [0.5], [0.9]]))
    assert result.conservation[0].max_violation == pytest.approx(abs(float(jnp.mean(outputs))))


def test_bad_config_values_raise():
    for bad in (
        {"adam_steps": -1},
        {"loss_balancing": "magic"},
        {"second_order": "newton"},
        {"polish": "sgd"},
        {"log_every": 0},
        {"nncg_mu": 0.0},
        {"adam_steps": 0, "second_order": "none"},
    ):
        with pytest.raises(ValueError):
            ScientificIntegrationConfig(**bad)
    with pytest.raises(TypeError, match="ScientificIntegrationConfig"):
        ScientificComputingIntegrator(config={"adam_steps": 1})


def test_plot_writes_a_png(tmp_path):
    loss, batch, ref = _poisson()
    config = ScientificIntegrationConfig(adam_steps=20, second_order="none", log_every=5, **QUIET)
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    result = ScientificComputingIntegrator(config=config).train(loss, params, batch, reference=ref)
    path = ScientificComputingIntegrator.plot({"adam": result}, tmp_path / "curve.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_profile_reports_points_and_xla_figures():
    loss, batch, _ = _poisson()
    integrator = ScientificComputingIntegrator(config=ScientificIntegrationConfig(**QUIET))
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    report = integrator.profile(loss, params, loss.check_batch(batch))
    assert report.num_points == 34
    assert report.compile_time_s > 0 and report.step_time_s > 0
    assert report.throughput == pytest.approx(34 / report.step_time_s)
    assert report.flops is None or report.flops > 0


def test_loss_balancing_changes_the_adam_trajectory():
    loss, batch, ref = _poisson()
    params = init_mlp(jax.random.PRNGKey(0), (1, 4, 1))
    finals = {}
    for rule in ("none", "annealing", "relobralo", "ntk"):
        config = ScientificIntegrationConfig(
            adam_steps=20,
            adam_learning_rate=1e-2,
            loss_balancing=rule,
            balancing_every=5,
            second_order="none",
            log_every=20,
            **QUIET,
        )
        result = ScientificComputingIntegrator(config=config).train(
            loss, params, batch, reference=ref
        )
        assert result.stages[0]["iterations"] == 20 and np.isfinite(result.relative_l2)
        finals[rule] = result.relative_l2
    # The reported loss is the unweighted objective; the balanced runs took other steps.
    assert len({round(v, 12) for v in finals.values()}) == 4
