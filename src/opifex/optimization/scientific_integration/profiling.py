"""Compile time, run time, FLOPs and memory of one jitted physics step.

:class:`PhysicsProfiler` lowers and compiles a step once (timed apart from running it), runs
it ``warmup`` times untimed and ``repeats`` times timed (each call waits with
``jax.block_until_ready``), and reads XLA's own cost and memory analyses of the compiled
program. Figures XLA does not report are ``None``, never guessed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

__all__ = ["PhysicsProfiler", "ProfileReport"]


def _cost_figure(cost: Any, key: str) -> float | None:
    """``key`` summed over XLA's cost analysis (a dict, or a list of dicts per program)."""
    if cost is None:
        return None
    parts = cost if isinstance(cost, (list, tuple)) else [cost]
    values = [p[key] for p in parts if isinstance(p, dict) and key in p]
    # XLA reports -1 for quantities it could not determine.
    if not values or any(v is None or v < 0 for v in values):
        return None
    return float(sum(values))


def _memory_figures(compiled: Any) -> dict[str, int | None]:
    names = {
        "temp_bytes": "temp_size_in_bytes",
        "argument_bytes": "argument_size_in_bytes",
        "output_bytes": "output_size_in_bytes",
        "alias_bytes": "alias_size_in_bytes",
    }
    try:
        stats = compiled.memory_analysis()
    except Exception:  # backends without the analysis raise various errors
        stats = None
    return {k: (None if stats is None else getattr(stats, v, None)) for k, v in names.items()}


@dataclass(frozen=True)
class ProfileReport:
    """Measurements of one step function (times in seconds, sizes in bytes).

    Attributes:
        backend: JAX platform the step ran on (``"cpu"``, ``"gpu"``, ``"tpu"``).
        compile_time_s: Wall time of ``lower`` plus ``compile``.
        step_time_s: Median wall time of one call over ``repeats``.
        step_times_s: Every timed call.
        flops: Floating-point operations per call from XLA's cost analysis, or None.
        bytes_accessed: Bytes read and written per call from the cost analysis, or None.
        temp_bytes: Scratch memory of the compiled program, or None.
        argument_bytes: Memory of the arguments, or None.
        output_bytes: Memory of the outputs, or None.
        memory_bytes: ``temp + argument + output - alias`` bytes, or None if any is missing.
        num_points: Collocation points per call, if given.
        throughput: ``num_points / step_time_s`` (points per second), or None.
        flops_per_second: ``flops / step_time_s`` (achieved FLOP/s), or None.

    Example:
        >>> r = ProfileReport(backend="cpu", compile_time_s=0.1, step_time_s=0.002,
        ...                   step_times_s=(0.002,), flops=2e6)
        >>> r.to_dict()["flops"], "achieved FLOP/s" in str(r)
        (2000000.0, True)
    """

    backend: str
    compile_time_s: float
    step_time_s: float
    step_times_s: tuple[float, ...]
    flops: float | None = None
    bytes_accessed: float | None = None
    temp_bytes: int | None = None
    argument_bytes: int | None = None
    output_bytes: int | None = None
    memory_bytes: int | None = None
    num_points: int | None = None
    throughput: float | None = None
    flops_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (``step_times_s`` as a list)."""
        out = dataclasses.asdict(self)
        out["step_times_s"] = list(self.step_times_s)
        return out

    def __str__(self) -> str:
        def fmt(value, unit=""):
            return "n/a" if value is None else f"{value:.3e}{unit}"

        rows = [
            ("backend", self.backend),
            ("compile time", fmt(self.compile_time_s, " s")),
            (f"step time (median of {len(self.step_times_s)})", fmt(self.step_time_s, " s")),
            ("FLOPs per step", fmt(self.flops)),
            ("bytes accessed per step", fmt(self.bytes_accessed)),
            ("achieved FLOP/s", fmt(self.flops_per_second)),
            ("memory estimate", fmt(self.memory_bytes, " B")),
            (
                "  temp / argument / output",
                " / ".join(
                    fmt(v, " B") for v in (self.temp_bytes, self.argument_bytes, self.output_bytes)
                ),
            ),
            ("throughput", fmt(self.throughput, " points/s")),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@dataclass(frozen=True, kw_only=True)
class PhysicsProfiler:
    """Times and sizes a jittable step function.

    Attributes:
        repeats: Timed calls; the report gives their median (>= 1).
        warmup: Untimed calls after compilation, to exclude one-off costs such as the first
            transfer of the arguments (>= 0).

    Example:
        >>> import jax.numpy as jnp
        >>> a, b = jnp.ones((32, 64)), jnp.ones((64, 16))
        >>> report = PhysicsProfiler(repeats=3).profile(jnp.matmul, a, b, num_points=32)
        >>> report.flops in (None, 2.0 * 32 * 64 * 16)
        True
        >>> report.throughput == 32 / report.step_time_s
        True
    """

    repeats: int = 5
    warmup: int = 1

    def __post_init__(self):
        for name, lo in (("repeats", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}.")

    def profile(
        self, step_fn: Callable[..., Any], *args: Any, num_points: int | None = None
    ) -> ProfileReport:
        """Compile ``step_fn(*args)`` once, then time it and read XLA's analyses.

        Args:
            step_fn: A function ``jax.jit`` can compile with all of ``args`` traced (bind
                static arguments first with ``functools.partial``); may already be jitted.
            *args: Arguments of one step (arrays or pytrees of arrays).
            num_points: Collocation points processed per call, for the throughput.

        Returns:
            A :class:`ProfileReport`.

        Raises:
            ValueError: If ``num_points`` is given and is not an int >= 1.
        """
        if num_points is not None and (
            isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1
        ):
            raise ValueError(f"num_points must be None or an int >= 1, got {num_points!r}.")
        jitted = jax.jit(step_fn)
        start = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_time = time.perf_counter() - start

        for _ in range(self.warmup):
            jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        step_time = statistics.median(times)
        # A zero median only happens below the clock's resolution; no rate is better than inf.
        timed = step_time > 0

        try:
            cost = compiled.cost_analysis()
        except Exception:  # some backends do not implement it
            cost = None
        flops = _cost_figure(cost, "flops")
        memory = _memory_figures(compiled)
        parts = [memory["temp_bytes"], memory["argument_bytes"], memory["output_bytes"]]
        total = None
        if all(p is not None for p in parts):
            total = int(sum(parts) - (memory["alias_bytes"] or 0))
        return ProfileReport(
            backend=jax.default_backend(),
            compile_time_s=compile_time,
            step_time_s=step_time,
            step_times_s=tuple(times),
            flops=flops,
            bytes_accessed=_cost_figure(cost, "bytes accessed"),
            temp_bytes=memory["temp_bytes"],
            argument_bytes=memory["argument_bytes"],
            output_bytes=memory["output_bytes"],
            memory_bytes=total,
            num_points=num_points,
            throughput=None if num_points is None or not timed else num_points / step_time,
            flops_per_second=None if flops is None or not timed else flops / step_time,
        )
