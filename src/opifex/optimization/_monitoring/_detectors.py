"""Streaming anomaly detectors over one metric series: scores in [0, 1] and alerts with reasons.

Every detector is causal: the score of point ``t`` uses only points ``<= t``, so running it over
a prefix gives the same scores as running it live. Each returns a float64 array of scores in
[0, 1]; :func:`detect` turns scores into :class:`Alert` records that say why.

- :func:`robust_baseline_scores`: robust z-score of the value (or of its seasonal difference)
  against the median and MAD of the trailing ``window`` points (Hampel filter; Rousseeuw &
  Croux 1993), mapped to ``z / (z + scale)``.
- :func:`cusum_scores`: two-sided CUSUM (Page 1954) of robust z-scores, ``S+ = max(0, S+ + z - k)``,
  restarted after each alarm at ``h``; mapped to ``S / (S + h)``.
- :func:`contextual_novelty_scores`: the value is quantised into ``bins`` levels fitted on the
  first ``learn`` points; the score is the fraction of contexts ``(level_t, level_{t-j})``,
  ``j = 1..lags``, plus the pair ``(level_t, level_{t-1}, level_{t-2})`` never seen before ``t``
  (the idea of contextual anomaly detectors such as CAD OSE, Smirnov 2016; our own design).
- :func:`context_set_scores`: a CAD-OSE-like detector (Smirnov & Kozhevnikov, NAB 2016): levels
  over the running min/max; contexts are (set of distinct recent levels, current level); the
  score is the fraction of contexts never seen before, silenced for a rest period after an alert.
- :func:`ensemble_scores`: the weighted maximum of the three, then :func:`suppress_repeats`
  (a point is reported only when it beats every score of the previous ``period`` points, so a
  sustained anomaly raises one alert instead of a stream).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

MIN_POINTS = 8


class Alert(NamedTuple):
    """One alert: where, how strong, and why."""

    index: int  # position in the series
    score: float  # anomaly score in [0, 1]
    reason: str  # human-readable cause


class DetectionResult(NamedTuple):
    """Scores for every point and the alerts at or above the threshold."""

    scores: np.ndarray  # (n,) float64 in [0, 1]
    alerts: list[Alert]


def check_series(values: np.ndarray, *, min_points: int = MIN_POINTS, nan_policy: str = "raise"):
    """Validate a metric series; returns ``(float64 values, mask of non-finite points)``.

    Args:
        values: 1-D array of metric values.
        min_points: Shortest series accepted.
        nan_policy: ``"raise"`` rejects NaN/inf; ``"fill"`` carries the last finite value forward
            (the caller flags those points).

    Raises:
        ValueError: Not 1-D, too short, no finite value, non-finite values under ``"raise"``,
            or an unknown ``nan_policy``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be a 1-D series, got shape {x.shape}.")
    if x.shape[0] < min_points:
        raise ValueError(
            f"series too short: got {x.shape[0]} points, need at least {min_points}; "
            "collect more points or lower the window."
        )
    if nan_policy not in ("raise", "fill"):
        raise ValueError(f"nan_policy must be 'raise' or 'fill', got {nan_policy!r}.")
    bad = ~np.isfinite(x)
    if bad.any():
        if nan_policy == "raise":
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"values hold {int(bad.sum())} NaN/inf point(s), first at index {first}; "
                "drop or interpolate them, or pass nan_policy='fill'."
            )
        if bad.all():
            raise ValueError("values hold no finite point; nothing to detect.")
        last = np.maximum.accumulate(np.where(bad, 0, np.arange(x.shape[0])))
        x = x[last]
        x[: np.flatnonzero(~bad)[0]] = x[np.flatnonzero(~bad)[0]]
    return x, bad


def _trailing_median(x: np.ndarray, window: int) -> np.ndarray:
    """Median of the ``window`` points before each point (the first points reuse the first)."""
    centred = ndimage.median_filter(x, size=window, mode="nearest")
    lag = 1 + (window - 1) // 2
    out = np.empty_like(centred)
    out[lag:] = centred[:-lag]
    out[:lag] = centred[0]
    return out


def robust_z(values: np.ndarray, window: int = 32, seasonal_lag: int = 0) -> np.ndarray:
    """Signed robust z-score of each point against its trailing median/MAD."""
    x = np.asarray(values, dtype=np.float64)
    if seasonal_lag:
        x = x - np.concatenate([x[:seasonal_lag], x[:-seasonal_lag]])
    med = _trailing_median(x, window)
    mad = _trailing_median(np.abs(x - med), window)
    # a floor on the spread keeps flat stretches from turning rounding noise into alerts
    floor = 1e-3 * (np.abs(med) + np.std(x[:window])) + 1e-12
    return (x - med) / (1.4826 * mad + floor)


def robust_baseline_scores(
    values: np.ndarray, *, window: int = 32, seasonal_lag: int = 0, scale: float = 5.0
) -> np.ndarray:
    """Robust seasonal baseline detector: ``|z| / (|z| + scale)`` of :func:`robust_z`.

    Example:
        >>> import numpy as np
        >>> x = np.sin(np.arange(200) / 5.0)
        >>> x[150] += 5.0
        >>> s = robust_baseline_scores(x)
        >>> int(np.argmax(s))
        150
    """
    x, _ = check_series(values, min_points=max(MIN_POINTS, window + 1))
    z = np.abs(robust_z(x, window, seasonal_lag))
    # the first window + lag points have no full baseline yet
    z[: window + seasonal_lag] = 0.0
    return z / (z + scale)


def cusum_scores(
    values: np.ndarray, *, window: int = 64, drift: float = 1.0, alarm: float = 8.0
) -> np.ndarray:
    """Two-sided CUSUM change-point detector on robust z-scores of a reference window.

    The reference median/MAD is frozen ``window`` points back so that a shift does not absorb
    itself into the baseline before it is detected.

    Example:
        >>> import numpy as np
        >>> x = np.r_[np.zeros(300), np.ones(300)] + 0.1 * np.random.default_rng(0).normal(size=600)
        >>> s = cusum_scores(x)
        >>> bool(s[300:320].max() > 0.5), bool(s[100:290].max() < 0.5)
        (True, True)
    """
    x, _ = check_series(values, min_points=max(MIN_POINTS, 2 * window))
    med = _trailing_median(x, window)
    mad = _trailing_median(np.abs(x - med), window)
    ref_med = np.concatenate([np.full(window, med[window]), med[:-window]])
    ref_mad = np.concatenate([np.full(window, mad[window]), mad[:-window]])
    floor = 1e-3 * (np.abs(ref_med) + np.std(x[:window])) + 1e-12
    z = ((x - ref_med) / (1.4826 * ref_mad + floor)).tolist()
    out = np.zeros(len(z))
    hi = lo = 0.0
    for i, zi in enumerate(z):
        hi = max(0.0, hi + zi - drift)
        lo = max(0.0, lo - zi - drift)
        s = max(hi, lo)
        out[i] = s
        if s > alarm:
            hi = lo = 0.0
    out[: 2 * window] = 0.0
    return out / (out + alarm)


def _first_seen(codes: np.ndarray) -> np.ndarray:
    _, first = np.unique(codes, return_index=True)
    novel = np.zeros(codes.shape[0], dtype=bool)
    novel[first] = True
    return novel


def contextual_novelty_scores(
    values: np.ndarray, *, bins: int = 15, lags: int = 8, learn: int | None = None
) -> np.ndarray:
    """Contextual detector: fraction of never-seen (level, lagged level) contexts at each point.

    Args:
        values: The series.
        bins: Quantisation levels across the range of the first ``learn`` points; values outside
            that range fall into up to ``bins`` extra levels on either side.
        lags: Number of lagged pairs ``(level_t, level_{t-j})``.
        learn: Points that fix the range (default: NAB's probation, ``min(0.15 n, 750)``).

    Example:
        >>> import numpy as np
        >>> x = np.tile([0.0, 1.0, 2.0, 1.0], 100)
        >>> x[300] = 0.5
        >>> s = contextual_novelty_scores(x, learn=100)
        >>> int(np.argmax(s[100:])) + 100
        300
    """
    x, _ = check_series(values)
    n = x.shape[0]
    if bins < 2 or lags < 1:
        raise ValueError(f"bins must be >= 2 and lags >= 1, got bins={bins}, lags={lags}.")
    learn = int(min(np.floor(0.15 * n), 750)) if learn is None else int(learn)
    ref = x[: max(learn, 2)]
    lo, span = ref.min(), max(float(np.ptp(ref)), 1e-9 * max(1.0, abs(float(ref.max()))))
    level = np.clip(np.floor((x - lo) / span * bins), -bins, 2 * bins).astype(np.int64) + bins
    base = 3 * bins + 1
    novel = []
    for j in range(1, lags + 1):
        previous = np.concatenate([np.full(j, level[0]), level[:-j]])
        novel.append(_first_seen(level * base + previous))
    p1 = np.concatenate([level[:1], level[:-1]])
    p2 = np.concatenate([level[:2], level[:-2]])
    novel.append(_first_seen((level * base + p1) * base + p2))
    return np.mean(novel, axis=0)


def context_set_scores(
    values: np.ndarray,
    *,
    levels: int = 8,
    max_left: int = 7,
    rest_period: int | None = None,
    rest_threshold: float = 0.75,
    probation: int | None = None,
    margin: float = 0.1,
) -> np.ndarray:
    """Contextual anomaly detector with unordered context sets, after CAD OSE.

    Each value is quantised into ``levels`` bins of the running min/max of the points so far
    (causal: later extremes never re-quantise earlier points). For ``k = 1..max_left`` the
    context ``(L_k, q_t)`` pairs the SET ``L_k`` of distinct levels among the previous ``k``
    points (order forgotten, so a pattern that recurs with jitter in its timing is still
    familiar) with the current level ``q_t``. The raw score is the fraction of the ``max_left``
    contexts never seen before ``t``; as in CAD OSE, it is reported only when no raw score of
    the previous ``rest_period`` points reached ``rest_threshold`` (one alert per event).

    With ``probation`` set, the ``levels`` bins instead span the range of the first
    ``probation`` points widened by ``margin`` of that range on each side, plus one overflow
    level below and one above (so bins never move once the probation window has passed;
    scores inside the window use the whole window's range, which NAB never scores).

    Args:
        values: The series.
        levels: Quantisation levels, ``2..32``.
        max_left: Longest left context (number of previous points summarised as a set).
        rest_period: Points silenced after a raw score ``>= rest_threshold`` (default: CAD
            OSE's ``min(150, max(1, round(0.03 n)))``).
        rest_threshold: Raw score that starts a rest period.
        probation: Points whose range fixes the bins (``None``: the running min/max).
        margin: Fraction of the probation range added on each side before binning.

    Returns:
        float64 scores in [0, 1].

    Raises:
        ValueError: Bad series, ``levels`` outside ``2..32``, ``max_left < 1``,
            ``probation < 2`` or ``margin < 0``.

    References:
        Smirnov M., Kozhevnikov D., "Contextual Anomaly Detector, open-source edition",
        Numenta Anomaly Benchmark, 2016 (NAB detector ``contextOSE``).

    Example:
        >>> import numpy as np
        >>> x = np.tile([0.0, 1.0, 2.0, 3.0, 2.0, 1.0], 100)
        >>> x[400] = 0.0
        >>> s = context_set_scores(x, rest_period=10)
        >>> int(np.argmax(s[100:])) + 100
        400
    """
    x, _ = check_series(values)
    n = x.shape[0]
    if not 2 <= levels <= 32 or max_left < 1:
        raise ValueError(
            f"levels must be in 2..32 and max_left >= 1, got levels={levels}, "
            f"max_left={max_left}; each (level set, level) context is packed into one int64."
        )
    if (probation is not None and probation < 2) or margin < 0:
        raise ValueError(
            f"probation must be None or >= 2 and margin >= 0, got probation={probation}, "
            f"margin={margin}; pass the number of leading points that fix the bins."
        )
    rest = int(min(150, max(1, round(0.03 * n)))) if rest_period is None else int(rest_period)
    if probation is None:
        lo = np.minimum.accumulate(x)
        span = np.maximum.accumulate(x) - lo
        # a flat prefix has no range yet: every point sits on the bottom level
        unit = np.where(span > 0, span, 1.0) / levels
        q = np.clip(np.floor((x - lo) / unit), 0, levels - 1).astype(np.int64)
        codes = levels
    else:
        ref = x[:probation]
        width = max(float(np.ptp(ref)), 1e-9 * max(1.0, abs(float(ref.max()))))
        lo = ref.min() - margin * width
        unit = width * (1.0 + 2.0 * margin) / levels
        # level 0 and level levels + 1 collect everything below and above the widened range
        q = np.clip(np.floor((x - lo) / unit) + 1, 0, levels + 1).astype(np.int64)
        codes = levels + 2
    bit = np.left_shift(np.int64(1), q)
    left = np.zeros(n, dtype=np.int64)
    novel = np.zeros(n)
    for k in range(1, max_left + 1):
        left[k:] |= bit[:-k]
        new = _first_seen(left * codes + q)
        new[:k] = False  # the first k points have an incomplete left context
        novel += new
    raw = novel / max_left
    if rest < 1:
        return raw
    padded = np.concatenate([np.zeros(rest), raw])
    previous_max = sliding_window_view(padded[:-1], rest).max(axis=1)
    return np.where(previous_max < rest_threshold, raw, 0.0)


def suppress_repeats(scores: np.ndarray, period: int) -> np.ndarray:
    """Zero every score that does not beat all scores of the previous ``period`` points."""
    s = np.asarray(scores, dtype=np.float64)
    if period < 1:
        return s
    padded = np.concatenate([np.zeros(period), s])
    previous_max = sliding_window_view(padded[:-1], period).max(axis=1)
    return np.where(s > previous_max, s, 0.0)


def ensemble_scores(
    values: np.ndarray,
    *,
    weights: tuple[float, float, float] = (1.0, 0.0, 0.0),
    bins: int = 15,
    lags: int = 8,
    window: int = 32,
    suppress: int = 30,
) -> np.ndarray:
    """Weighted max of (contextual, robust baseline, CUSUM) scores, then :func:`suppress_repeats`.

    The default weights keep the contextual detector alone: on the NAB corpus the other two
    did not raise the score (see ``opifex bench monitoring``), so they are opt-in.

    Example:
        >>> import numpy as np
        >>> x = np.tile([0.0, 1.0, 2.0, 1.0], 100)
        >>> x[300] = 9.0
        >>> s = ensemble_scores(x, weights=(1.0, 1.0, 0.0))
        >>> int(np.argmax(s[100:])) + 100
        300
    """
    x, _ = check_series(values, min_points=max(MIN_POINTS, 2 * window))
    parts = []
    if weights[0]:
        parts.append(weights[0] * contextual_novelty_scores(x, bins=bins, lags=lags))
    if weights[1]:
        parts.append(weights[1] * robust_baseline_scores(x, window=window))
    if weights[2]:
        parts.append(weights[2] * cusum_scores(x, window=2 * window))
    if not parts:
        raise ValueError(f"weights must hold at least one non-zero entry, got {weights}.")
    return np.clip(suppress_repeats(np.max(parts, axis=0), suppress), 0.0, 1.0)


def detect(
    values: np.ndarray,
    *,
    threshold: float = 0.5,
    window: int = 32,
    nan_policy: str = "raise",
    **ensemble_kwargs,
) -> DetectionResult:
    """Score a series with :func:`ensemble_scores` and explain each alert.

    Non-finite points (under ``nan_policy="fill"``) get score 1 and a "non-finite value" alert.

    Example:
        >>> import numpy as np
        >>> x = np.tile([0.0, 1.0, 2.0, 1.0], 100)
        >>> x[300] = 9.0
        >>> result = detect(x, threshold=0.5, weights=(1.0, 1.0, 0.0))
        >>> [a.index for a in result.alerts if a.index >= 100]
        [300]
    """
    x, bad = check_series(values, min_points=max(MIN_POINTS, 2 * window), nan_policy=nan_policy)
    scores = ensemble_scores(x, window=window, **ensemble_kwargs)
    scores = np.where(bad, 1.0, scores)
    z = robust_z(x, window)
    alerts = []
    for i in np.flatnonzero(scores >= threshold):
        if bad[i]:
            reason = "non-finite value"
        else:
            side = "above" if z[i] > 0 else "below"
            reason = (
                f"value {x[i]:.6g} is {abs(z[i]):.1f} robust SDs {side} the trailing median; "
                "unseen context of recent levels"
            )
        alerts.append(Alert(int(i), float(scores[i]), reason))
    return DetectionResult(scores, alerts)
