"""``jit`` part of ``opifex bench production``: bucketed adaptive JIT and the persistent cache.

1. A stream of calls with random batch sizes (seeded) through :class:`AdaptiveJit` (buckets
   compiled once at warm-up) against plain ``jax.jit`` warmed up on the same bucket sizes:
   compilations during the stream, counted from ``jax.monitoring`` events, and the stream's
   total time.
2. Fresh Python processes compile the same program: one fills a persistent compilation cache,
   one compiles with that cache, one without any cache; the ratio of compile times is reported.

Options: ``calls`` (1000; quick 40), ``max_batch`` (512; quick 32), ``width`` (256; quick 32),
``depth`` (depth of the cached program: 60; quick 8), ``seed`` (0).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from opifex.benchmarks._harness import Context, Record

# The child imports jax alone (not opifex, whose package import pulls in flax and optax) so
# that the process starts quickly; it sets the same options as ``enable_persistent_cache``.
_COMPILE_SCRIPT = """
import json, sys, time
import jax, jax.numpy as jnp
cache, depth, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if cache != "-":
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
hits = []
jax.monitoring.register_event_listener(
    lambda e, **k: hits.append(e) if e == "/jax/compilation_cache/cache_hits" else None
)
def program(w, x):
    for i in range(depth):
        x = jnp.tanh(x @ w[i % w.shape[0]] + 0.01 * i)
    return jnp.sum(x ** 2)
step = jax.jit(jax.value_and_grad(program))
args = (jax.ShapeDtypeStruct((4, width, width), jnp.float32),
        jax.ShapeDtypeStruct((8, width), jnp.float32))
t0 = time.perf_counter()
step.lower(*args).compile()
print(json.dumps({"compile_s": time.perf_counter() - t0, "hits": len(hits)}))
"""


def _compile_in_fresh_process(cache: str, depth: int, width: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, cache, str(depth), str(width)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stream(ctx: Context, calls: int, max_batch: int, width: int, seed: int) -> list[Record]:
    import jax
    import jax.numpy as jnp

    from opifex.optimization.production import AdaptiveJit, compile_events

    def mlp(x, params):
        for w in params:
            x = jnp.tanh(x @ w)
        return x

    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(width, width)).astype(np.float32) / np.sqrt(width)] * 3
    sizes = rng.integers(1, max_batch + 1, size=calls)
    xs = [rng.normal(size=(n, width)).astype(np.float32) for n in sizes]

    ours = AdaptiveJit(mlp, mode="always", batch_argnums=(0,), max_batch=max_batch)
    t0 = time.perf_counter()
    ours.warmup(xs[0], params)
    ours_warm_s = time.perf_counter() - t0
    plain = jax.jit(mlp)
    # JAX shares compiled executables in-process between identical programs; clearing the
    # caches makes plain jit's warm-up compile for itself instead of reusing ours.
    jax.clear_caches()
    t0 = time.perf_counter()
    for b in ours.buckets:
        jax.block_until_ready(plain(np.resize(xs[0], (b, width)), params))
    plain_warm_s = time.perf_counter() - t0

    def run_stream(fn):
        with compile_events() as ev:
            t0 = time.perf_counter()
            for x in xs:
                out = fn(x, params)
            jax.block_until_ready(out)
            return ev.compilations, time.perf_counter() - t0

    ours_compiles, ours_s = run_stream(ours)
    plain_compiles, plain_s = run_stream(plain)
    distinct = len(set(sizes.tolist()))
    tag = f"jit: {calls} calls, batch 1..{max_batch}"
    return [
        Record(
            f"{tag}: compilations after warm-up",
            ours_compiles,
            "programs",
            target="<= 0",
            peer="jax.jit",
            peer_value=plain_compiles,
        ),
        Record(f"{tag}: distinct batch sizes", distinct, "sizes"),
        Record(f"{tag}: buckets compiled at warm-up", len(ours.buckets), "programs"),
        Record(f"{tag}: warm-up time", ours_warm_s, "s", peer="jax.jit", peer_value=plain_warm_s),
        Record(f"{tag}: stream time", ours_s, "s", peer="jax.jit", peer_value=plain_s),
    ]


def run(ctx: Context) -> list[Record]:
    """Measure the bucketed stream and the persistent cache; return the records."""
    quick = ctx.quick
    calls = ctx.option("calls", 40 if quick else 1000, int)
    max_batch = ctx.option("max_batch", 32 if quick else 512, int)
    width = ctx.option("width", 32 if quick else 256, int)
    depth = ctx.option("depth", 8 if quick else 60, int)
    seed = ctx.option("seed", 0, int)
    records = _stream(ctx, calls, max_batch, width, seed)

    with tempfile.TemporaryDirectory() as cache:
        filled = _compile_in_fresh_process(cache, depth, width)
        hit = _compile_in_fresh_process(cache, depth, width)
        # --quick skips the third process: the filling run (a cold compile that also writes
        # the entry) stands in for the uncached compile.
        cold = filled if quick else _compile_in_fresh_process("-", depth, width)
    cold_name = "cold compile, cache being filled" if quick else "no persistent cache"
    records += [
        Record(
            f"jit: second-process compile speed-up with persistent cache (depth {depth})",
            cold["compile_s"] / hit["compile_s"],
            "x",
            target=">= 5",
        ),
        Record(
            "jit: compile time with persistent cache",
            hit["compile_s"],
            "s",
            peer=cold_name,
            peer_value=cold["compile_s"],
        ),
        Record("jit: persistent cache hits in the second process", hit["hits"], "hits"),
    ]
    return records
