"""Predictive autoscaling: Holt-Winters forecasts, a Kubernetes HPA peer and a replica simulator.

Time is counted in trace steps. A decision made at the end of step ``t`` (after the load of
step ``t`` is seen) is a requested replica count: new replicas serve from step
``t + provisioning_delay``; surplus replicas stop at once (booting ones first), so they no
longer serve or cost from step ``t + 1``. Step ``u`` is overloaded when
``load[u] > capacity_per_replica * ready[u]``; every requested replica, booting or ready, costs
``step_seconds / 3600`` replica-hours per step.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import numpy as np

from opifex.optimization._monitoring._holt_winters import (
    DEFAULT_GRID,
    _fail,
    _int_at_least,
    _positive,
    fit_holt_winters,
    holt_winters_forecast,
    rolling_holt_winters,
)

__all__ = [
    "DEFAULT_GRID",
    "HPAConfig",
    "KubernetesHPA",
    "PredictiveScaler",
    "PredictiveScalerConfig",
    "ScalingPlan",
    "ScalingSimulation",
    "fit_holt_winters",
    "holt_winters_forecast",
    "rolling_holt_winters",
    "simulate_scaling",
]


def _replica_bounds(min_replicas, max_replicas) -> None:
    _int_at_least("min_replicas", min_replicas, 1)
    if max_replicas is not None:
        _int_at_least("max_replicas", max_replicas, min_replicas)


@dataclass(frozen=True, kw_only=True)
class HPAConfig:
    """The Kubernetes Horizontal Pod Autoscaler (autoscaling/v2) with its default behaviour.

    Attributes:
        target_utilization: Target of the per-replica metric as a share of
            ``capacity_per_replica`` (the HPA's ``averageUtilization / 100``).
        capacity_per_replica: Load one replica serves before it is overloaded.
        tolerance: No scaling while ``|metric / target - 1| <= tolerance`` (default 0.1).
        scale_down_stabilization_s: Scale-down uses the largest recommendation of this many
            past seconds (default 300); scale-up has no stabilization (the default 0 s).
        sync_period_s: Controller period (default 15 s); also the period of the scale-up
            policies.
        step_seconds: Seconds one trace step stands for; the window holds
            ``ceil(scale_down_stabilization_s / step_seconds)`` recommendations (the current
            one included), and a step holds ``max(1, step_seconds // sync_period_s)`` syncs
            for the scale-up rate limit.
        scale_up_percent: Default scale-up policy: add up to this percent per sync (100).
        scale_up_pods: Default scale-up policy: or add up to this many pods (4); the larger
            of the two limits applies (``selectPolicy: Max``).
        min_replicas: Lower bound (the HPA's ``minReplicas``, default 1).
        max_replicas: Upper bound, ``None`` for none.
    """

    target_utilization: float
    capacity_per_replica: float
    tolerance: float = 0.1
    scale_down_stabilization_s: float = 300.0
    sync_period_s: float = 15.0
    step_seconds: float = 15.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        _positive("target_utilization", self.target_utilization)
        _positive("capacity_per_replica", self.capacity_per_replica)
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            _fail("tolerance", self.tolerance, "a float in [0, 1)")
        if not (
            isinstance(self.scale_down_stabilization_s, (int, float))
            and self.scale_down_stabilization_s >= 0
        ):
            _fail("scale_down_stabilization_s", self.scale_down_stabilization_s, "a float >= 0")
        _positive("sync_period_s", self.sync_period_s)
        _positive("step_seconds", self.step_seconds)
        _positive("scale_up_percent", self.scale_up_percent)
        _int_at_least("scale_up_pods", self.scale_up_pods, 1)
        _replica_bounds(self.min_replicas, self.max_replicas)

    @property
    def window_steps(self) -> int:
        """Recommendations in the scale-down stabilization window, the current one included."""
        return max(1, math.ceil(self.scale_down_stabilization_s / self.step_seconds))

    def replace(self, **changes) -> HPAConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


class KubernetesHPA:
    """The HPA's replica rule, reimplemented from the Kubernetes documentation.

    With ``ratio = metric / target`` over ready replicas: no change while
    ``|ratio - 1| <= tolerance``; else ``desired = ceil(ratio * ready)``. When scaling up with
    replicas still booting, those count with a zero metric and the ratio is recomputed over
    all requested replicas; if that ratio is within tolerance or reverses the direction, the
    count stays. Scale-up is limited per sync to ``max(current * (1 + percent/100), current
    + pods)``; scale-down takes the largest recommendation of the stabilization window.
    The metric is demand per ready replica (a request-rate metric, not saturated CPU).

    Args:
        config: An :class:`HPAConfig`.

    Example:
        >>> hpa = KubernetesHPA(HPAConfig(target_utilization=0.5, capacity_per_replica=10.0))
        >>> hpa.decide(30.0, ready=2, requested=2)  # ratio 3: ceil(3 * 2) = 6
        6

    References:
        Kubernetes documentation, "Horizontal Pod Autoscaling", algorithm details and
        configurable scaling behavior (autoscaling/v2 defaults).
    """

    def __init__(self, config: HPAConfig) -> None:
        if not isinstance(config, HPAConfig):
            raise TypeError(f"config must be an HPAConfig, got {type(config).__name__}.")
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget past recommendations."""
        self._recommendations: deque[int] = deque(maxlen=self.config.window_steps)

    def _raw(self, load: float, ready: int, requested: int) -> int:
        c = self.config
        ready = max(ready, 1)
        ratio = load / (c.capacity_per_replica * ready) / c.target_utilization
        if requested > ready and ratio > 1.0:
            new_ratio = load / (c.capacity_per_replica * requested) / c.target_utilization
            if abs(1.0 - new_ratio) <= c.tolerance or new_ratio < 1.0:
                return requested
            return max(requested, math.ceil(new_ratio * requested))
        if abs(1.0 - ratio) <= c.tolerance:
            return requested
        return math.ceil(ratio * ready)

    def decide(self, load: float, ready: int, requested: int) -> int:
        """The replica count to request after a step with ``load`` on ``ready`` replicas."""
        c = self.config
        desired = self._raw(float(load), int(ready), int(requested))
        desired = max(desired, c.min_replicas)
        if c.max_replicas is not None:
            desired = min(desired, c.max_replicas)
        self._recommendations.append(desired)
        if desired < requested:
            return min(requested, max(self._recommendations))
        limit = requested
        for _ in range(max(1, int(c.step_seconds // c.sync_period_s))):
            if limit >= desired:
                break
            limit = max(math.ceil(limit * (1 + c.scale_up_percent / 100)), limit + c.scale_up_pods)
        return min(desired, limit)


class ScalingSimulation(NamedTuple):
    """What :func:`simulate_scaling` measured over the scored steps."""

    overloaded_steps: int  # steps with load > capacity * ready replicas
    replica_hours: float  # requested replicas (booting or ready) x step hours
    ready: np.ndarray  # (T,) int: replicas serving each step
    requested: np.ndarray  # (T,) int: replicas paid for each step
    overloaded: np.ndarray  # (T,) bool


def simulate_scaling(
    load,
    policy: Callable[[int, float, int, int], int] | np.ndarray,
    *,
    capacity_per_replica: float,
    provisioning_delay: int,
    initial_replicas: int = 1,
    step_seconds: float = 3600.0,
    score_from: int = 0,
) -> ScalingSimulation:
    """Replay ``load`` under a scaling policy (rules in the module docstring).

    Args:
        load: ``(T,)`` demand per step.
        policy: ``(T,)`` requested counts decided at the end of each step, or a callable
            ``policy(t, load_t, ready, requested) -> int`` for feedback rules such as the HPA.
        capacity_per_replica: Load one replica serves.
        provisioning_delay: Steps (>= 1) from a scale-up decision to the replica serving.
        initial_replicas: Replicas ready at step 0.
        step_seconds: Seconds per step, for replica-hours.
        score_from: Steps before this one are warm-up: simulated, not counted.

    Returns:
        A :class:`ScalingSimulation`.

    Raises:
        ValueError: If the load is not a finite 1-D series or an argument is out of range.

    Example:
        >>> sim = simulate_scaling([1, 3, 3, 3, 1], np.array([3, 3, 3, 1, 1]),
        ...     capacity_per_replica=1.0, provisioning_delay=2, step_seconds=3600)
        >>> sim.overloaded_steps, sim.replica_hours
        (1, 11.0)
    """
    y = np.asarray(load, dtype=float)
    if y.ndim != 1 or y.size == 0 or not np.all(np.isfinite(y)):
        raise ValueError(f"load must be a non-empty finite 1-D series, got shape {y.shape}.")
    _positive("capacity_per_replica", capacity_per_replica)
    _int_at_least("provisioning_delay", provisioning_delay, 1)
    _int_at_least("initial_replicas", initial_replicas, 0)
    _positive("step_seconds", step_seconds)
    _int_at_least("score_from", score_from, 0)
    decisions = None
    if not callable(policy):
        decisions = np.asarray(policy)
        if decisions.shape != y.shape:
            raise ValueError(
                f"policy array must have the load's shape {y.shape}, got {decisions.shape}."
            )
    n = y.size
    ready_log = np.zeros(n, dtype=np.int64)
    requested_log = np.zeros(n, dtype=np.int64)
    ready = initial_replicas
    pending: deque[list[int]] = deque()  # [ready_step, count], oldest first
    for t in range(n):
        while pending and pending[0][0] <= t:
            ready += pending.popleft()[1]
        booting = sum(p[1] for p in pending)
        ready_log[t], requested_log[t] = ready, ready + booting
        want = (
            int(decisions[t])
            if decisions is not None
            else int(policy(t, y[t], ready, ready + booting))
        )
        surplus = ready + booting - want
        if surplus < 0:
            pending.append([t + provisioning_delay, -surplus])
        while surplus > 0 and pending:
            cut = min(surplus, pending[-1][1])
            pending[-1][1] -= cut
            surplus -= cut
            if pending[-1][1] == 0:
                pending.pop()
        ready -= max(surplus, 0)
    overloaded = y > capacity_per_replica * ready_log
    scored = slice(score_from, None)
    return ScalingSimulation(
        overloaded_steps=int(overloaded[scored].sum()),
        replica_hours=float(requested_log[scored].sum() * step_seconds / 3600.0),
        ready=ready_log,
        requested=requested_log,
        overloaded=overloaded,
    )


@dataclass(frozen=True, kw_only=True)
class PredictiveScalerConfig:
    """Settings of :class:`PredictiveScaler`; every field changes its decisions.

    Attributes:
        capacity_per_replica: Load one replica serves before it is overloaded.
        season_length: Steps per season of the Holt-Winters forecaster (1: none).
        provisioning_delay: Steps (>= 1) from a decision to new replicas serving; the
            forecast covers steps ``t + 1 .. t + provisioning_delay``.
        stabilization_steps: Scale-in uses the largest recommendation of this many steps,
            the current one included (1: no stabilization).
        headroom_quantile: Quantile in ``[0, 1]`` of past relative forecast errors added on
            top of the forecast (higher: fewer overloads, more replicas).
        error_window: Past errors per horizon that the quantile is taken over.
        phase_window: If set, the quantile only takes the errors (of the last
            ``error_window``) whose target step is within this many steps of the forecast
            target's seasonal phase (circularly), so headroom follows the time of day
            (``None``: all errors).
        fit_window: Steps each smoothing fit sees (``>= 2 * season_length + 1``).
        refit_every: Steps between smoothing refits.
        floor_utilization: Reactive floor: never recommend fewer than
            ``ceil(load_t / (capacity_per_replica * floor_utilization))`` replicas, what the
            load just seen needs at this utilisation (``None``: no floor). It guards against
            forecasts that lag a level shift.
        min_replicas: Lower bound on the recommendation.
        max_replicas: Upper bound, ``None`` for none.
    """

    capacity_per_replica: float
    season_length: int
    provisioning_delay: int = 1
    stabilization_steps: int = 1
    headroom_quantile: float = 0.9
    error_window: int = 200
    phase_window: int | None = None
    fit_window: int = 200
    refit_every: int = 100
    floor_utilization: float | None = None
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        _positive("capacity_per_replica", self.capacity_per_replica)
        _int_at_least("season_length", self.season_length, 1)
        if self.floor_utilization is not None:
            _positive("floor_utilization", self.floor_utilization)
        _int_at_least("provisioning_delay", self.provisioning_delay, 1)
        _int_at_least("stabilization_steps", self.stabilization_steps, 1)
        q = self.headroom_quantile
        if not (isinstance(q, (int, float)) and not isinstance(q, bool) and 0 <= q <= 1):
            _fail("headroom_quantile", q, "a float in [0, 1]")
        _int_at_least("error_window", self.error_window, 1)
        if self.phase_window is not None:
            _int_at_least("phase_window", self.phase_window, 0)
        _int_at_least("fit_window", self.fit_window, 2 * self.season_length + 1)
        _int_at_least("refit_every", self.refit_every, 1)
        _replica_bounds(self.min_replicas, self.max_replicas)

    def replace(self, **changes) -> PredictiveScalerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


class ScalingPlan(NamedTuple):
    """Decisions of :meth:`PredictiveScaler.plan`, one row per step."""

    replicas: np.ndarray  # (T,) int: requested after step t, stabilization applied
    recommended: np.ndarray  # (T,) int: before stabilization
    forecasts: np.ndarray  # (T, H) float: yhat_{t+h|t}, NaN where none yet
    upper: np.ndarray  # (T, H) float: forecast plus error-quantile headroom


class PredictiveScaler:
    """Replica counts from load forecasts, ahead of the provisioning delay.

    After step ``t``: forecast ``yhat_{t+h|t}`` for ``h = 1 .. d`` (``d`` the provisioning
    delay) with :func:`rolling_holt_winters`; bound each by the ``q``-quantile of the last
    ``error_window`` relative errors of that horizon already observed at ``t``,
    ``u_h = yhat_{t+h|t} (1 + Q_q[(y_{s+h} - yhat_{s+h|s}) / max(yhat_{s+h|s}, c)])`` with
    ``s + h <= t`` and ``c`` the capacity per replica (so near-zero forecasts do not blow the
    ratio up; with ``phase_window`` only ``s`` with ``s + h`` near ``t + h`` in the season,
    as the errors of a daily load are larger at some hours than others); recommend
    ``r_t = ceil(max(max_h u_h, y_t / f) / c)`` within the replica bounds (``f`` the floor
    utilisation; no ``y_t`` term without a floor), and request
    the largest ``r`` of the last ``stabilization_steps`` steps, so it never scales in while a
    higher recommendation is inside the window. Before forecasts exist it follows the load.

    Args:
        config: A :class:`PredictiveScalerConfig`.

    Example:
        >>> cfg = PredictiveScalerConfig(capacity_per_replica=2.0, season_length=4,
        ...                              fit_window=12, refit_every=8, error_window=8)
        >>> y = np.tile([2.0, 6.0, 10.0, 6.0], 10)
        >>> plan = PredictiveScaler(cfg).plan(y)
        >>> [int(r) for r in plan.replicas[-4:]]  # ahead of loads 2, 6, 10, 6
        [3, 5, 3, 1]
    """

    def __init__(self, config: PredictiveScalerConfig) -> None:
        if not isinstance(config, PredictiveScalerConfig):
            raise TypeError(
                f"config must be a PredictiveScalerConfig, got {type(config).__name__}."
            )
        self.config = config

    def _series(self, load) -> np.ndarray:
        m = self.config.season_length
        y = np.asarray(load, dtype=float)
        if y.ndim != 1 or not np.all(np.isfinite(y)) or y.size < 2 * m:
            raise ValueError(
                f"load must be a finite 1-D series of length >= {2 * m}, got shape {y.shape}."
            )
        return y

    def forecast(self, load: jax.typing.ArrayLike) -> np.ndarray:
        """``(T, provisioning_delay)`` rolling forecasts (:func:`rolling_holt_winters`)."""
        c = self.config
        fc, _ = rolling_holt_winters(
            self._series(load),
            season_length=c.season_length,
            horizon=c.provisioning_delay,
            fit_window=c.fit_window,
            refit_every=c.refit_every,
        )
        return np.asarray(fc, dtype=float)

    def plan(self, load: jax.typing.ArrayLike, forecasts=None) -> ScalingPlan:
        """Decisions after every step of ``load``, each from the steps up to it only.

        ``forecasts`` may pass :meth:`forecast`'s output for this load, to reuse it across
        configs that differ only in headroom, stabilization or replica bounds.
        """
        c = self.config
        y = self._series(load)
        n, horizon = y.size, c.provisioning_delay
        fc = self.forecast(y) if forecasts is None else forecasts
        if fc.shape != (n, horizon):
            raise ValueError(f"forecasts must have shape {(n, horizon)}, got {fc.shape}.")
        upper = np.full_like(fc, np.nan)
        for h in range(1, horizon + 1):
            past = fc[: n - h, h - 1]
            rel = (y[h:] - past) / np.maximum(past, c.capacity_per_replica)
            known = np.full(n + c.error_window - 1, np.nan)
            known[c.error_window - 1 + h :] = rel  # the error of s is known at t = s + h
            windows = np.lib.stride_tricks.sliding_window_view(known, c.error_window)
            if c.phase_window is not None:
                # Column j of row t holds the error of target u = t - W + 1 + j; its phase
                # offset from the target t + h is the same for every row.
                d = (np.arange(c.error_window) - c.error_window + 1 - h) % c.season_length
                near = np.minimum(d, c.season_length - d) <= c.phase_window
                windows = np.where(near, windows, np.nan)
            counts = np.sum(np.isfinite(windows), axis=1)
            filled = np.where(np.isfinite(windows), windows, -np.inf)
            ordered = np.sort(filled, axis=1)
            ordered = np.where(np.isfinite(ordered), ordered, 0.0)
            # nanquantile with linear interpolation, done by hand to vectorise the ragged
            # start where fewer than error_window errors exist.
            pos = c.headroom_quantile * np.maximum(counts - 1, 0)
            lo = np.floor(pos).astype(int)
            hi = np.minimum(lo + 1, np.maximum(counts - 1, 0))
            skip = c.error_window - counts
            rows = np.arange(n)
            last = c.error_window - 1
            q_lo = ordered[rows, np.minimum(skip + lo, last)]
            q_hi = ordered[rows, np.minimum(skip + hi, last)]
            quant = np.where(counts > 0, q_lo + (pos - lo) * (q_hi - q_lo), 0.0)
            upper[:, h - 1] = fc[:, h - 1] * (1.0 + quant)
        need = np.where(np.isfinite(upper).all(axis=1), np.max(upper, axis=1), y)
        if c.floor_utilization is not None:
            need = np.maximum(need, y / c.floor_utilization)
        # Rounding noise in an exact forecast must not cost a replica.
        raw = np.ceil(np.maximum(need, 0.0) / c.capacity_per_replica - 1e-9).astype(np.int64)
        raw = np.clip(raw, c.min_replicas, c.max_replicas)
        padded = np.concatenate([np.full(c.stabilization_steps - 1, c.min_replicas), raw])
        window = np.lib.stride_tricks.sliding_window_view(padded, c.stabilization_steps)
        return ScalingPlan(window.max(axis=1), raw, fc, upper)

    def recommend(self, history: jax.typing.ArrayLike) -> int:
        """The replica count to request now, after the last step of ``history``."""
        return int(self.plan(history).replicas[-1])
