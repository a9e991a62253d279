"""The three training recipes of ``opifex bench pinn``, at the same iteration budget.

- ``opifex``: :class:`ScientificComputingIntegrator`: Adam, then dense self-scaled BFGS.
- ``adam+optax-lbfgs``: the same Adam, then ``optax.lbfgs()`` in the loop its documentation
  gives (``optax.value_and_grad_from_state``, one jitted step), the recipe users write today.
- ``adam``: plain ``optax.adam`` for the whole budget.

Every recipe is advanced in jitted chunks of ``log_every`` iterations; run time excludes the
compilation (a zero-length chunk compiles first) and the error evaluations between chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from opifex.benchmarks.problems.pinn import PINNProblem
from opifex.optimization.scientific_integration import (
    ScientificComputingIntegrator,
    ScientificIntegrationConfig,
    init_mlp,
)

METHODS = ("opifex", "adam+optax-lbfgs", "adam")


@dataclass
class Run:
    method: str
    seed: int
    iterations: np.ndarray  # iteration at each record
    seconds: np.ndarray  # run seconds at each record (compile excluded)
    errors: np.ndarray  # relative L2 error at each record
    compile_seconds: float
    second_order_seconds_per_iteration: float  # nan for plain Adam

    @property
    def final_error(self) -> float:
        return float(self.errors[-1]) if self.errors.size else float("nan")

    def time_to(self, target: float) -> float:
        hit = np.nonzero(self.errors <= target)[0]
        return float(self.seconds[hit[0]]) if hit.size else float("nan")


def _error_fn(problem: PINNProblem):
    predict = jax.jit(problem.loss.apply)
    points = jnp.asarray(problem.test_points)
    ref = np.asarray(problem.reference)
    norm = float(np.linalg.norm(ref))
    return lambda p: float(np.linalg.norm(np.asarray(predict(p, points)) - ref) / norm)


def _chunked(step_chunk, carry, steps, log_every, error, records, t_offset, it_offset):
    """Run ``step_chunk(carry, n)`` to ``steps`` iterations, recording time and error."""
    t0 = time.perf_counter()
    # Two empty chunks: the first returns the carry with the loop's own (non-weak) dtypes,
    # which some optax states only take after one pass; the second compiles for those.
    carry = step_chunk(carry, 0)
    carry = jax.block_until_ready(step_chunk(carry, 0))
    compile_s = time.perf_counter() - t0
    run_s, done = 0.0, 0
    while done < steps:
        n = min(log_every, steps - done)
        t0 = time.perf_counter()
        carry = jax.block_until_ready(step_chunk(carry, n))
        run_s += time.perf_counter() - t0
        done += n
        params = carry[0]
        records.append((it_offset + done, t_offset + run_s, error(params)))
    return carry, compile_s, run_s


def _adam_chunk(loss, learning_rate):
    opt = optax.adam(learning_rate)

    @jax.jit
    def chunk(carry, n, batch):
        def body(_, c):
            p, s = c
            g = jax.grad(loss)(p, batch)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, n, body, carry)

    return opt, chunk


def _optax_lbfgs_chunk(loss):
    opt = optax.lbfgs()

    @jax.jit
    def chunk(carry, n, batch):
        f = lambda p: loss(p, batch)  # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(f)

        def body(_, c):
            p, s = c
            value, grad = value_and_grad(p, state=s)
            u, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=f)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, n, body, carry)

    return opt, chunk


def run_method(
    method: str,
    problem: PINNProblem,
    seed: int,
    *,
    adam_steps: int,
    second_steps: int,
    learning_rate: float,
    log_every: int,
    polish_steps: int = 0,
    batch=None,
) -> Run:
    """Train ``problem`` from the seed's initialisation with ``method``; return its record.

    ``polish_steps`` NysNewton-CG iterations follow BFGS in the opifex recipe; the peers get
    the same number of extra second-order (or Adam) iterations.
    """
    batch = problem.batch(seed) if batch is None else batch
    params = init_mlp(jax.random.PRNGKey(seed), problem.sizes, dtype=jnp.float64)
    error = _error_fn(problem)
    if method == "opifex":
        config = ScientificIntegrationConfig(
            adam_steps=adam_steps,
            adam_learning_rate=learning_rate,
            second_order="bfgs",
            second_order_steps=second_steps,
            polish="nncg" if polish_steps else "none",
            polish_steps=polish_steps,
            log_every=log_every,
            validate=False,
            progress=False,
        )
        res = ScientificComputingIntegrator(config=config).train(
            problem.loss, params, batch, reference=(problem.test_points, problem.reference)
        )
        stages = {s["name"]: s for s in res.stages}
        bfgs = stages.get("bfgs")
        per_it = bfgs["seconds"] / max(bfgs["iterations"], 1) if bfgs else float("nan")
        return Run(
            method,
            seed,
            res.history["iteration"],
            res.history["seconds"],
            res.history["relative_l2"],
            sum(s["compile_seconds"] for s in res.stages),
            per_it,
        )
    loss = problem.loss.loss
    second_steps += polish_steps
    records: list = []
    adam_total = adam_steps + (second_steps if method == "adam" else 0)
    opt, adam_chunk = _adam_chunk(loss, learning_rate)
    carry = (params, opt.init(params))
    carry, c1, r1 = _chunked(
        lambda c, n: adam_chunk(c, n, batch), carry, adam_total, log_every, error, records, 0.0, 0
    )
    compile_s, per_it = c1, float("nan")
    if method == "adam+optax-lbfgs" and second_steps:
        opt2, lbfgs_chunk = _optax_lbfgs_chunk(loss)
        carry2 = (carry[0], opt2.init(carry[0]))
        _, c2, r2 = _chunked(
            lambda c, n: lbfgs_chunk(c, n, batch),
            carry2,
            second_steps,
            log_every,
            error,
            records,
            r1,
            adam_total,
        )
        compile_s += c2
        per_it = r2 / second_steps
    its, secs, errs = (np.asarray(v) for v in zip(*records, strict=True))
    return Run(method, seed, its, secs, errs, compile_s, per_it)
