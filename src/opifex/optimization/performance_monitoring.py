"""Performance monitoring: measured metrics, their history and their Prometheus exposition.

:class:`PerformanceMonitor` collects step time, throughput, loss, gradient norm, solver results,
served-call latency, JAX compile events and memory from the running program (host side, between
jitted calls), keeps them in an embedded SQLite :class:`MetricStore` (buffered, bounded
retention, never blocking the loop) and exposes them through ``prometheus_client``
(:class:`PrometheusExporter`, optional loopback ``/metrics`` endpoint).

Over the stored series: streaming anomaly detectors (:func:`detect` and the ``*_scores``
functions), the Numenta Anomaly Benchmark scorer (:func:`score_file`, :func:`load_profiles`,
...) and :class:`PredictiveScaler`, with the Kubernetes HPA rule (:class:`KubernetesHPA`) as its
peer.

Example:
    >>> from opifex.optimization.performance_monitoring import PerformanceMonitor
    >>> with PerformanceMonitor(compile_events=False) as monitor:
    ...     monitor.start("train")
    ...     record = monitor.step("train", loss=0.5, grad_norm=2.0, items=32)
    ...     print(record.step, record.loss, "opifex_loss" in monitor.exposition())
    1 0.5 True
"""

from opifex.optimization._monitoring._detectors import (
    Alert,
    DetectionResult,
    context_set_scores,
    contextual_novelty_scores,
    cusum_scores,
    detect,
    ensemble_scores,
    robust_baseline_scores,
)
from opifex.optimization._monitoring._monitor import PerformanceMonitor, StepRecord
from opifex.optimization._monitoring._nab import (
    NABFileScore,
    NABProfile,
    load_profiles,
    load_windows,
    normalized_score,
    null_and_perfect,
    prepare_file,
    score_file,
)
from opifex.optimization._monitoring._prometheus import (
    MetricsServer,
    PrometheusExporter,
    check_metric_name,
)
from opifex.optimization._monitoring._scaling import (
    HPAConfig,
    KubernetesHPA,
    PredictiveScaler,
    PredictiveScalerConfig,
    ScalingPlan,
    ScalingSimulation,
    fit_holt_winters,
    holt_winters_forecast,
    simulate_scaling,
)
from opifex.optimization._monitoring._store import MetricStore, Point, StoreHealth

__all__ = [
    "Alert",
    "DetectionResult",
    "HPAConfig",
    "KubernetesHPA",
    "MetricStore",
    "MetricsServer",
    "NABFileScore",
    "NABProfile",
    "PerformanceMonitor",
    "Point",
    "PredictiveScaler",
    "PredictiveScalerConfig",
    "PrometheusExporter",
    "ScalingPlan",
    "ScalingSimulation",
    "StepRecord",
    "StoreHealth",
    "check_metric_name",
    "context_set_scores",
    "contextual_novelty_scores",
    "cusum_scores",
    "detect",
    "ensemble_scores",
    "fit_holt_winters",
    "holt_winters_forecast",
    "load_profiles",
    "load_windows",
    "normalized_score",
    "null_and_perfect",
    "prepare_file",
    "robust_baseline_scores",
    "score_file",
    "simulate_scaling",
]
