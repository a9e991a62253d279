"""Learned optimizer: update rule against a numpy reimplementation, meta-training, fallback, I/O."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from opifex.optimization.l2o import _meta_training
from opifex.optimization.l2o._learned_optimizer import (
    MOMENTUM_DECAYS,
    NUM_FEATURES,
    NUM_OUTPUTS,
    TIME_SCALES,
)
from opifex.optimization.l2o.l2o_engine import (
    L2OEngine,
    TaskFamily,
    init_meta_params,
    learned_optimizer,
    load_meta_params,
    logistic_family,
    meta_train,
    mlp_regression_family,
    quadratic_family,
    save_meta_params,
)

FAMILY = quadratic_family(6, max_condition=1000.0)
STEPS = 20


def numpy_learned_steps(theta, grads_fn, p0, steps):
    """Plain-numpy reimplementation of the documented update rule (float64)."""
    th = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    n_layers = sum(1 for k in th if k.startswith("w"))
    b = np.asarray(MOMENTUM_DECAYS)[:, None]
    p = np.asarray(p0, np.float64)
    m, v = np.zeros((len(MOMENTUM_DECAYS), p.size)), np.zeros(p.size)
    for t in range(1, steps + 1):
        g = grads_fn(p)
        m = b * m + (1 - b) * g
        v = 0.999 * v + 0.001 * g * g
        rms = np.sqrt(v / (1 - 0.999**t)) + 1e-8
        d = np.clip(np.vstack([g, m / (1 - b**t)]) / rms, -5, 5)
        feats = np.hstack(
            [d.T, np.tanh(p)[:, None], np.tile(np.tanh(t / np.array(TIME_SCALES)), (p.size, 1))]
        )
        h = feats
        for i in range(n_layers):
            h = h @ th[f"w{i}"] + th[f"b{i}"]
            h = np.maximum(h, 0) if i < n_layers - 1 else h
        scale = np.exp(th["log_lr"] + 2 * np.tanh(h[:, 0]))
        p = p - scale * (d[2] + np.sum(np.tanh(h[:, 1:]) * d.T, axis=1))
    return p


def test_update_rule_matches_numpy_reimplementation():
    theta = init_meta_params(jax.random.PRNGKey(3), hidden_sizes=(5,), output_scale=1.0)
    a = jnp.diag(jnp.array([1.0, 3.0, 10.0]))
    opt = learned_optimizer(theta)
    step = jax.jit(opt.update)
    params = jnp.array([1.0, -0.5, 0.25])
    state = opt.init(params)
    for _ in range(4):
        updates, state = step(a @ params, state, params)
        params = optax.apply_updates(params, updates)
    expected = numpy_learned_steps(theta, lambda p: np.asarray(a) @ p, [1.0, -0.5, 0.25], 4)
    np.testing.assert_allclose(params, expected, rtol=1e-10, atol=1e-12)
    assert int(state.count) == 4 and int(state.fallback_count) == 0


def test_untrained_first_step_is_sign_descent_and_jit_equals_nojit():
    theta = init_meta_params(jax.random.PRNGKey(0), learning_rate=0.05, output_scale=0.0)
    opt = learned_optimizer(theta)
    params = {"a": jnp.array([2.0, -3.0]), "b": jnp.array(0.5)}
    grads = {"a": jnp.array([4.0, -1e-3]), "b": jnp.array(-2.0)}
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    # t = 1: every bias-corrected moment equals g, so the direction is g / (|g| + 1e-8).
    expected_a = [-0.05 * 4 / (4 + 1e-8), 0.05 * 1e-3 / (1e-3 + 1e-8)]
    np.testing.assert_allclose(updates["a"], expected_a, rtol=1e-12)
    np.testing.assert_allclose(updates["b"], 0.05 * 2 / (2 + 1e-8), rtol=1e-12)

    theta = init_meta_params(jax.random.PRNGKey(1), hidden_sizes=(4,), output_scale=1.0)
    opt = learned_optimizer(theta)
    out = {}
    # One leaf and two steps: every eager primitive compiles on its own, so keep it small.
    for name, update in (("eager", opt.update), ("jit", jax.jit(opt.update))):
        p, state = params["a"], opt.init(params["a"])
        for _ in range(2):
            u, state = update(0.3 * p + 0.1, state, p)
            p = optax.apply_updates(p, u)
        out[name] = p
    np.testing.assert_allclose(out["eager"], out["jit"], rtol=1e-12)


def test_nonfinite_learned_update_falls_back_to_base_and_counts():
    theta = init_meta_params(jax.random.PRNGKey(0))
    theta["w0"] = theta["w0"].at[0, 0].set(jnp.nan)
    opt = learned_optimizer(theta, base=optax.sgd(0.1))
    params = jnp.array([1.0, -2.0])
    state = opt.init(params)
    step = jax.jit(opt.update)
    for k in range(1, 4):
        updates, state = step(2.0 * params, state, params)
        np.testing.assert_allclose(updates, -0.2 * params)  # sgd(0.1) on grad 2 p
        params = params + updates
        assert int(state.fallback_count) == k
    # The learned moments never absorbed the failed steps.
    assert float(jnp.abs(state.momenta).max()) == 0.0 and int(state.count) == 3
    healthy = learned_optimizer(init_meta_params(jax.random.PRNGKey(0)))
    _, s = jax.jit(healthy.update)(params, healthy.init(params), params)
    assert int(s.fallback_count) == 0


def test_as_transform_in_nnx_optimizer_and_optax_chain():
    theta = init_meta_params(jax.random.PRNGKey(2), hidden_sizes=(4,), output_scale=1.0)
    x = jnp.linspace(-1.0, 1.0, 8)[:, None]
    model = nnx.Linear(1, 2, rngs=nnx.Rngs(0), dtype=jnp.float64, param_dtype=jnp.float64)
    tx = optax.chain(optax.clip_by_global_norm(0.5), L2OEngine().as_transform(theta))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss(m):
        return jnp.mean((m(x) - x) ** 2)

    _, params = nnx.split(model, nnx.Param)
    ref_params = nnx.to_pure_dict(params)
    ref_tx = optax.chain(optax.clip_by_global_norm(0.5), learned_optimizer(theta))
    ref_state = ref_tx.init(ref_params)

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(loss)(model))

    @jax.jit
    def ref_step(p, state):
        # The same least-squares loss written on the raw kernel and bias.
        g = jax.grad(lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - x) ** 2))(p)
        u, state = ref_tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    for _ in range(3):
        train_step(model, optimizer)
        ref_params, ref_state = ref_step(ref_params, ref_state)
    np.testing.assert_allclose(model.kernel[...], ref_params["kernel"], rtol=1e-12)
    np.testing.assert_allclose(model.bias[...], ref_params["bias"], rtol=1e-12)
    assert not np.allclose(ref_params["bias"], 0.0)


@functools.cache
def _eval_setup(num_tasks=16, seed=123):
    """Held-out fixed-seed tasks and jitted evaluators of f_T / f_0 (compiled once)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num_tasks)
    tasks = jax.jit(jax.vmap(FAMILY.sample))(keys)
    x0 = jax.jit(jax.vmap(FAMILY.init))(jax.random.split(keys[0], num_tasks), tasks)

    def final_ratio(make_opt, hyper, task, x):
        opt = make_opt(hyper)

        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(FAMILY.loss)(p, task), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (x, opt.init(x)), None, length=STEPS)
        return FAMILY.loss(p, task) / FAMILY.loss(x, task)

    def evaluator(make_opt):
        f = jax.jit(jax.vmap(functools.partial(final_ratio, make_opt), in_axes=(None, 0, 0)))
        return lambda hyper: np.asarray(f(hyper, tasks, x0))

    return evaluator(lambda th: learned_optimizer(th)), evaluator(optax.sgd)


@pytest.fixture(scope="module")
def trained():
    engine = L2OEngine(FAMILY, hidden_sizes=(8,), learning_rate=0.1)
    theta0 = engine.init(jax.random.PRNGKey(0))
    history = engine.meta_train(
        jax.random.PRNGKey(1),
        meta_learning_rate=0.03,
        meta_steps=30,
        unroll_length=STEPS,
        num_tasks=4,
        method="grad",
    )
    return theta0, engine.theta, history


def test_meta_trained_optimizer_beats_sgd_and_its_untrained_start(trained):
    theta0, theta, history = trained
    learned, sgd = _eval_setup()
    sgd_best = min(float(np.median(sgd(lr))) for lr in (0.3, 1.0, 1.9))
    untrained, after = float(np.median(learned(theta0))), float(np.median(learned(theta)))
    # Stated improvement: after 20 steps on 16 held-out quadratics (condition <= 1000), the
    # meta-trained optimizer's median f_T / f_0 is at least 2x below the best of SGD with
    # learning rates {0.3, 1, 1.9} (1.9 is just under 2 / lambda_max), and 2x below its
    # untrained start (Adam, step 0.1): gradient-through-unroll meta-training worked.
    print(f"learned {after:.3g}, untrained {untrained:.3g}, best SGD {sgd_best:.3g}")
    assert after < 0.5 * sgd_best, (after, sgd_best)
    assert after < 0.5 * untrained, (after, untrained)
    assert history["meta_loss"].shape == (30,) and np.all(np.isfinite(history["meta_loss"]))
    assert np.mean(history["meta_loss"][-5:]) < np.mean(history["meta_loss"][:5]) - 0.5


def test_es_gradient_points_along_true_gradient():
    # Closed form: L(theta) = sum_k c_k . theta_k^2 + b_k . theta_k has gradient 2 c theta + b.
    key = jax.random.PRNGKey(7)
    theta = {"u": jax.random.normal(key, (12,)), "v": jnp.linspace(-1.0, 1.0, 8)}
    c = {"u": jnp.linspace(0.5, 2.0, 12), "v": jnp.full(8, 3.0)}
    b = {"u": jnp.ones(12), "v": -jnp.arange(8.0)}

    def loss_fn(th):
        terms = jax.tree.map(lambda t, ck, bk: jnp.sum(ck * t**2 + bk * t), th, c, b)
        return sum(jax.tree.leaves(terms)), th["v"][0]

    est, mean_loss, aux = jax.jit(
        lambda th: _meta_training.es_gradient(loss_fn, th, jax.random.PRNGKey(3), 400, 1e-3)
    )(theta)
    true = jax.tree.map(lambda t, ck, bk: 2 * ck * t + bk, theta, c, b)
    e, g = (jnp.concatenate([x["u"], x["v"]]) for x in (est, true))
    cosine = float(e @ g / (jnp.linalg.norm(e) * jnp.linalg.norm(g)))
    # With P antithetic pairs in D = 20 dimensions the expected cosine is ~ sqrt(P / (P + D)).
    assert cosine > 0.93, cosine
    assert abs(float(mean_loss) - float(loss_fn(theta)[0])) < 1e-3
    assert np.isclose(float(aux), float(theta["v"][0]), atol=1e-2)


def test_save_load_round_trip(tmp_path, trained):
    _, theta, _ = trained
    path = tmp_path / "theta.npz"
    save_meta_params(path, theta)
    loaded = load_meta_params(path)
    assert sorted(loaded) == sorted(theta)
    for k in theta:
        np.testing.assert_array_equal(loaded[k], theta[k])
        assert loaded[k].dtype == theta[k].dtype
    engine = L2OEngine()
    engine.load(path)
    p = jnp.array([0.3, -0.2, 0.1, 0.0, 1.0, 2.0])
    tx1, tx2 = learned_optimizer(theta), engine.as_transform()
    u1, _ = jax.jit(tx1.update)(p, tx1.init(p), p)
    u2, _ = jax.jit(tx2.update)(p, tx2.init(p), p)
    np.testing.assert_array_equal(u1, u2)
    np.savez(tmp_path / "bad.npz", w0=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="theta must be a dict"):
        load_meta_params(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="no meta-parameter file"):
        load_meta_params(tmp_path / "missing.npz")


def test_families_have_known_values():
    key = jax.random.PRNGKey(4)
    q = quadratic_family(5, max_condition=50.0)
    task = jax.jit(q.sample)(key)
    eig = np.linalg.eigvalsh(np.asarray(task["A"]))
    assert eig.max() <= 1.0 + 1e-9 and 1.0 <= eig.max() / eig.min() <= 50.0 + 1e-6
    x = jax.jit(q.init)(key, task)
    r = np.asarray(x - task["x_star"])
    np.testing.assert_allclose(jax.jit(q.loss)(x, task), 0.5 * r @ np.asarray(task["A"]) @ r)
    lg = logistic_family(3, 16)
    task = jax.jit(lg.sample)(key)
    w = jnp.array([0.1, -0.2, 0.3, 0.05])
    z = np.asarray(task["x"]) @ np.asarray(w)
    y = np.asarray(task["y"])
    expected = np.mean(np.log1p(np.exp(z)) - y * z) + 1e-3 * float(w @ w)
    np.testing.assert_allclose(jax.jit(lg.loss)(w, task), expected, rtol=1e-12)
    assert set(np.unique(y)) <= {0.0, 1.0} and np.all(task["x"][:, -1] == 1.0)
    mlp = mlp_regression_family(2, 3, 8, noise=0.0)
    task = jax.jit(mlp.sample)(key)
    params = jax.jit(mlp.init)(key, task)
    pred = np.tanh(np.asarray(task["x"]) @ params["w1"] + params["b1"]) @ params["w2"]
    expected = np.mean((pred[:, 0] - task["y"]) ** 2)
    np.testing.assert_allclose(jax.jit(mlp.loss)(params, task), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "adam"}, ValueError, r"method must be one of \('es', 'grad'\)"),
        ({"meta_steps": 0}, ValueError, "meta_steps must be an int >= 1, got 0"),
        ({"meta_learning_rate": -1.0}, ValueError, "meta_learning_rate must be a number > 0"),
        ({"horizon": 2}, ValueError, "horizon must be an int >= 5, got 2"),
        ({"family": (1, 2, 3)}, TypeError, "family must be a TaskFamily"),
        ({"key": 3}, TypeError, "key must be a PRNG key"),
        ({"theta": {"w0": 1}}, ValueError, "theta must be a dict from init_meta_params"),
    ],
)
def test_bad_meta_train_arguments_raise(kwargs, error, match):
    args = {
        "theta": init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(2,)),
        "family": FAMILY,
        "meta_learning_rate": 0.01,
        "meta_steps": 1,
        "unroll_length": 5,
        "num_tasks": 1,
        "key": jax.random.PRNGKey(0),
    }
    args.update(kwargs)
    theta, family = args.pop("theta"), args.pop("family")
    with pytest.raises(error, match=match):
        meta_train(theta, family, **args)


def test_bad_optimizer_arguments_raise():
    with pytest.raises(ValueError, match=r"hidden_sizes must be ints >= 1, got \(0,\)"):
        init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(0,))
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        init_meta_params(jax.random.PRNGKey(0), learning_rate=0.0)
    theta = init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(2,))
    wrong = dict(theta, w0=jnp.zeros((3, 2)))
    msg = f"must map {NUM_FEATURES} features to {NUM_OUTPUTS} outputs, got 3 -> {NUM_OUTPUTS}"
    with pytest.raises(ValueError, match=msg):
        learned_optimizer(wrong)
    opt = learned_optimizer(theta)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        quadratic_family(0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        mlp_regression_family(noise=-1.0)
    with pytest.raises(TypeError, match="family must be a TaskFamily or None"):
        L2OEngine(family="quadratic")
    with pytest.raises(ValueError, match="needs a family"):
        L2OEngine().meta_train(jax.random.PRNGKey(0), meta_steps=1)
    with pytest.raises(ValueError, match="no meta-parameters yet"):
        L2OEngine().as_transform()
    assert isinstance(FAMILY, TaskFamily)
