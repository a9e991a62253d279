"""MetricStore: persistence across processes, retention, non-finite flags, locked/full DB."""

import json
import math
import sqlite3
import subprocess
import sys
import time

import pytest

from opifex.optimization._monitoring import _store
from opifex.optimization.performance_monitoring import MetricStore

# The writer loads the store module by path: it needs only the stdlib, and skipping the package
# import (which imports JAX) keeps the fresh process cheap.
_WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_store", sys.argv[2])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
store = mod.MetricStore(sys.argv[1], flush_size=100)
for i in range(1000):
    store.record("train_loss", 1.0 / (i + 1), {"loop": "train"}, timestamp=1000.0 + i)
store.record("eval_loss", 0.5, {"loop": "eval"}, timestamp=5000.0)
store.close()
"""


def test_points_survive_a_process_restart(tmp_path):
    path = str(tmp_path / "metrics.sqlite")
    subprocess.run([sys.executable, "-c", _WRITER, path, _store.__file__], check=True, timeout=120)
    with MetricStore(path) as store:
        points = store.query("train_loss", {"loop": "train"})
        assert [p.timestamp for p in points] == [1000.0 + i for i in range(1000)]
        assert [p.value for p in points] == [1.0 / (i + 1) for i in range(1000)]
        assert store.series() == ["eval_loss", "train_loss"]
        assert store.health().stored_rows == 1001
        store.record("eval_loss", 0.25, {"loop": "eval"}, timestamp=5001.0)
    with MetricStore(path) as store:
        assert [p.value for p in store.query("eval_loss")] == [0.5, 0.25]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_retention_by_row_count_keeps_the_newest(tmp_path):
    path = str(tmp_path / "m.sqlite")
    with MetricStore(path, max_rows=50, flush_size=7) as store:
        for i in range(120):
            store.record("x", float(i), timestamp=float(i))
    with MetricStore(path, max_rows=50) as store:
        assert [p.value for p in store.query("x")] == [float(i) for i in range(70, 120)]
        store.record("x", 120.0, timestamp=120.0)
        store.flush()
        assert store.query("x")[0].value == 71.0
        assert store.health().stored_rows == 50


def test_retention_by_age_uses_the_clock():
    now = [100.0]
    store = MetricStore(max_age_seconds=10.0, clock=lambda: now[0], flush_size=1)
    for i in range(30):
        now[0] = 100.0 + i
        store.record("x", float(i))
    # Last write at t=129 deletes everything older than t=119.
    assert [p.timestamp for p in store.query("x")] == [100.0 + i for i in range(19, 30)]
    store.close()


def test_nonfinite_values_are_counted_and_flagged_not_stored(tmp_path):
    path = str(tmp_path / "m.sqlite")
    store = MetricStore(path)
    for i, v in enumerate([1.0, math.nan, math.inf, -math.inf, 2.0]):
        store.record("loss", v, timestamp=float(i))
    assert [p.value for p in store.query("loss")] == [1.0, 2.0]
    flagged = [(p.value, p.flag) for p in store.query("loss", include_flagged=True)]
    assert flagged == [(1.0, None), (None, "nan"), (None, "+inf"), (None, "-inf"), (2.0, None)]
    health = store.health()
    assert health.nonfinite == {"loss": 3}
    assert not health.ok and "3 non-finite values in series 'loss'" in health.reasons[0]
    store.close()
    con = sqlite3.connect(path)
    rows = con.execute("SELECT value, flag FROM points ORDER BY ts").fetchall()
    con.close()
    assert rows == [(1.0, None), (None, "nan"), (None, "+inf"), (None, "-inf"), (2.0, None)]


def test_locked_database_buffers_without_blocking_then_flushes(tmp_path):
    path = str(tmp_path / "m.sqlite")
    store = MetricStore(path, flush_size=5)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    worst = 0.0
    for i in range(23):
        start = time.perf_counter()
        store.record("loss", float(i), {"loop": "train"}, timestamp=float(i))
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.1
    assert store.flush() is False
    health = store.health()
    assert health.pending == 23 and health.dropped == 0 and health.write_failures >= 1
    assert "locked" in health.last_error and "23 points buffered" in health.reasons[0]
    assert [p.value for p in store.query("loss")] == [float(i) for i in range(23)]
    other.execute("ROLLBACK")
    other.close()
    assert store.flush() is True
    health = store.health()
    assert health.ok and health.pending == 0 and health.stored_rows == 23
    store.close()
    with MetricStore(path) as again:
        assert [p.value for p in again.query("loss")] == [float(i) for i in range(23)]


def test_buffer_is_bounded_and_drops_are_counted(tmp_path):
    path = str(tmp_path / "m.sqlite")
    store = MetricStore(path, flush_size=2, max_buffer=5)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i in range(8):
        store.record("x", float(i), timestamp=float(i))
    health = store.health()
    assert (health.pending, health.dropped) == (5, 3)
    assert "3 points dropped" in health.reasons[0]
    other.execute("COMMIT")
    other.close()
    assert store.flush()
    assert [p.value for p in store.query("x")] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert store.health().dropped == 3
    store.close()


def test_full_database_buffers_and_recovers(tmp_path):
    store = MetricStore(str(tmp_path / "m.sqlite"), flush_size=10_000)
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")
    for i in range(2000):
        store.record("x", float(i), {"loop": "a_rather_long_label_value"}, timestamp=float(i))
    assert store.flush() is False
    health = store.health()
    assert "full" in health.last_error and health.pending == 2000
    store._conn.execute("PRAGMA max_page_count=1000000")
    assert store.flush() and store.health().stored_rows == 2000
    store.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rows": 0}, "max_rows must be > 0"),
        ({"max_age_seconds": -1.0}, "max_age_seconds must be > 0"),
        ({"flush_size": 0}, "flush_size must be an int >= 1"),
        ({"max_buffer": 2.5}, "max_buffer must be an int >= 1"),
    ],
)
def test_bad_store_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetricStore(**kwargs)


def test_bad_points_are_rejected_before_buffering():
    store = MetricStore()
    with pytest.raises(ValueError, match="data-model rule"):
        store.record("1loss", 1.0)
    with pytest.raises(ValueError, match="label-name rule"):
        store.record("loss", 1.0, {"__name": "x"})
    with pytest.raises(TypeError, match="real number"):
        store.record("loss", "high")
    assert store.health().pending == 0
    assert json.loads(json.dumps(store.health().nonfinite)) == {}
    store.close()
