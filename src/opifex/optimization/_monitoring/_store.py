"""An embedded SQLite time-series store that never blocks the loop that feeds it.

Points ``(series, labels, timestamp, value)`` go to an in-memory buffer and are written in one
transaction when the buffer holds ``flush_size`` points or ``flush_interval`` seconds have
passed. SQLite is opened with a zero busy timeout, so a locked or full database makes the
write fail at once instead of waiting: the points stay in the buffer (bounded by
``max_buffer``; the oldest are dropped and counted past that) and :meth:`MetricStore.health`
says what went wrong. The next flush retries.

Non-finite values are not numbers a time-series database can aggregate: they are counted per
series and stored with ``value`` NULL and ``flag`` set to ``'nan'``, ``'+inf'`` or ``'-inf'``,
so the event is kept without poisoning sums and means.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import NamedTuple

_SERIES_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    series TEXT NOT NULL,
    labels TEXT NOT NULL,
    ts REAL NOT NULL,
    value REAL,
    flag TEXT
);
CREATE INDEX IF NOT EXISTS points_series_ts ON points (series, ts);
CREATE INDEX IF NOT EXISTS points_ts ON points (ts);
"""


class Point(NamedTuple):
    """One stored observation.

    Attributes:
        series: Metric name.
        labels: Label names to values.
        timestamp: Seconds since the epoch.
        value: The value, or ``None`` for a non-finite observation.
        flag: ``None``, or ``'nan'``, ``'+inf'``, ``'-inf'`` for a non-finite observation.
    """

    series: str
    labels: dict[str, str]
    timestamp: float
    value: float | None
    flag: str | None


class StoreHealth(NamedTuple):
    """What the store has done with the points it accepted.

    Attributes:
        ok: ``True`` when nothing was dropped, nothing waits after a failed write and no
            non-finite value was seen.
        stored_rows: Rows in the database now (after retention).
        pending: Points buffered in memory, not yet written.
        dropped: Points lost because the buffer overflowed while writes failed.
        write_failures: Flushes that failed (locked, full or broken database).
        nonfinite: Non-finite observations per series.
        last_error: The last write error, or ``None``.
        reasons: Human-readable reasons why ``ok`` is ``False``.
    """

    ok: bool
    stored_rows: int
    pending: int
    dropped: int
    write_failures: int
    nonfinite: dict[str, int]
    last_error: str | None
    reasons: tuple[str, ...]


def _check_labels(labels: Mapping[str, object] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping of str to str, got {type(labels).__name__}.")
    out = {}
    for key, val in labels.items():
        if not isinstance(key, str) or not _LABEL_RE.match(key) or key.startswith("__"):
            raise ValueError(
                f"label name {key!r} breaks the Prometheus label-name rule "
                "[a-zA-Z_][a-zA-Z0-9_]* (and no leading '__'); rename it, e.g. 'loop'."
            )
        out[key] = str(val)
    return out


class MetricStore:
    """Buffered SQLite store of metric points with bounded retention.

    Args:
        path: Database file (created if absent), or ``":memory:"``. A file survives restarts.
        max_age_seconds: Delete points older than this on each write (``None``: keep).
        max_rows: Keep at most this many rows, dropping the oldest on write (``None``: keep).
        flush_size: Write once this many points are buffered.
        flush_interval: Write when this many seconds passed since the last write.
        max_buffer: Most points held in memory while writes fail; older ones are dropped.
        clock: Wall clock for timestamps and retention (injectable for tests).

    Raises:
        ValueError: On a non-positive bound.

    Example:
        >>> store = MetricStore(":memory:", max_rows=2)
        >>> for i in range(3):
        ...     store.record("loss", float(i), {"loop": "train"}, timestamp=float(i))
        >>> store.flush()
        True
        >>> [p.value for p in store.query("loss")]
        [1.0, 2.0]
        >>> store.close()
    """

    def __init__(
        self,
        path: str = ":memory:",
        *,
        max_age_seconds: float | None = None,
        max_rows: int | None = None,
        flush_size: int = 256,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, val in (("max_age_seconds", max_age_seconds), ("max_rows", max_rows)):
            if val is not None and not val > 0:
                raise ValueError(f"{name} must be > 0 or None, got {val!r}.")
        for name, val in (("flush_size", flush_size), ("max_buffer", max_buffer)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}.")
        if not flush_interval >= 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, got {flush_interval!r}.")
        self.path = str(path)
        self.max_age_seconds = max_age_seconds
        self.max_rows = max_rows
        self.flush_size = flush_size
        self.flush_interval = flush_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: deque[tuple] = deque(maxlen=max_buffer)
        self._dropped = 0
        self._failures = 0
        self._last_error: str | None = None
        self._failing = False
        self._nonfinite: dict[str, int] = {}
        # timeout=0: a locked database must fail the write at once, never stall the caller.
        self._conn = sqlite3.connect(
            self.path, timeout=0.0, check_same_thread=False, isolation_level=None
        )
        self._conn.execute("PRAGMA busy_timeout=0")
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._rows = self._conn.execute("SELECT COUNT(*) FROM points").fetchone()[0]
        self._last_flush = self.clock()

    def record(
        self,
        series: str,
        value: float,
        labels: Mapping[str, object] | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Buffer one observation; write the buffer if it is due.

        Args:
            series: Metric name, matching ``[a-zA-Z_:][a-zA-Z0-9_:]*``.
            value: A real number; NaN and infinities are counted and flagged.
            labels: Label names (Prometheus label rule) to values.
            timestamp: Seconds since the epoch (default: ``clock()``).

        Raises:
            ValueError: On a bad series or label name.
            TypeError: When ``value`` is not a real number.
        """
        if not isinstance(series, str) or not _SERIES_RE.match(series):
            raise ValueError(
                f"series name {series!r} breaks the Prometheus data-model rule "
                "[a-zA-Z_:][a-zA-Z0-9_:]*; use snake_case, e.g. 'train_loss'."
            )
        lab = _check_labels(labels)
        try:
            x = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"value must be a real number, got {value!r}.") from err
        ts = self.clock() if timestamp is None else float(timestamp)
        flag = None
        if not math.isfinite(x):
            flag = "nan" if math.isnan(x) else ("+inf" if x > 0 else "-inf")
            x = None
        row = (series, json.dumps(lab, sort_keys=True), ts, x, flag)
        with self._lock:
            if flag is not None:
                self._nonfinite[series] = self._nonfinite.get(series, 0) + 1
            if len(self._pending) == self._pending.maxlen:
                self._dropped += 1
            self._pending.append(row)
            due = len(self._pending) >= self.flush_size or (
                self.clock() - self._last_flush >= self.flush_interval
            )
        if due:
            self.flush()

    def flush(self) -> bool:
        """Write buffered points and apply retention; never waits for a lock.

        Returns:
            ``True`` when the buffer is empty afterwards, ``False`` when the write failed
            (the points stay buffered; see :meth:`health`).
        """
        with self._lock:
            self._last_flush = self.clock()
            if not self._pending:
                return True
            rows = list(self._pending)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", rows)
                deleted = self._apply_retention(len(rows))
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._failures += 1
                self._failing = True
                self._last_error = f"{type(err).__name__}: {err}"
                return False
            self._rows += len(rows) - deleted
            self._pending.clear()
            self._failing = False
            return True

    def _apply_retention(self, added: int) -> int:
        deleted = 0
        if self.max_age_seconds is not None:
            cutoff = self.clock() - self.max_age_seconds
            deleted += self._conn.execute("DELETE FROM points WHERE ts < ?", (cutoff,)).rowcount
        excess = self._rows + added - deleted - (self.max_rows or math.inf)
        if excess > 0:
            deleted += self._conn.execute(
                "DELETE FROM points WHERE rowid IN (SELECT rowid FROM points ORDER BY ts, rowid "
                "LIMIT ?)",
                (int(excess),),
            ).rowcount
        return deleted

    def query(
        self,
        series: str,
        labels: Mapping[str, object] | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        include_flagged: bool = False,
    ) -> list[Point]:
        """Stored and buffered points of one series, oldest first.

        Args:
            series: Metric name.
            labels: When given, only points whose labels equal these.
            since: Earliest timestamp (inclusive).
            until: Latest timestamp (inclusive).
            include_flagged: Also return non-finite observations (``value`` None).

        Returns:
            The points, sorted by timestamp.
        """
        lab = None if labels is None else json.dumps(_check_labels(labels), sort_keys=True)
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        with self._lock:
            stored = self._conn.execute(
                "SELECT series, labels, ts, value, flag FROM points "
                "WHERE series = ? AND ts >= ? AND ts <= ? ORDER BY ts, rowid",
                (series, lo, hi),
            ).fetchall()
            pending = [r for r in self._pending if r[0] == series and lo <= r[2] <= hi]
        out = []
        for s, lj, ts, val, flag in stored + sorted(pending, key=lambda r: r[2]):
            if (lab is not None and lj != lab) or (flag is not None and not include_flagged):
                continue
            out.append(Point(s, json.loads(lj), ts, val, flag))
        out.sort(key=lambda p: p.timestamp)
        return out

    def series(self) -> list[str]:
        """Names of the stored series."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT series FROM points").fetchall()
            names = {r[0] for r in rows} | {r[0] for r in self._pending}
        return sorted(names)

    def health(self) -> StoreHealth:
        """Say whether every accepted point is stored, and why not."""
        with self._lock:
            reasons = []
            if self._dropped:
                reasons.append(
                    f"{self._dropped} points dropped: the in-memory buffer was full while "
                    "writes failed; raise max_buffer or fix the database"
                )
            if self._pending and self._failing:
                reasons.append(
                    f"{len(self._pending)} points buffered after a failed write "
                    f"({self._last_error}); they are retried on the next flush"
                )
            for name, count in sorted(self._nonfinite.items()):
                reasons.append(f"{count} non-finite values in series {name!r} (flagged)")
            return StoreHealth(
                ok=not reasons,
                stored_rows=self._rows,
                pending=len(self._pending),
                dropped=self._dropped,
                write_failures=self._failures,
                nonfinite=dict(self._nonfinite),
                last_error=self._last_error,
                reasons=tuple(reasons),
            )

    def close(self) -> None:
        """Flush what can be written and close the database."""
        self.flush()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MetricStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
