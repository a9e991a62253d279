"""``opifex bench l2o``: learned solvers against classical ones, measured in the same run.

Parts (``--option parts=qp,learned,warm``, all by default):

- ``qp``: DC3's convex QP (100 variables, 50 equalities, 50 inequalities; the last 833 of the
  10,000 generated instances) solved by a parametric solver with exact feasibility and by a
  DC3 reimplementation, against OSQP (eps 1e-4) one instance at a time: relative gaps,
  feasibility fractions, throughput, single-instance latency and the break-even count once
  training time is counted;
- ``learned``: a learned optimizer meta-trained on a task family and tested on held-out tasks
  against Adam with a tuned learning rate and optax's learning-rate-free methods;
- ``warm``: warm starts for related problems (previous solution, nearest neighbour, learned
  predictor) against cold starts for Levenberg-Marquardt, L-BFGS, a long first-order run and
  OSQP.

``--quick`` shortens every part to a seconds-long smoke run.
"""

from __future__ import annotations

from opifex.benchmarks._harness import Context, Record, run_parts

PARTS = {
    "qp": "opifex.benchmarks.l2o._qp",
    "learned": "opifex.benchmarks.l2o._learned",
    "warm": "opifex.benchmarks.l2o._warm",
}


def run(ctx: Context) -> list[Record]:
    """Run the selected parts and return their records."""
    return run_parts(ctx, PARTS)
