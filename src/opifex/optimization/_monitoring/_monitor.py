"""PerformanceMonitor: measured metrics from training loops, solvers and served functions.

Everything here runs on the host, between jitted calls: the monitor reads values the loop
already has (a loss, a gradient norm, a result it blocks on) and clocks it owns, so the
compiled computation is unchanged. Observations go to two sinks: a :class:`MetricStore`
(SQLite, buffered, bounded retention) for history, and a :class:`PrometheusExporter` for
scraping. Compile events come from ``jax.monitoring`` duration listeners
(``/jax/core/compile/*``); memory from ``Device.memory_stats()`` where the backend reports it
(GPU/TPU) and from the process resident set size everywhere.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from opifex.optimization._monitoring._prometheus import (
    MetricsServer,
    PrometheusExporter,
    check_metric_name,
)
from opifex.optimization._monitoring._store import MetricStore, Point, StoreHealth

_COMPILE_PREFIX = "/jax/core/compile/"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
# (name, help, kind, unit, labels): every metric the monitor writes, checked once at start-up.
_METRICS = (
    ("step_duration_seconds", "Wall time of one loop step.", "histogram", "seconds", ("loop",)),
    ("steps_total", "Loop steps recorded.", "counter", None, ("loop",)),
    ("items_total", "Items (examples, points) processed.", "counter", None, ("loop",)),
    ("throughput_items_per_second", "Items per second in the last step.", "gauge", None,
     ("loop",)),
    ("loss", "Objective value at the last step.", "gauge", None, ("loop",)),
    ("gradient_norm", "Gradient norm at the last step.", "gauge", None, ("loop",)),
    ("solves_total", "Finished solves by status.", "counter", None, ("loop", "status")),
    ("solver_steps", "Iterations of the last solve.", "gauge", None, ("loop",)),
    ("call_duration_seconds", "Wall time of a served call.", "histogram", "seconds",
     ("function",)),
    ("calls_total", "Served calls.", "counter", None, ("function",)),
    ("call_errors_total", "Served calls that raised.", "counter", None, ("function",)),
    ("compile_duration_seconds", "JAX tracing/lowering/compile time.", "histogram", "seconds",
     ("stage",)),
    ("compilations_total", "Executables built (compiled, or loaded from the persistent cache).",
     "counter", None, ()),
    ("compilation_cache_hits_total", "Executables loaded from the persistent cache.", "counter",
     None, ()),
    ("device_memory_in_use_bytes", "Device memory in use.", "gauge", "bytes", ("device",)),
    ("device_memory_peak_bytes", "Peak device memory in use.", "gauge", "bytes", ("device",)),
    ("process_resident_memory_bytes", "Resident set size of this process.", "gauge", "bytes",
     ()),
    ("process_max_resident_memory_bytes", "Peak resident set size of this process.", "gauge",
     "bytes", ()),
)  # fmt: skip
_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class StepRecord(NamedTuple):
    """What :meth:`PerformanceMonitor.step` measured.

    Attributes:
        loop: Loop label.
        step: 1-based index of this step in its loop.
        seconds: Step wall time, or ``None`` for a first step with no start mark.
        throughput: ``items / seconds``, or ``None``.
        loss: The loss as a float, or ``None``.
        grad_norm: The gradient norm as a float, or ``None``.
    """

    loop: str
    step: int
    seconds: float | None
    throughput: float | None
    loss: float | None
    grad_norm: float | None


def _resident_bytes() -> tuple[float | None, float]:
    current = None
    try:
        with open("/proc/self/statm") as f:
            current = float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        pass
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    # ru_maxrss is in KiB on Linux and in bytes on macOS; the kernel updates it lazily, so it
    # can trail the current RSS read a moment ago.
    peak = peak if sys.platform == "darwin" else peak * 1024.0
    return current, max(peak, current or 0.0)


class _StoreCollector:
    """Exposes the store's health to Prometheus at scrape time."""

    def __init__(self, monitor: PerformanceMonitor) -> None:
        self._monitor = monitor
        ns = monitor.exporter.full_name
        self._names = {
            "pending": check_metric_name(ns("metric_store_pending_points"), kind="gauge"),
            "rows": check_metric_name(ns("metric_store_rows"), kind="gauge"),
            "dropped": check_metric_name(ns("metric_store_dropped_points_total"), kind="counter"),
            "failures": check_metric_name(ns("metric_store_write_failures_total"), kind="counter"),
        }

    def collect(self):
        h = self._monitor.health()
        n = self._names
        yield GaugeMetricFamily(n["pending"], "Points buffered, not yet written.", h.pending)
        yield GaugeMetricFamily(n["rows"], "Rows in the store.", h.stored_rows)
        yield CounterMetricFamily(n["dropped"][:-6], "Points lost to buffer overflow.", h.dropped)
        yield CounterMetricFamily(n["failures"][:-6], "Failed store writes.", h.write_failures)


class PerformanceMonitor:
    """Collects step, solver, serving, compile and memory metrics; stores and exposes them.

    Args:
        store: A :class:`MetricStore`, a SQLite file path (persistent across restarts),
            ``":memory:"`` (default), or ``None`` for no history.
        registry: ``prometheus_client`` registry (default: a new one owned by this monitor).
        namespace: Prefix of every Prometheus metric name.
        clock: Monotonic clock for durations, in seconds (injectable for exact tests).
        wall_clock: Clock for stored timestamps, in seconds since the epoch.
        compile_events: Listen to ``jax.monitoring`` compile-duration events.
        memory_every: Sample memory every this many steps of a loop (0: only on
            :meth:`sample_memory`).
        max_age_seconds: Store retention by age (when ``store`` is a path).
        max_rows: Store retention by row count (when ``store`` is a path).

    Example:
        >>> ticks = iter([0.0, 0.5, 1.5])
        >>> with PerformanceMonitor(clock=lambda: next(ticks), compile_events=False) as mon:
        ...     mon.start("train")
        ...     rec = mon.step("train", loss=0.25, items=10)
        ...     rec = mon.step("train", loss=0.125, items=10)
        ...     print(rec.seconds, rec.throughput, [p.value for p in mon.query("opifex_loss")])
        1.0 10.0 [0.25, 0.125]
    """

    def __init__(
        self,
        store: MetricStore | str | None = ":memory:",
        *,
        registry=None,
        namespace: str = "opifex",
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        compile_events: bool = True,
        memory_every: int = 0,
        max_age_seconds: float | None = None,
        max_rows: int | None = None,
    ) -> None:
        if not isinstance(memory_every, int) or memory_every < 0:
            raise ValueError(f"memory_every must be an int >= 0, got {memory_every!r}.")
        if isinstance(store, str):
            store = MetricStore(
                store, max_age_seconds=max_age_seconds, max_rows=max_rows, clock=wall_clock
            )
        elif store is not None and not isinstance(store, MetricStore):
            raise TypeError(
                f"store must be a MetricStore, a path or None, got {type(store).__name__}."
            )
        self.store = store
        self.exporter = PrometheusExporter(registry, namespace=namespace)
        for name, doc, kind, unit, labels in _METRICS:
            buckets = _BUCKETS if kind == "histogram" else None
            self.exporter.define(
                name, doc, kind=kind, unit=unit, labelnames=labels, buckets=buckets
            )
        self.registry = self.exporter.registry
        self._collector = _StoreCollector(self)
        self.registry.register(self._collector)
        self.clock = clock
        self.memory_every = memory_every
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._nonfinite: dict[str, int] = {}
        self._listening = False
        if compile_events:
            jax.monitoring.register_event_duration_secs_listener(self._on_duration)
            jax.monitoring.register_event_listener(self._on_event)
            self._listening = True

    def _emit(self, name: str, value: float, labels: Mapping[str, object], kind: str) -> None:
        if kind == "gauge":
            self.exporter.set(name, value, labels)
        elif kind == "histogram":
            self.exporter.observe(name, value, labels)
        if value != value or value in (float("inf"), float("-inf")):
            full = self.exporter.full_name(name)
            self._nonfinite[full] = self._nonfinite.get(full, 0) + 1
        if self.store is not None:
            self.store.record(self.exporter.full_name(name), value, labels)

    def start(self, loop: str = "train") -> None:
        """Mark the start of ``loop`` so that its first :meth:`step` gets a duration."""
        self._last[loop] = self.clock()

    def step(
        self,
        loop: str = "train",
        *,
        loss: Any = None,
        grad_norm: Any = None,
        items: int | None = None,
        seconds: float | None = None,
    ) -> StepRecord:
        """Record one finished step; call it once per step, after the step, on the host.

        The step's duration is the time since the previous call for ``loop`` (or since
        :meth:`start`), unless ``seconds`` is given. Passing a JAX array as ``loss`` waits for
        it, so the duration includes the device work of the step.

        Args:
            loop: Label of the loop (``'train'``, ``'eval'``, a solver name...).
            loss: Objective value (scalar; array or float).
            grad_norm: Gradient norm (scalar).
            items: Examples processed in the step, for throughput.
            seconds: Measured step duration, overriding the clock.

        Returns:
            The :class:`StepRecord`.
        """
        loss_f = None if loss is None else float(loss)
        grad_f = None if grad_norm is None else float(grad_norm)
        now = self.clock()
        if seconds is None and loop in self._last:
            seconds = now - self._last[loop]
        self._last[loop] = now
        count = self._count[loop] = self._count.get(loop, 0) + 1
        labels = {"loop": loop}
        self.exporter.inc("steps_total", 1, labels)
        throughput = None
        if seconds is not None:
            self._emit("step_duration_seconds", float(seconds), labels, "histogram")
        if items is not None:
            self.exporter.inc("items_total", items, labels)
            if seconds is not None and seconds > 0:
                throughput = items / seconds
                self._emit("throughput_items_per_second", throughput, labels, "gauge")
        if loss_f is not None:
            self._emit("loss", loss_f, labels, "gauge")
        if grad_f is not None:
            self._emit("gradient_norm", grad_f, labels, "gauge")
        if self.memory_every and count % self.memory_every == 0:
            self.sample_memory()
        return StepRecord(loop, count, seconds, throughput, loss_f, grad_f)

    def observe_solution(self, solution: Any, *, seconds: float | None = None, loop="solver"):
        """Record a finished ``solve``: its value, iterations, status and duration.

        Args:
            solution: An ``opifex.optimization.core.Solution`` (unbatched).
            seconds: Wall time of the solve, if measured.
            loop: Label of the solver.
        """
        from opifex.optimization.core import Status

        status = Status(int(solution.status)).name
        steps = int(solution.num_steps)
        labels = {"loop": loop}
        self.exporter.inc("solves_total", 1, {"loop": loop, "status": status})
        self._emit("solver_steps", float(steps), labels, "gauge")
        self._emit("loss", float(solution.value), labels, "gauge")
        if seconds is not None:
            self._emit("step_duration_seconds", float(seconds), labels, "histogram")

    def timed(self, name: str | Callable | None = None, *, block: bool = True):
        """Time served calls, as a decorator or a context manager.

        Args:
            name: The ``function`` label (default: the decorated function's name). Passing a
                function directly (``@monitor.timed``) decorates it.
            block: Wait for the result (``jax.block_until_ready``) so the duration includes
                device work; only applies to the decorator.

        Returns:
            A decorator that is also a context manager.

        Example:
            >>> with PerformanceMonitor(compile_events=False) as mon:
            ...     @mon.timed
            ...     def double(x):
            ...         return 2 * x
            ...     print(double(3), [p.labels for p in mon.query("opifex_call_duration_seconds")])
            6 [{'function': 'double'}]
        """
        if callable(name):
            return _Timed(self, name.__name__, block)(name)
        return _Timed(self, name, block)

    def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if not event.startswith(_COMPILE_PREFIX):
            return
        stage = event[len(_COMPILE_PREFIX) :].removesuffix("_duration")
        self._emit("compile_duration_seconds", float(duration), {"stage": stage}, "histogram")
        if stage == "backend_compile":
            self.exporter.inc("compilations_total")

    def _on_event(self, event: str, **kwargs: Any) -> None:
        if event == _CACHE_HIT_EVENT:
            self.exporter.inc("compilation_cache_hits_total")

    def sample_memory(self) -> dict[str, float]:
        """Record device memory (where the backend reports it) and process memory.

        Returns:
            The recorded values in bytes, keyed by metric name.
        """
        out = {}
        for device in jax.local_devices():
            stats = device.memory_stats() if hasattr(device, "memory_stats") else None
            if not stats:
                continue
            labels = {"device": str(device.id)}
            for key, name in (("bytes_in_use", "device_memory_in_use_bytes"),
                              ("peak_bytes_in_use", "device_memory_peak_bytes")):  # fmt: skip
                if key in stats:
                    self._emit(name, float(stats[key]), labels, "gauge")
                    out[f"{name}:{device.id}"] = float(stats[key])
        current, peak = _resident_bytes()
        if current is not None:
            self._emit("process_resident_memory_bytes", current, {}, "gauge")
            out["process_resident_memory_bytes"] = current
        self._emit("process_max_resident_memory_bytes", peak, {}, "gauge")
        out["process_max_resident_memory_bytes"] = peak
        return out

    def query(self, series: str, labels: Mapping[str, object] | None = None, **kw) -> list[Point]:
        """Points of one stored series (see :meth:`MetricStore.query`)."""
        if self.store is None:
            raise ValueError("this monitor keeps no history (store=None); pass a store path.")
        return self.store.query(series, labels, **kw)

    def health(self) -> StoreHealth:
        """Store health plus non-finite counts; ``reasons`` says what needs attention."""
        if self.store is not None:
            return self.store.health()
        reasons = tuple(
            f"{c} non-finite values in series {s!r} (flagged)"
            for s, c in sorted(self._nonfinite.items())
        )
        return StoreHealth(not reasons, 0, 0, 0, 0, dict(self._nonfinite), None, reasons)

    def exposition(self) -> str:
        """All metrics in the Prometheus text format."""
        return self.exporter.exposition()

    def serve(self, port: int = 0, *, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` over HTTP (loopback by default); see ``PrometheusExporter.serve``."""
        return self.exporter.serve(port, addr=addr)

    def flush(self) -> bool:
        """Write buffered points now; ``False`` if the store could not be written."""
        return True if self.store is None else self.store.flush()

    def close(self) -> None:
        """Stop listening to JAX events and flush and close the store."""
        if self._listening:
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
            jax.monitoring.unregister_event_listener(self._on_event)
            self._listening = False
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> PerformanceMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Timed:
    def __init__(self, monitor: PerformanceMonitor, name: str | None, block: bool) -> None:
        self._monitor, self._name, self._block = monitor, name, block
        self._starts: list[float] = []

    def _record(self, name: str, seconds: float, failed: bool) -> None:
        labels = {"function": name}
        self._monitor.exporter.inc("calls_total", 1, labels)
        if failed:
            self._monitor.exporter.inc("call_errors_total", 1, labels)
        self._monitor._emit("call_duration_seconds", seconds, labels, "histogram")

    def __call__(self, fn: Callable) -> Callable:
        name = self._name or fn.__name__
        clock = self._monitor.clock

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                out = fn(*args, **kwargs)
                if self._block:
                    jax.block_until_ready(out)
            except BaseException:
                self._record(name, clock() - start, True)
                raise
            self._record(name, clock() - start, False)
            return out

        return wrapper

    def __enter__(self) -> _Timed:
        if self._name is None:
            raise ValueError("timed() as a context manager needs a name, e.g. timed('predict').")
        self._starts.append(self._monitor.clock())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        start = self._starts.pop()
        self._record(self._name, self._monitor.clock() - start, exc_type is not None)
