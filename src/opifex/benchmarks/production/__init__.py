"""``opifex bench production``: adaptive JIT and memory management, measured in the same run.

Parts (``--option parts=memory,jit``, all by default):

- ``memory``: rematerialization policies chosen from XLA's memory and cost analyses on a deep
  MLP (scan over layers) and a PINN training step, against no rematerialization; micro-batching
  to a memory budget;
- ``jit``: a stream of calls with random batch sizes through the adaptive JIT against plain
  ``jax.jit`` (compilations, total time), and a second process compiling with and without
  the persistent compilation cache.

Runs in JAX's default float32, as production training does. ``--quick`` shortens every part
to a seconds-long smoke run.
"""

from __future__ import annotations

from opifex.benchmarks._harness import Context, Record, run_parts

PARTS = {
    "memory": "opifex.benchmarks.production._memory",
    "jit": "opifex.benchmarks.production._jit",
}


def run(ctx: Context) -> list[Record]:
    """Run the selected parts and return their records."""
    return run_parts(ctx, PARTS, x64=False)
