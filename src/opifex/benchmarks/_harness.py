"""What every benchmark suite shares: records with computed targets, timing, the report.

A suite is a function ``run(ctx: Context) -> list[Record]``. ``opifex bench <suite>`` prints
the records as a table and writes ``results/<suite>/summary.json`` plus the suite's PNG plots.
"""

from __future__ import annotations

import json
import math
import operator
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass
class Record:
    """One measured figure. ``met`` is derived from ``value`` and ``target``, never set by hand."""

    name: str
    value: float
    unit: str
    target: str | None = None
    met: bool | None = field(default=None, init=False)
    peer: str | None = None
    peer_value: float | None = None

    def __post_init__(self) -> None:
        self.value = float(self.value)
        if self.peer_value is not None:
            self.peer_value = float(self.peer_value)
        if self.target is not None:
            op, _, threshold = self.target.partition(" ")
            if op not in _OPS:
                raise ValueError(f"target must look like '<= 1.5', got {self.target!r}.")
            self.met = bool(not math.isnan(self.value) and _OPS[op](self.value, float(threshold)))

    @property
    def ratio(self) -> float | None:
        """``value / peer_value`` where both exist and the peer's is non-zero."""
        if self.peer_value in (None, 0.0):
            return None
        return self.value / self.peer_value


@dataclass
class Timing:
    """Compile time and the median of post-compile run times, in seconds."""

    compile_s: float
    run_s: float
    runs: list[float]


def block(tree: Any) -> Any:
    """Wait for every array in ``tree`` (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(tree)


def time_jax(fn: Callable, *args: Any, repeats: int = 5) -> Timing:
    """Time ``jax.jit(fn)``: lowering+compilation once, then ``repeats`` runs of the executable."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    block(compiled(*args))  # warm-up: first dispatch allocates buffers
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return Timing(compile_s, statistics.median(runs), runs)


def time_host(fn: Callable, *args: Any, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time a host-side callable (a peer such as scipy); first calls are reported as compile."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        block(fn(*args))
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn(*args))
        runs.append(time.perf_counter() - t0)
    return Timing(compile_s, statistics.median(runs), runs)


@dataclass
class Context:
    """What a suite gets: the quick flag, where to write, a console and a progress factory."""

    suite: str
    quick: bool
    out_dir: Path
    console: Console
    options: dict[str, str] = field(default_factory=dict)

    def option(self, name: str, default: Any, kind: Callable = str) -> Any:
        """The ``--option name=value`` given on the command line, as ``kind``, or ``default``."""
        if name not in self.options:
            return default
        try:
            return kind(self.options[name])
        except ValueError as exc:
            raise ValueError(f"--option {name}={self.options[name]!r}: {exc}") from None

    def progress(self) -> Progress:
        """A rich progress bar for the suite's long loops."""
        return Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as ``<out_dir>/<name>.png`` and close it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.console.print(f"[dim]plot: {path}[/dim]")
        return path


def environment() -> dict[str, Any]:
    """Versions and devices, recorded in every summary."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("opifex", "jax", "jaxlib", "optax", "flax", "numpy", "scipy", "optimistix"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.read("jax_enable_x64")),
        "versions": versions,
    }


def write_summary(ctx: Context, records: Sequence[Record], extra: dict | None = None) -> Path:
    """Write ``<out_dir>/summary.json`` with the suite name, records and environment."""
    payload = {
        "suite": ctx.suite,
        "quick": ctx.quick,
        "records": [asdict(r) for r in records],
        "environment": environment(),
    }
    if extra:
        payload.update(extra)
    path = ctx.out_dir / "summary.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


def records_table(title: str, records: Sequence[Record]) -> Table:
    """A rich table of records with target, verdict and the peer's figure."""
    table = Table(title=title, show_lines=False)
    for col in ("name", "value", "unit", "target", "met", "peer", "peer value", "ratio"):
        table.add_column(col, justify="right" if col not in ("name", "peer") else "left")
    for r in records:
        met = "" if r.met is None else ("[green]yes[/green]" if r.met else "[red]NO[/red]")
        table.add_row(
            r.name,
            _fmt(r.value),
            r.unit,
            r.target or "",
            met,
            r.peer or "",
            _fmt(r.peer_value),
            _fmt(r.ratio),
        )
    return table


def run_parts(ctx: Context, parts: dict[str, str], *, x64: bool = True) -> list[Record]:
    """Run the parts named by ``--option parts=a,b`` (all by default).

    ``parts`` maps a part name to the module whose ``run(ctx)`` returns its records; ``x64``
    switches float64 on first (accuracy suites), off leaves JAX's default float32.
    """
    import importlib

    if x64:
        jax.config.update("jax_enable_x64", True)
    names = [p for p in ctx.option("parts", ",".join(parts)).split(",") if p]
    unknown = sorted(set(names) - set(parts))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {sorted(parts)}.")
    records: list[Record] = []
    for name in names:
        records.extend(importlib.import_module(parts[name]).run(ctx))
    return records
