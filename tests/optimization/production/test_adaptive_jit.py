"""Adaptive JIT: exact bucketing, bounded compilations, the compile-or-not rule, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opifex.optimization._production._adaptive_jit import AdaptiveJit, bucket_sizes, decide
from opifex.optimization._production._compile_events import compile_events


def _mlp(x, params):
    w1, b1, w2 = params
    return jnp.tanh(x @ w1 + b1) @ w2


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(4, 16)), rng.normal(size=16), rng.normal(size=(16, 3)))


def _rowwise(x, params):
    w, b = params
    return jnp.tanh(x * w + b) * jnp.exp(-x), jnp.cumsum(x, axis=1)


def test_bucketed_calls_equal_plain_jit_exactly_and_compile_once_per_bucket():
    rng = np.random.default_rng(1)
    params = (rng.normal(size=5), rng.normal(size=5))
    f = AdaptiveJit(_rowwise, mode="always", batch_argnums=(0,), max_batch=100)
    assert f.buckets == (8, 16, 32, 64, 100)
    sizes = rng.integers(1, 101, size=12)
    plain = jax.jit(_rowwise)
    for n in sizes:
        x = rng.normal(size=(n, 5))
        got, want = f(x, params), plain(x, params)
        for g, w in zip(got, want, strict=True):
            assert g.shape == (n, 5)
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    used = {next(b for b in f.buckets if b >= n) for n in sizes}
    assert f.events.compilations == len(used)
    assert f.compiled_buckets == tuple(sorted(used))
    assert f.bucket_hits == len(sizes) - len(used)


def test_bucketed_matmul_agrees_to_rounding():
    # XLA picks its dot kernel by operand shape, so a contraction padded to another batch size
    # may round differently in the last bit; element-wise work is bit-exact (test above).
    rng = np.random.default_rng(4)
    params = _params()
    f = AdaptiveJit(_mlp, mode="always", batch_argnums=(0,), max_batch=64)
    for n in (1, 3, 9, 33, 64):
        x = rng.normal(size=(n, 4))
        np.testing.assert_allclose(
            np.asarray(f(x, params)), np.asarray(jax.jit(_mlp)(x, params)), rtol=1e-13, atol=1e-14
        )


def test_warmup_leaves_no_compilation_for_the_stream():
    rng = np.random.default_rng(2)
    params = _params()
    f = AdaptiveJit(_mlp, mode="always", batch_argnums=(0,), max_batch=40, min_bucket=4)
    x6 = rng.normal(size=(3, 6))
    params = (rng.normal(size=(6, 16)), *params[1:])  # shapes no other test compiles
    f.warmup(x6, params)
    assert f.events.compilations == len(f.buckets) == 5
    before = f.events.compilations
    for n in rng.integers(1, 41, size=25):
        f(rng.normal(size=(n, 6)), params)
    assert f.events.compilations == before
    assert f.bucket_hits == 25


def test_outputs_that_do_not_follow_the_batch_are_not_sliced():
    w = np.arange(24.0).reshape(8, 3)

    def fn(x, w):
        return x @ w.T, w

    f = AdaptiveJit(fn, mode="always", batch_argnums=(0,), buckets=(8,))
    x = np.ones((5, 3))
    y, w_out = f(x, w)
    assert y.shape == (5, 8)
    np.testing.assert_array_equal(np.asarray(w_out), w)


def test_mask_makes_a_batch_mean_equal_the_unpadded_mean():
    def loss(x, params, *, mask):
        per_row = jnp.sum(_mlp(x, params) ** 2, axis=1)
        return jnp.sum(jnp.where(mask, per_row, 0.0)) / jnp.sum(mask)

    params = _params(3)
    f = AdaptiveJit(loss, mode="always", batch_argnums=(0,), max_batch=32, mask_argname="mask")
    rng = np.random.default_rng(3)
    for n in (1, 5, 17, 32):
        x = rng.normal(size=(n, 4))
        want = np.mean(np.sum(np.asarray(_mlp(x, params)) ** 2, axis=1))
        np.testing.assert_allclose(float(f(x, params)), want, rtol=1e-13)


def _stub_clock(times):
    # Each timed section reads the clock twice; lay out (start, end) pairs so that the section
    # lasts the given number of seconds.
    starts = itertools.count(0.0, 100.0)
    return iter([t for d in times for s in [next(starts)] for t in (s, s + d)]).__next__


@pytest.mark.parametrize(("expected_calls", "use_jit"), [(10, True), (4, False)])
def test_decision_follows_the_break_even_rule_on_a_stub_clock(expected_calls, use_jit):
    # eager 1.0 (first, left out), 0.5; compile 2.0; compiled 0.1, 0.1:
    # break-even = 2.0 / (0.5 - 0.1) = 5 calls.
    clock = _stub_clock([1.0, 0.5, 2.0, 0.1, 0.1])
    f = AdaptiveJit(jnp.sin, probe_calls=2, expected_calls=expected_calls, clock=clock, mode="auto")
    x = jnp.ones(3)
    phases = []
    for _ in range(4):
        f(x)
        phases.append(f.phase)
    assert phases[:3] == ["eager_probe", "compile_probe", "compile_probe"]
    assert phases[3] == ("jit" if use_jit else "eager")
    d = f.decision
    assert d.use_jit is use_jit
    assert d.eager_s == pytest.approx(0.5)
    assert d.compiled_s == pytest.approx(0.1)
    assert d.compile_s == pytest.approx(2.0)
    assert d.break_even_calls == pytest.approx(5.0)
    f(x)  # after the decision the clock is no longer read
    assert (f.compiled_calls, f.eager_calls) == ((3, 2) if use_jit else (2, 3))


def test_decide_rejects_a_compiled_call_that_is_not_faster():
    d = decide([0.3, 0.1], [0.2], compile_s=0.0, expected_calls=10**9)
    assert not d.use_jit
    assert d.break_even_calls == float("inf")
    assert "not faster" in d.reason


def test_bucket_ladder():
    assert bucket_sizes(1000) == (8, 16, 32, 64, 128, 256, 512, 1000)
    assert bucket_sizes(5, min_bucket=8) == (5,)
    assert bucket_sizes(30, min_bucket=2, growth=1.5) == (2, 3, 5, 8, 12, 18, 27, 30)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "sometimes"}, "mode must be one of"),
        ({"probe_calls": 0}, "probe_calls must be an int >= 1, got 0"),
        ({"expected_calls": -1}, "expected_calls must be"),
        ({"batch_argnums": (0,)}, "needs max_batch"),
        ({"buckets": (8, 8)}, "increasing"),
        ({"batch_argnums": (0,), "max_batch": 10, "growth": 1.0}, "growth must be > 1"),
        ({"mask_argname": "mask"}, "mask_argname needs batch_argnums"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveJit(jnp.sin, **kwargs)


def test_bad_calls_raise_before_compiling():
    with pytest.raises(TypeError, match="fn must be callable"):
        AdaptiveJit(3)
    f = AdaptiveJit(lambda x, y: x + y, mode="always", batch_argnums=(0, 1), max_batch=16)
    with compile_events() as stats:
        with pytest.raises(ValueError, match="exceeds the largest bucket 16"):
            f(np.ones((17, 2)), np.ones((17, 2)))
        with pytest.raises(ValueError, match=r"disagree on the batch size: \[3, 4\]"):
            f(np.ones((3, 2)), np.ones((4, 2)))
        with pytest.raises(ValueError, match="scalar leaf"):
            f(np.ones((3, 2)), 1.0)
        with pytest.raises(ValueError, match="has 1 arguments"):
            f(np.ones((3, 2)))
    assert stats.requests == 0
