"""``opifex bench monitoring``: anomaly detection on NAB and predictive scaling against HPA.

Parts (``--option parts=nab,scaling``, all by default):

- ``nab``: our NAB scorer reproducing the published scores of stored detector outputs, then
  our streaming detectors scored on the whole corpus (thresholds chosen without the scored
  file), against the published scoreboard, with detection throughput;
- ``scaling``: the predictive scaler against the Kubernetes HPA rule (real defaults) on the
  Azure LLM inference trace, the Alibaba hourly CPU trace and NAB's nyc_taxi series:
  overloaded steps and replica-hours, with the trade-off curve.

``--quick`` shortens every part to a seconds-long smoke run.
"""

from __future__ import annotations

from opifex.benchmarks._harness import Context, Record, run_parts

PARTS = {
    "nab": "opifex.benchmarks.monitoring._nab",
    "scaling": "opifex.benchmarks.monitoring._scaling",
}


def run(ctx: Context) -> list[Record]:
    """Run the selected parts and return their records."""
    return run_parts(ctx, PARTS)
