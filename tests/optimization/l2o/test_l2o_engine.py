"""Learned optimizer: update rule against a numpy reimplementation, meta-training, fallback, I/O."""

from __future__ import annotations

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

# The same family and meta-training settings as the meta_train doctest: one compilation.
FAMILY = quadratic_family(6)
STEPS = 20


def numpy_learned_steps(theta, grads_fn, p0, steps):
    """Plain-numpy reimplementation of the documented update rule (float64)."""
    th = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    n_layers = sum(1 for k in th if k.startswith("w"))
    b = np.asarray(MOMENTUM_DECAYS)[:, None]
    p = np.asarray(p0, np.float64)
    m, v, v_max = np.zeros((len(MOMENTUM_DECAYS), p.size)), np.zeros(p.size), np.zeros(p.size)
    for t in range(1, steps + 1):
        g = grads_fn(p)
        m = b * m + (1 - b) * g
        v = 0.999 * v + 0.001 * g * g
        v_max = np.maximum(v_max, v / (1 - 0.999**t))
        d = np.clip(np.vstack([g, m / (1 - b**t)]) / (np.sqrt(v_max) + 1e-8), -5, 5)
        feats = np.hstack(
            [d.T, np.tanh(p)[:, None], np.tile(np.tanh(t / np.array(TIME_SCALES)), (p.size, 1))]
        )
        h = feats
        for i in range(n_layers):
            h = h @ th[f"w{i}"] + th[f"b{i}"]
            h = np.maximum(h, 0) if i < n_layers - 1 else h
        scale = np.exp(th["log_lr"] + 2 * np.tanh(h[:, 0]))
        # Only the gradient and the 0.5 and 0.9 momenta are step directions.
        p = p - scale * (d[2] + np.sum(np.tanh(h[:, 1:]) * d[:3].T, axis=1))
    return p


@jax.jit
def _learned_step(theta, grads, state, params):
    """One learned step with theta as data: one compilation for every test of these shapes."""
    updates, state = learned_optimizer(theta).update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_update_rule_matches_numpy_reimplementation():
    theta = init_meta_params(jax.random.PRNGKey(3), hidden_sizes=(8,), output_scale=1.0)
    a = np.diag([1.0, 3.0, 10.0])
    params = jnp.array([1.0, -0.5, 0.25])
    state = learned_optimizer(theta).init(params)
    for _ in range(4):
        params, state = _learned_step(theta, a @ np.asarray(params), state, params)
    expected = numpy_learned_steps(theta, lambda p: a @ p, [1.0, -0.5, 0.25], 4)
    np.testing.assert_allclose(params, expected, rtol=1e-10, atol=1e-12)
    assert int(state.count) == 4 and int(state.fallback_count) == 0


def test_untrained_first_step_is_sign_descent():
    theta = init_meta_params(
        jax.random.PRNGKey(0), hidden_sizes=(8,), learning_rate=0.05, output_scale=0.0
    )
    params, grads = jnp.array([2.0, -3.0, 0.5]), jnp.array([4.0, -1e-3, -2.0])
    new, _ = _learned_step(theta, grads, learned_optimizer(theta).init(params), params)
    # t = 1: every bias-corrected moment equals g, so the direction is g / (|g| + 1e-8).
    expected = -0.05 * np.array([4 / (4 + 1e-8), -1e-3 / (1e-3 + 1e-8), -2 / (2 + 1e-8)])
    np.testing.assert_allclose(new - params, expected, rtol=1e-12)


def test_nonfinite_learned_update_falls_back_to_base_and_counts():
    theta = init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(8,))
    healthy = dict(theta)
    theta["w0"] = theta["w0"].at[0, 0].set(jnp.nan)
    opt = learned_optimizer(theta, base=optax.sgd(0.1))
    params = jnp.array([1.0, -2.0, 0.5])
    state = opt.init(params)
    step = jax.jit(opt.update)
    for k in range(1, 4):
        updates, state = step(2.0 * params, state, params)
        np.testing.assert_allclose(updates, -0.2 * params)  # sgd(0.1) on grad 2 p
        params = params + updates
        assert int(state.fallback_count) == k
    # The learned moments never absorbed the failed steps.
    assert float(jnp.abs(state.momenta).max()) == 0.0 and int(state.count) == 3
    _, s = _learned_step(healthy, params, learned_optimizer(healthy).init(params), params)
    assert int(s.fallback_count) == 0


def test_as_transform_in_nnx_optimizer_and_optax_chain():
    theta = init_meta_params(jax.random.PRNGKey(2), hidden_sizes=(4,), output_scale=1.0)
    x = np.linspace(-1.0, 1.0, 8)[:, None]
    start = np.array([0.3, -0.7, 0.0, 0.0])  # kernel (1 x 2), bias (2,)
    model = nnx.Linear(
        1,
        2,
        rngs=nnx.Rngs(0),
        kernel_init=lambda *_: jnp.asarray(start[None, :2]),
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )
    tx = optax.chain(optax.clip_by_global_norm(0.5), L2OEngine().as_transform(theta))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean((m(x) - x) ** 2))(model))

    for _ in range(3):
        train_step(model, optimizer)

    def clipped_grad(p):
        # The same least-squares loss on [kernel (1x2), bias (2)], then the global-norm clip.
        r = x @ p[None, :2] + p[2:] - x
        g = np.concatenate([2 * np.mean(r * x, axis=0), 2 * np.mean(r, axis=0)]) / 2
        return g * min(1.0, 0.5 / np.linalg.norm(g))

    # The rule is elementwise, so the numpy rule on the concatenated vector is the reference.
    expected = numpy_learned_steps(theta, clipped_grad, start, 3)
    np.testing.assert_allclose(model.kernel[...].ravel(), expected[:2], rtol=1e-12)
    np.testing.assert_allclose(model.bias[...], expected[2:], rtol=1e-12)
    assert not np.allclose(expected[2:], 0.0)


def _held_out_quadratics(n, dim, seed=123):
    """Tasks of FAMILY's distribution drawn with numpy (disjoint from the JAX-sampled ones)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        kappa = np.exp(rng.uniform(np.log(10.0), np.log(1000.0)))
        lam = kappa ** -rng.uniform(size=dim)
        tasks.append(((q * lam) @ q.T, rng.standard_normal(dim), rng.standard_normal(dim)))
    return tasks


def _final_ratio(run, a, x_star, x0):
    """f_T / f_0 after `run(grads_fn, x0)` on 0.5 (x - x*)' A (x - x*)."""
    f = lambda x: 0.5 * (x - x_star) @ a @ (x - x_star)  # noqa: E731
    return f(run(lambda x: a @ (x - x_star), x0)) / f(x0)


def _sgd(lr, steps):
    def run(grads_fn, x):
        for _ in range(steps):
            x = x - lr * grads_fn(x)
        return x

    return run


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
    tasks = _held_out_quadratics(16, 6)

    def median_ratio(run):
        return float(np.median([_final_ratio(run, *task) for task in tasks]))

    # The learned optimizer runs in the numpy reimplementation checked above (no compile).
    untrained, after = (
        median_ratio(lambda g, x, th=th: numpy_learned_steps(th, g, x, STEPS))
        for th in (theta0, theta)
    )
    sgd_best = min(median_ratio(_sgd(lr, STEPS)) for lr in (0.3, 1.0, 1.9))
    # Stated improvement: after 20 steps on 16 held-out quadratics (condition <= 1000), the
    # meta-trained optimizer's median f_T / f_0 is at least 2x below the best of SGD with
    # learning rates {0.3, 1, 1.9} (1.9 is just under 2 / lambda_max), and 2x below its
    # untrained start (AMSGrad, step 0.1): gradient-through-unroll meta-training worked.
    print(f"learned {after:.3g}, untrained {untrained:.3g}, best SGD {sgd_best:.3g}")
    assert after < 0.5 * sgd_best, (after, sgd_best)
    assert after < 0.5 * untrained, (after, untrained)
    assert history["meta_loss"].shape == (30,) and np.all(np.isfinite(history["meta_loss"]))
    assert np.mean(history["meta_loss"][-5:]) < np.mean(history["meta_loss"][:5]) - 0.5


def test_repeated_meta_train_reuses_the_compiled_step(trained):
    # The fixture compiled the meta-step for this family and these settings; a further call
    # (another theta, key, rate and step count) must not compile again.
    _, theta, _ = trained
    before = _meta_training._meta_step._cache_size()
    theta2, history = meta_train(
        theta,
        FAMILY,
        meta_learning_rate=0.01,
        meta_steps=2,
        unroll_length=STEPS,
        num_tasks=4,
        method="grad",
        key=jax.random.PRNGKey(5),
    )
    assert _meta_training._meta_step._cache_size() == before
    assert history["meta_loss"].shape == (2,)
    assert not np.allclose(theta2["w0"], theta["w0"])


def test_es_gradient_points_along_true_gradient():
    # Closed form: L(theta) = sum_k c_k . theta_k^2 + b_k . theta_k has gradient 2 c theta + b.
    rng = np.random.default_rng(7)
    theta = {"u": rng.standard_normal(12), "v": np.linspace(-1.0, 1.0, 8)}
    c = {"u": np.linspace(0.5, 2.0, 12), "v": np.full(8, 3.0)}
    b = {"u": np.ones(12), "v": -np.arange(8.0)}

    def loss_fn(th):
        terms = jax.tree.map(lambda t, ck, bk: jnp.sum(ck * t**2 + bk * t), th, c, b)
        return sum(jax.tree.leaves(terms)), th["v"][0]

    est, mean_loss, aux = jax.jit(
        lambda th: _meta_training.es_gradient(loss_fn, th, jax.random.PRNGKey(3), 400, 1e-3)
    )(theta)
    true = jax.tree.map(lambda t, ck, bk: 2 * ck * t + bk, theta, c, b)
    e, g = (np.concatenate([x["u"], x["v"]]) for x in (est, true))
    cosine = e @ g / (np.linalg.norm(e) * np.linalg.norm(g))
    # With P antithetic pairs in D = 20 dimensions the expected cosine is ~ sqrt(P / (P + D)).
    assert cosine > 0.93, cosine
    exact = sum(np.sum(c[k] * theta[k] ** 2 + b[k] * theta[k]) for k in theta)
    assert abs(float(mean_loss) - exact) < 1e-3
    assert np.isclose(float(aux), theta["v"][0], atol=1e-2)


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
    p = jnp.array([0.3, -0.2, 0.1])
    state = engine.as_transform().init(p)
    np.testing.assert_array_equal(
        _learned_step(engine.theta, p, state, p)[0], _learned_step(theta, p, state, p)[0]
    )
    np.savez(tmp_path / "bad.npz", w0=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="theta must be a dict"):
        load_meta_params(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="no meta-parameter file"):
        load_meta_params(tmp_path / "missing.npz")


def test_families_have_known_values():
    # Eager calls of the docstring examples' sizes: the doctests compile the same ops.
    key = jax.random.PRNGKey(4)
    q = quadratic_family(5, max_condition=50.0)
    task = q.sample(key)
    eig = np.linalg.eigvalsh(np.asarray(task["A"]))
    assert eig.max() <= 1.0 + 1e-9 and 1.0 <= eig.max() / eig.min() <= 50.0 + 1e-6
    x = q.init(key, task)
    r = np.asarray(x - task["x_star"])
    np.testing.assert_allclose(q.loss(x, task), 0.5 * r @ np.asarray(task["A"]) @ r)
    lg = logistic_family(3, 8)
    task = lg.sample(key)
    w = np.array([0.1, -0.2, 0.3, 0.05])
    z, y = np.asarray(task["x"]) @ w, np.asarray(task["y"])
    expected = np.mean(np.log1p(np.exp(z)) - y * z) + 1e-3 * float(w @ w)
    np.testing.assert_allclose(lg.loss(jnp.asarray(w), task), expected, rtol=1e-12)
    np.testing.assert_array_equal(lg.init(key, task), np.zeros(4))
    assert set(np.unique(y)) == {0.0, 1.0} and np.all(task["x"][:, -1] == 1.0)
    mlp = mlp_regression_family(2, 4, 8)
    task = mlp.sample(key)
    params = mlp.init(key, task)
    pred = np.tanh(np.asarray(task["x"]) @ params["w1"] + params["b1"]) @ params["w2"]
    expected = np.mean((pred[:, 0] + np.asarray(params["b2"]) - task["y"]) ** 2)
    np.testing.assert_allclose(mlp.loss(params, task), expected, rtol=1e-12)


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
