"""Numenta Anomaly Benchmark (NAB) scorer: windows, scaled sigmoid, profiles, normalisation.

Rules (Lavin & Ahmad 2015, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta
Anomaly Benchmark", and NAB's scorer): each labelled anomaly window is worth ``+tp`` when it
holds a detection and ``-fn`` when it holds none; only the earliest detection inside a window
counts, weighted by ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` of its relative position
``y = -(right - i + 1) / width`` (``y = -1`` at the left edge, divided by ``sigma(-1)`` so the
earliest possible detection earns exactly ``tp``). Every detection outside a window costs
``fp * sigma(d / (width - 1))`` where ``d`` is its distance past the right edge of the closest
preceding window (``-fp`` when no window precedes it or when ``d / (width - 1) > 3``). The first
``min(floor(0.15 n), 750)`` points of each file are a probationary period and are not scored.
A point is a detection when its anomaly score is ``>= threshold``. A corpus score is the sum of
the file scores, normalised as ``100 (raw - null) / (perfect - null)`` with ``perfect = tp *
#windows`` and ``null`` the score of a detector that never fires (``-fn * #windows``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from opifex._data import data_path

PROBATION_PERCENT = 0.15


@dataclass(frozen=True, kw_only=True)
class NABProfile:
    """Weights of one NAB application profile (``config/profiles.json``)."""

    tp_weight: float = 1.0
    fp_weight: float = 0.11
    fn_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tp_weight", "fp_weight", "fn_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


NAB_PROFILES: dict[str, NABProfile] = {
    "standard": NABProfile(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": NABProfile(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": NABProfile(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def load_profiles(path: str | Path | None = None) -> dict[str, NABProfile]:
    """Read NAB's ``config/profiles.json`` (default: the shared data copy)."""
    path = Path(path) if path is not None else data_path("nab", "config", "profiles.json")
    raw = json.loads(Path(path).read_text())
    return {
        name: NABProfile(
            tp_weight=float(p["CostMatrix"]["tpWeight"]),
            fp_weight=float(p["CostMatrix"]["fpWeight"]),
            fn_weight=float(p["CostMatrix"]["fnWeight"]),
        )
        for name, p in raw.items()
    }


def load_windows(path: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """Read NAB's ``labels/combined_windows.json``: file -> list of (start, end) timestamps."""
    path = Path(path) if path is not None else data_path("nab", "labels", "combined_windows.json")
    raw = json.loads(Path(path).read_text())
    return {name: [(str(a), str(b)) for a, b in wins] for name, wins in raw.items()}


def read_series(
    relative_path: str, root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one NAB data file (``timestamp,value``) as ``(datetime64[s] array, float64 array)``."""
    path = (
        Path(root) / relative_path if root is not None else data_path("nab", "data", relative_path)
    )
    stamps, values = [], []
    with open(path) as f:
        header = f.readline().strip().split(",")
        if header[:2] != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected a 'timestamp,value' header, got {header}.")
        for line in f:
            t, v = line.strip().split(",")[:2]
            stamps.append(t)
            values.append(float(v))
    return np.array(stamps, dtype="datetime64[s]"), np.asarray(values, dtype=np.float64)


def probation_length(n: int, percent: float = PROBATION_PERCENT) -> int:
    """NAB's unscored start of a file: ``min(floor(percent * n), percent * 5000)`` points."""
    return int(min(math.floor(percent * n), percent * 5000))


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """``2 / (1 + exp(5 y)) - 1``, and ``-1`` beyond ``y > 3`` (far past a window)."""
    y = np.asarray(position, dtype=np.float64)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0)


_MAX_TP = float(scaled_sigmoid(-1.0))


class NABFile(NamedTuple):
    """Profile-independent scoring layout of one file (see :func:`prepare_file`)."""

    n: int  # number of points
    probation: int  # unscored leading points
    window_id: np.ndarray  # (n,) int64: index of the window holding each point, -1 outside
    window_start: np.ndarray  # (k,) int64: first index of each window
    tp_value: np.ndarray  # (n,) float64: sigma(y) / sigma(-1) inside windows, 0 outside
    fp_value: np.ndarray  # (n,) float64: unweighted sigma of the distance past a window, 0 inside


def prepare_file(
    timestamps: np.ndarray,
    windows: list[tuple[str, str]],
    probation_percent: float = PROBATION_PERCENT,
) -> NABFile:
    """Locate each window in ``timestamps`` and precompute every point's TP and FP weight.

    Raises:
        ValueError: If a window edge is not one of the timestamps, or windows overlap.
    """
    stamps = np.asarray(timestamps).astype("datetime64[s]")
    n = stamps.shape[0]
    window_id = np.full(n, -1, dtype=np.int64)
    tp_value = np.zeros(n)
    fp_value = np.full(n, -1.0)
    starts = []
    previous_right = -1
    for k, (t1, t2) in enumerate(sorted(windows)):
        edges = np.array([t1.replace(" ", "T"), t2.replace(" ", "T")], dtype="datetime64[s]")
        lo, hi = np.searchsorted(stamps, edges)
        if lo >= n or hi >= n or stamps[lo] != edges[0] or stamps[hi] != edges[1]:
            raise ValueError(f"window {t1} .. {t2} edges are not timestamps of the series.")
        if lo <= previous_right:
            raise ValueError(f"window {t1} .. {t2} overlaps the previous one; merge them.")
        width = hi - lo + 1
        idx = np.arange(lo, hi + 1)
        window_id[idx] = k
        tp_value[idx] = scaled_sigmoid(-(hi - idx + 1) / width) / _MAX_TP
        fp_value[idx] = 0.0
        end = n
        # points after this window, up to the next one, are scored against this window
        following = [w for w in sorted(windows)[k + 1 :]]
        if following:
            nxt = np.datetime64(following[0][0].replace(" ", "T"), "s")
            end = int(np.searchsorted(stamps, nxt))
        after = np.arange(hi + 1, end)
        fp_value[after] = scaled_sigmoid(np.abs(after - hi) / max(width - 1, 1))
        starts.append(lo)
        previous_right = hi
    probation = probation_length(n, probation_percent)
    return NABFile(n, probation, window_id, np.asarray(starts, dtype=np.int64), tp_value, fp_value)


class NABFileScore(NamedTuple):
    """Score of one file at one threshold, with NAB's point counts."""

    score: float  # raw (unnormalised) NAB score
    tp: int  # detected points inside windows
    tn: int  # quiet points outside windows
    fp: int  # detected points outside windows
    fn: int  # quiet points inside windows
    total: int  # all points, probation included
    contributions: np.ndarray  # (n,) each window's TP/FN value at its start, each FP at its point


def score_file(
    layout: NABFile, anomaly_scores: np.ndarray, threshold: float, profile: NABProfile
) -> NABFileScore:
    """Score one file's anomaly scores at ``threshold`` under ``profile``."""
    a = _check_scores(anomaly_scores, layout.n)
    scored = np.arange(layout.n) >= layout.probation
    detected = (a >= threshold) & scored
    inside = layout.window_id >= 0
    contributions = np.zeros(layout.n)
    fp_points = detected & ~inside
    contributions[fp_points] = profile.fp_weight * layout.fp_value[fp_points]
    for k, start in enumerate(layout.window_start):
        members = (layout.window_id == k) & scored
        if not members.any():
            continue
        hits = np.flatnonzero(members & detected)
        first = max(int(start), layout.probation)
        if hits.size:
            contributions[first] = profile.tp_weight * layout.tp_value[hits[0]]
        else:
            contributions[first] = -profile.fn_weight
    return NABFileScore(
        score=float(contributions.sum()),
        tp=int((detected & inside).sum()),
        tn=int((scored & ~inside & ~detected).sum()),
        fp=int(fp_points.sum()),
        fn=int((scored & inside & ~detected).sum()),
        total=layout.n,
        contributions=contributions,
    )


def score_curve(
    layout: NABFile, anomaly_scores: np.ndarray, thresholds: np.ndarray, profile: NABProfile
) -> np.ndarray:
    """Raw NAB score of one file at every threshold in ``thresholds`` (the sweep), vectorised.

    Equals ``[score_file(layout, s, t, profile).score for t in thresholds]``.
    """
    a = _check_scores(anomaly_scores, layout.n)
    t = np.asarray(thresholds, dtype=np.float64)
    scored = np.arange(layout.n) >= layout.probation
    out = np.zeros(t.shape)
    outside = scored & (layout.window_id < 0)
    a_out = a[outside]
    order = np.argsort(-a_out, kind="stable")
    cum_fp = np.concatenate([[0.0], np.cumsum(layout.fp_value[outside][order])])
    count = np.searchsorted(-a_out[order], -t, side="right")
    out += profile.fp_weight * cum_fp[count]
    for k in range(layout.window_start.shape[0]):
        members = scored & (layout.window_id == k)
        if not members.any():
            continue
        a_in = a[members]
        order = np.argsort(-a_in, kind="stable")
        best = np.maximum.accumulate(layout.tp_value[members][order])
        count = np.searchsorted(-a_in[order], -t, side="right")
        value = np.where(count > 0, profile.tp_weight * best[np.maximum(count - 1, 0)], 0.0)
        out += np.where(count > 0, value, -profile.fn_weight)
    return out


def normalized_score(raw: float, null: float, perfect: float) -> float:
    """NAB's final score ``100 (raw - null) / (perfect - null)``."""
    if perfect == null:
        raise ValueError(f"perfect and null scores are equal ({perfect}); no windows to score.")
    return 100.0 * (raw - null) / (perfect - null)


def null_and_perfect(layouts: list[NABFile], profile: NABProfile) -> tuple[float, float]:
    """Raw score of the never-firing detector and of a perfect one over ``layouts``."""
    windows = 0
    for layout in layouts:
        scored = np.arange(layout.n) >= layout.probation
        ids = np.unique(layout.window_id[scored & (layout.window_id >= 0)])
        windows += ids.size
    return -profile.fn_weight * windows, profile.tp_weight * windows


def _check_scores(anomaly_scores: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(anomaly_scores, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"anomaly_scores must have shape ({n},), got {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError("anomaly_scores contain NaN or inf; replace them (e.g. by 0) first.")
    return a
