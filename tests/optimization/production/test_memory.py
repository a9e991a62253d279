"""Memory manager: remat choice never worse than no remat, exact gradients, budgets, donation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from opifex.optimization._production._memory import (
    NO_REMAT,
    IntelligentGPUMemoryManager,
    RematCandidate,
    accumulate_gradients,
    choose_remat,
    count_flops,
    fit_micro_batches,
    make_train_step,
    measure_compiled,
    remat_candidates,
    scan_layers,
)

FULL = RematCandidate("per-layer", "nothing_saveable")


def _layer(h, p):
    return jnp.tanh(h @ p["w"] + p["b"])


def _mlp(layers, width, batch, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "w": jax.random.normal(k1, (layers, width, width)) / np.sqrt(width),
        "b": jnp.full((layers, width), 0.1),
    }
    args = (jax.random.normal(k2, (batch, width)), jax.random.normal(k3, (batch, width)))

    def make_loss(remat):
        def loss(params, args):
            return jnp.mean((scan_layers(_layer, params, args[0], remat) - args[1]) ** 2)

        return loss

    return make_loss, params, args


def _pinn(layers=3, width=8, points=16):
    """Poisson residual u_xx + sin(x) of a 1-D MLP, second derivative by nested jvp."""
    _, hidden, _ = _mlp(layers, width, 1, seed=1)
    params = {"inp": jnp.linspace(-1.0, 1.0, width), "hidden": hidden, "out": jnp.ones(width)}
    x = jnp.linspace(0.0, 1.0, points)

    def make(remat):
        def u(p, x):
            h = jnp.tanh(x[:, None] * p["inp"])
            return scan_layers(_layer, p["hidden"], h, remat) @ p["out"]

        def loss(p, x):
            du = lambda s: jax.jvp(lambda t: u(p, t), (s,), (jnp.ones_like(s),))[1]  # noqa: E731
            uxx = jax.jvp(du, (x,), (jnp.ones_like(x),))[1]
            return jnp.mean((uxx + jnp.sin(x)) ** 2)

        return loss

    return make, params, x


def _rule(report):
    """The selection rule recomputed by hand from the measured rows."""
    base = report.rows[report.baseline].cost
    ok = [
        i
        for i, r in enumerate(report.rows)
        if r.cost.flops <= report.flops_bound * base.flops and r.cost.temp_bytes <= base.temp_bytes
    ]
    return min(ok, key=lambda i: (report.rows[i].cost.temp_bytes, report.rows[i].cost.flops))


@pytest.mark.parametrize(
    ("problem", "candidates"),
    [
        (_mlp(8, 16, 64), [remat_candidates(8)[-1]]),  # nested 2x4
        (_mlp(4, 48, 1), [FULL]),  # parameter-dominated: remat has little to save
        (_pinn(), [FULL]),
    ],
)
def test_chosen_policy_never_exceeds_baseline_memory_and_follows_rule(problem, candidates):
    make_loss, params, args = problem
    report = choose_remat(make_loss, params, args, candidates=candidates)
    base = report.rows[report.baseline]
    chosen = report.rows[report.chosen]
    assert base.candidate == NO_REMAT
    assert chosen.cost.temp_bytes <= base.cost.temp_bytes
    assert chosen.cost.flops <= 1.35 * base.cost.flops
    assert report.chosen == _rule(report)
    g0 = jax.jit(jax.grad(make_loss(NO_REMAT)))(params, args)
    for row in report.rows:
        g1 = jax.jit(jax.grad(make_loss(row.candidate)))(params, args)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_deep_stack_remat_saves_memory_and_bound_changes_the_choice():
    make_loss, params, args = _mlp(8, 16, 128)
    loose = choose_remat(make_loss, params, args, candidates=[FULL])
    assert loose.chosen_candidate == FULL
    assert loose.memory_reduction() > 0.4 and 1.2 < loose.flops_ratio() <= 1.35
    # A per-layer recompute costs one more forward pass: ~1/3 of the baseline's FLOPs.
    tight = choose_remat(make_loss, params, args, candidates=[FULL], flops_bound=1.0)
    assert tight.chosen_candidate == NO_REMAT
    assert "per-layer" in loose.table() and loose.best_reduction() == loose.memory_reduction()


def test_scan_layers_flat_and_nested_equal_a_python_loop():
    _, params, (x, _) = _mlp(6, 5, 3)
    h = x
    for i in range(6):
        h = _layer(h, jax.tree.map(lambda a, i=i: a[i], params))
    for remat in (NO_REMAT, FULL, RematCandidate("n", "dots_saveable", 3)):
        np.testing.assert_allclose(scan_layers(_layer, params, x, remat), h, rtol=1e-13)


def test_count_flops_multiplies_scan_bodies_by_their_length():
    ws, x = jnp.ones((5, 4, 4)), jnp.ones((3, 4))
    f = lambda ws, x: scan_layers(lambda h, w: jnp.tanh(h @ w), ws, x)  # noqa: E731
    # 5 layers x (matmul 2*3*4*4 + tanh 3*4).
    assert count_flops(f, ws, x) == 5 * (2 * 3 * 4 * 4 + 12)
    cost = measure_compiled(f, ws, x)
    assert cost.argument_bytes == (80 + 12) * 8 and cost.output_bytes == 12 * 8


@pytest.mark.parametrize("k", [2, 4])
def test_micro_batched_gradient_equals_full_batch(k):
    make_loss, params, args = _mlp(3, 6, 8)
    loss = make_loss(FULL)
    value, grads = jax.jit(accumulate_gradients(loss, k))(params, args)
    v0, g0 = jax.value_and_grad(loss)(params, args)
    np.testing.assert_allclose(value, v0, rtol=1e-13)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_budget_is_respected_and_impossible_budget_raises():
    make_loss, params, args = _mlp(2, 16, 64)
    loss = make_loss(NO_REMAT)
    full = measure_compiled(jax.value_and_grad(loss), params, args).temp_bytes
    budget = full // 3
    report = fit_micro_batches(loss, params, args, memory_budget_bytes=budget, max_micro_batches=16)
    assert report.chosen > 1 and report.chosen_cost.temp_bytes <= budget
    # Every smaller count tried was measured over budget.
    assert all(c.temp_bytes > budget for k, c in report.rows if k < report.chosen)
    with pytest.raises(ValueError, match="no micro-batch count fits memory_budget_bytes=1"):
        fit_micro_batches(loss, params, args, memory_budget_bytes=1, max_micro_batches=2)


def test_manager_plan_fits_budget_and_keeps_gradients():
    make_loss, params, args = _mlp(4, 16, 64)
    base = measure_compiled(jax.value_and_grad(make_loss(FULL)), params, args).temp_bytes
    manager = IntelligentGPUMemoryManager(candidates=[FULL], memory_budget_bytes=base // 2)
    plan = manager.plan(make_loss, params, args)
    assert plan.remat.chosen_candidate == FULL and plan.num_micro_batches > 1
    assert plan.micro_batches.chosen_cost.temp_bytes <= base // 2
    _, grads = jax.jit(plan.grad_fn)(params, args)
    g0 = jax.grad(make_loss(NO_REMAT))(params, args)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("donate", [True, False])
def test_train_step_donates_params_and_state_and_matches_optax(donate):
    w, x = jnp.arange(6.0).reshape(2, 3), jnp.ones((4, 2))
    loss = lambda w, x: jnp.mean((x @ w) ** 2)  # noqa: E731
    opt = optax.adam(0.1)
    state = opt.init(w)
    step = make_train_step(jax.value_and_grad(loss), opt, donate=donate)
    cost = measure_compiled(step, w, state, x)
    state_bytes = sum(a.nbytes for a in jax.tree.leaves((w, state)))
    assert cost.alias_bytes == (state_bytes if donate else 0)
    updates, _ = opt.update(jax.grad(loss)(w, x), state, w)
    expected = np.asarray(w + updates)
    new_w, _, value = step(jnp.array(w), opt.init(w), x)
    np.testing.assert_allclose(new_w, expected, rtol=1e-13)
    np.testing.assert_allclose(value, loss(w, x), rtol=1e-13)


def test_bad_arguments_raise():
    make_loss, params, args = _mlp(4, 3, 6)
    with pytest.raises(ValueError, match=r"flops_bound must be a float >= 1, got 0\.5"):
        choose_remat(make_loss, params, args, flops_bound=0.5)
    with pytest.raises(TypeError, match="make_loss must be callable"):
        choose_remat(None, params, args)
    with pytest.raises(ValueError, match="policy must be None or one of"):
        choose_remat(make_loss, params, args, candidates=[RematCandidate("x", "bogus")])
    with pytest.raises(TypeError, match="candidates must be RematCandidate"):
        choose_remat(make_loss, params, args, candidates=["nothing_saveable"])
    with pytest.raises(ValueError, match="chunks must be an int >= 1, got 0"):
        scan_layers(_layer, params, args[0], RematCandidate("x", None, 0))
    with pytest.raises(ValueError, match="chunks must divide the number of layers 4, got 3"):
        scan_layers(_layer, params, args[0], RematCandidate("x", None, 3))
    with pytest.raises(ValueError, match="num_micro_batches must be an int >= 1, got 0"):
        accumulate_gradients(make_loss(NO_REMAT), 0)
    with pytest.raises(ValueError, match="must divide the batch size 6, got 4"):
        accumulate_gradients(make_loss(NO_REMAT), 4)(params, args)
    with pytest.raises(ValueError, match="one shared leading"):
        accumulate_gradients(make_loss(NO_REMAT), 2)(params, (args[0], jnp.ones((4, 3))))
    for budget in (0, -5, True, 1.5):
        with pytest.raises(ValueError, match="memory_budget_bytes must be an int > 0"):
            fit_micro_batches(make_loss(NO_REMAT), params, args, memory_budget_bytes=budget)
    with pytest.raises(ValueError, match="memory_budget_bytes must be None or an int > 0"):
        IntelligentGPUMemoryManager(memory_budget_bytes=-1)
    with pytest.raises(ValueError, match="flops_bound"):
        IntelligentGPUMemoryManager(flops_bound=0.9)
    with pytest.raises(TypeError, match=r"optax\.GradientTransformation"):
        make_train_step(jax.value_and_grad(make_loss(NO_REMAT)), object())
    with pytest.raises(ValueError, match="already jitted"):
        measure_compiled(jax.jit(jnp.sin), jnp.ones(2), donate_argnums=(0,))
