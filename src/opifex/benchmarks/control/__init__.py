"""``opifex bench control``: differentiable MPC, barrier-function safety, system identification.

Parts (``--option parts=mpc,cbf,sysid``, all by default):

- ``mpc``: double-integrator LQR against the discrete Riccati solution; cart-pole swing-up
  (acados' getting-started model) against CasADi + IPOPT in the same run: open-loop optimum,
  a warm-started closed loop (``--option closed_loop_steps=100``), time per MPC step,
  iterations cold against warm, and gradients against central finite differences;
- ``cbf``: control-barrier-function safety filters (adaptive cruise control, unicycle);
- ``sysid``: system identification on the Cascaded Tanks and Silverbox benchmarks against an
  ARX least-squares baseline.

``--quick`` shortens every part to a seconds-long smoke run.
"""

from __future__ import annotations

from opifex.benchmarks._harness import Context, Record, run_parts

PARTS = {
    "mpc": "opifex.benchmarks.control._mpc",
    "cbf": "opifex.benchmarks.control._cbf",
    "sysid": "opifex.benchmarks.control._sysid",
}


def run(ctx: Context) -> list[Record]:
    """Run the selected parts and return their records."""
    return run_parts(ctx, PARTS)
