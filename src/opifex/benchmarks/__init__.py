"""Benchmark suites run by ``opifex bench <suite>``."""

from opifex.benchmarks._harness import Context, Record, Timing, time_host, time_jax
from opifex.benchmarks._registry import SUITES, run_suite

__all__ = ["SUITES", "Context", "Record", "Timing", "run_suite", "time_host", "time_jax"]
