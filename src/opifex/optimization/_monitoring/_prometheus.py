"""Prometheus exposition with the naming rules enforced at definition time.

Every metric is checked against the Prometheus data model and naming conventions
(https://prometheus.io/docs/concepts/data_model/ and
https://prometheus.io/docs/practices/naming/) before it is created, and a name that breaks one
is rejected with the rule it breaks:

- ``data model``: ``[a-zA-Z_:][a-zA-Z0-9_:]*``;
- ``snake_case``: lower-case words joined by ``_``; no ``:`` (reserved for recording rules) and
  no leading ``__`` (reserved for internal use);
- ``base units``: seconds and bytes, never ``ms``, ``minutes``, ``kb``, ``mb``, ``percent``...;
- ``unit suffix``: a time metric ends in ``_seconds``, a size metric in ``_bytes`` (before
  ``_total`` for counters);
- ``counter suffix``: counters, and only counters, end in ``_total``;
- ``reserved suffix``: ``_bucket``, ``_count``, ``_sum``, ``_created`` and ``_info`` belong to
  the exposition format.

Non-finite values are never exported as numbers: they increment
``<namespace>_nonfinite_values_total{metric=...}`` instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DATA_MODEL = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SNAKE = re.compile(r"^[a-z_][a-z0-9_]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NON_BASE = {
    "ms": "seconds", "msec": "seconds", "milliseconds": "seconds", "us": "seconds",
    "microseconds": "seconds", "ns": "seconds", "nanoseconds": "seconds",
    "minutes": "seconds", "hours": "seconds", "days": "seconds", "secs": "seconds",
    "kb": "bytes", "kib": "bytes", "kilobytes": "bytes", "mb": "bytes", "mib": "bytes",
    "megabytes": "bytes", "gb": "bytes", "gib": "bytes", "gigabytes": "bytes", "bits": "bytes",
    "percent": "a 0-1 ratio",
}  # fmt: skip
_RESERVED = ("_bucket", "_count", "_sum", "_created", "_info")
KINDS = ("counter", "gauge", "histogram")
UNITS = ("seconds", "bytes")


def _reject(name: str, rule: str, fix: str) -> ValueError:
    return ValueError(f"metric name {name!r} breaks the Prometheus rule '{rule}': {fix}")


def check_metric_name(name: str, *, kind: str, unit: str | None = None) -> str:
    """Check a metric name against the Prometheus data model and naming rules.

    Args:
        name: Full metric name (with namespace).
        kind: ``'counter'``, ``'gauge'`` or ``'histogram'``.
        unit: ``'seconds'``, ``'bytes'`` or ``None`` (dimensionless or a count).

    Returns:
        ``name``, unchanged.

    Raises:
        ValueError: Naming the broken rule and how to fix it.

    Example:
        >>> check_metric_name("opifex_step_duration_seconds", kind="histogram", unit="seconds")
        'opifex_step_duration_seconds'
        >>> check_metric_name("opifex_step_ms", kind="gauge")
        Traceback (most recent call last):
        ...
        ValueError: metric name 'opifex_step_ms' breaks the Prometheus rule 'base units': ...
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if unit is not None and unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS} or None, got {unit!r}; use base units.")
    if not isinstance(name, str) or not _DATA_MODEL.match(name):
        raise _reject(name, "data model", "it must match [a-zA-Z_:][a-zA-Z0-9_:]*.")
    if not _SNAKE.match(name) or name.startswith("__"):
        raise _reject(
            name, "snake_case", "use lower-case words joined by '_', without ':' or a leading '__'."
        )
    words = name.split("_")
    for word in words:
        if word in _NON_BASE:
            raise _reject(
                name, "base units", f"'{word}' is not a base unit; convert to {_NON_BASE[word]}."
            )
    stem = name[: -len("_total")] if name.endswith("_total") else name
    if kind == "counter" and stem == name:
        raise _reject(name, "counter suffix", f"a counter must end in '_total' ({name}_total).")
    if kind != "counter" and stem != name:
        raise _reject(name, "counter suffix", f"only counters end in '_total'; this is a {kind}.")
    for suffix in _RESERVED:
        if stem.endswith(suffix):
            raise _reject(name, "reserved suffix", f"'{suffix}' is reserved by the exposition.")
    for u in UNITS:
        if unit == u and not stem.endswith("_" + u):
            raise _reject(name, "unit suffix", f"a metric in {u} must end in '_{u}'.")
        if unit != u and stem.endswith("_" + u):
            raise _reject(name, "unit suffix", f"'_{u}' names a metric in {u}; pass unit={u!r}.")
    return name


def _check_labelnames(labelnames: Sequence[str]) -> tuple[str, ...]:
    for label in labelnames:
        if not isinstance(label, str) or not _LABEL.match(label) or label.startswith("__"):
            raise ValueError(
                f"label name {label!r} breaks the Prometheus rule 'label name': it must match "
                "[a-zA-Z_][a-zA-Z0-9_]* and not start with '__'."
            )
    return tuple(labelnames)


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; :meth:`close` stops it.

    Attributes:
        address: The bound address.
        port: The bound port (useful after asking for port 0).
        url: ``http://address:port/metrics``.
    """

    def __init__(self, server, thread) -> None:
        self._server, self._thread = server, thread
        self.address, self.port = server.server_address[:2]
        self.url = f"http://{self.address}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


class PrometheusExporter:
    """Prometheus metrics with validated names, in their own registry by default.

    Args:
        registry: Where metrics are registered (default: a new ``CollectorRegistry``, so two
            exporters never collide and nothing leaks into the global registry).
        namespace: Prefix joined to every metric name with ``_``.

    Example:
        >>> exp = PrometheusExporter(namespace="demo")
        >>> exp.define("steps_total", "Steps taken.", kind="counter")
        >>> exp.inc("steps_total", 3)
        >>> "demo_steps_total 3.0" in exp.exposition()
        True
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "opifex"):
        if namespace and not _SNAKE.match(namespace):
            raise _reject(namespace, "snake_case", "the namespace must be lower-case snake_case.")
        self.registry = CollectorRegistry() if registry is None else registry
        self.namespace = namespace
        self._metrics: dict[str, tuple[str, object, tuple[str, ...]]] = {}
        self._nonfinite = Counter(
            self.full_name("nonfinite_values_total")[: -len("_total")],
            "Non-finite observations rejected (not exported as numbers), per metric.",
            ["metric"],
            registry=self.registry,
        )

    def full_name(self, name: str) -> str:
        """``name`` with the namespace prefix."""
        return f"{self.namespace}_{name}" if self.namespace else name

    def define(
        self,
        name: str,
        help: str,
        *,
        kind: str,
        unit: str | None = None,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> None:
        """Create a metric after checking its name; redefining the same metric is a no-op.

        Args:
            name: Name without namespace (e.g. ``'step_duration_seconds'``).
            help: One-line description.
            kind: ``'counter'``, ``'gauge'`` or ``'histogram'``.
            unit: ``'seconds'``, ``'bytes'`` or ``None``.
            labelnames: Label names.
            buckets: Histogram bucket upper bounds (default: prometheus_client's).

        Raises:
            ValueError: On a name or label breaking a Prometheus rule, or a redefinition with
                another kind or labels.
        """
        full = check_metric_name(self.full_name(name), kind=kind, unit=unit)
        labels = _check_labelnames(labelnames)
        if name in self._metrics:
            old_kind, _, old_labels = self._metrics[name]
            if (old_kind, old_labels) != (kind, labels):
                raise ValueError(
                    f"metric {full!r} is already a {old_kind} with labels {old_labels}; "
                    f"got a {kind} with labels {labels}. Use another name."
                )
            return
        if kind == "counter":
            metric = Counter(full[: -len("_total")], help, labels, registry=self.registry)
        elif kind == "gauge":
            metric = Gauge(full, help, labels, registry=self.registry)
        else:
            extra = {} if buckets is None else {"buckets": tuple(buckets)}
            metric = Histogram(full, help, labels, registry=self.registry, **extra)
        self._metrics[name] = (kind, metric, labels)

    def _child(self, name: str, value: float, labels: Mapping[str, object] | None, kind: str):
        if name not in self._metrics:
            raise ValueError(f"metric {name!r} is not defined; call define() first.")
        have, metric, labelnames = self._metrics[name]
        if have != kind:
            raise TypeError(f"metric {name!r} is a {have}, not a {kind}.")
        if not math.isfinite(value):
            self._nonfinite.labels(metric=self.full_name(name)).inc()
            return None
        labels = dict(labels or {})
        if set(labels) != set(labelnames):
            raise ValueError(
                f"metric {name!r} takes labels {list(labelnames)}, got {sorted(labels)}."
            )
        return metric.labels(**{k: str(v) for k, v in labels.items()}) if labelnames else metric

    def inc(self, name: str, amount: float = 1.0, labels: Mapping[str, object] | None = None):
        """Add ``amount`` (>= 0) to a counter."""
        if amount < 0:
            raise ValueError(f"a counter only goes up; got amount={amount} for {name!r}.")
        child = self._child(name, float(amount), labels, "counter")
        if child is not None:
            child.inc(amount)

    def set(self, name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
        """Set a gauge (non-finite values are counted, not set)."""
        child = self._child(name, float(value), labels, "gauge")
        if child is not None:
            child.set(value)

    def observe(self, name: str, value: float, labels: Mapping[str, object] | None = None):
        """Add an observation to a histogram (non-finite values are counted, not observed)."""
        child = self._child(name, float(value), labels, "histogram")
        if child is not None:
            child.observe(value)

    def exposition(self) -> str:
        """The registry in the Prometheus text format."""
        return prometheus_client.generate_latest(self.registry).decode("utf-8")

    def serve(self, port: int = 0, *, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` over HTTP in a daemon thread.

        Args:
            port: TCP port; 0 picks a free one (read it from the result's ``port``).
            addr: Bind address; loopback by default so metrics are not exposed to the network
                unless asked for.

        Returns:
            The running :class:`MetricsServer`.
        """
        server, thread = prometheus_client.start_http_server(
            port, addr=addr, registry=self.registry
        )
        return MetricsServer(server, thread)
