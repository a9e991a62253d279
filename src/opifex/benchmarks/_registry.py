"""The suites ``opifex bench`` knows, imported lazily so one broken peer never blocks another."""

from __future__ import annotations

import importlib
from pathlib import Path

from rich.console import Console

from opifex.benchmarks._harness import Context, Record, records_table, write_summary

# suite name -> "module:function"; the function takes a Context and returns list[Record].
SUITES: dict[str, str] = {
    "second-order": "opifex.benchmarks.second_order:run",
    "pinn": "opifex.benchmarks.pinn:run",
    "control": "opifex.benchmarks.control:run",
    "l2o": "opifex.benchmarks.l2o:run",
    "production": "opifex.benchmarks.production:run",
    "monitoring": "opifex.benchmarks.monitoring:run",
}


def run_suite(
    name: str,
    *,
    quick: bool = False,
    out_root: Path | str = "results",
    console: Console | None = None,
    options: dict[str, str] | None = None,
) -> list[Record]:
    """Run suite ``name``, print its table, write ``<out_root>/<name>/summary.json`` and plots."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r}; choose one of {sorted(SUITES)}.")
    console = console or Console()
    out_dir = Path(out_root) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    module, func = SUITES[name].split(":")
    run = getattr(importlib.import_module(module), func)
    ctx = Context(suite=name, quick=quick, out_dir=out_dir, console=console, options=options or {})
    records = run(ctx)
    console.print(records_table(f"opifex bench {name}{' --quick' if quick else ''}", records))
    path = write_summary(ctx, records)
    missed = [r.name for r in records if r.met is False]
    console.print(f"summary: {path}  ({len(records)} records, {len(missed)} targets missed)")
    return records
