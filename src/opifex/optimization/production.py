"""Production performance platform: adaptive JIT with measured metrics, and memory management.

:class:`HybridPerformancePlatform` turns a JAX function, a training step or an NNX model into
an :class:`OptimizedModel`: a callable that buckets dynamic batch sizes, compiles only when the
measured saving pays for the compilation (the rule is stated in
:mod:`opifex.optimization._production._adaptive_jit`), and reports :class:`PerformanceMetrics`
measured from the running program: timings by its clock, compilations and persistent-cache hits
from ``jax.monitoring`` events, memory from XLA's ``memory_analysis()``.
:class:`IntelligentGPUMemoryManager` chooses rematerialization, micro-batching and donation for
a training step from XLA's analyses.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from opifex.optimization._production._adaptive_jit import AdaptiveJit, bucket_sizes, decide
from opifex.optimization._production._compile_events import CompileStats, compile_events
from opifex.optimization._production._memory import IntelligentGPUMemoryManager

__all__ = [
    "AdaptiveJit",
    "CompileStats",
    "HybridPerformancePlatform",
    "IntelligentGPUMemoryManager",
    "OptimizedModel",
    "PerformanceMetrics",
    "bucket_sizes",
    "compile_events",
    "decide",
    "enable_persistent_cache",
]


def enable_persistent_cache(
    path: str, *, min_compile_time_s: float = 0.0, min_entry_size_bytes: int = 0
) -> None:
    """Turn on JAX's persistent compilation cache for this process.

    JAX reads the setting once, at the process's first compilation, so call this before
    compiling anything. Entries are written for programs whose compilation took at least
    ``min_compile_time_s`` and whose executable is at least ``min_entry_size_bytes``.

    Args:
        path: the cache directory (created by JAX when absent).
        min_compile_time_s: JAX's ``jax_persistent_cache_min_compile_time_secs``.
        min_entry_size_bytes: JAX's ``jax_persistent_cache_min_entry_size_bytes``.

    Raises:
        ValueError: for an empty path or a negative threshold.
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a non-empty directory name, got {path!r}.")
    if min_compile_time_s < 0:
        raise ValueError(f"min_compile_time_s must be >= 0, got {min_compile_time_s!r}.")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))


@dataclass(frozen=True)
class PerformanceMetrics:
    """Figures measured from an :class:`OptimizedModel`'s calls (``None``: not measured).

    Attributes:
        calls: calls served.
        eager_calls: calls run without compiling.
        compiled_calls: calls run by a compiled program.
        compilations: programs XLA compiled during the calls (``jax.monitoring`` events).
        persistent_cache_hits: compilations served by the persistent cache.
        traces: Python traces to a jaxpr during the calls.
        programs: compiled programs held (one per bucket and argument signature).
        compile_time_s: total ahead-of-time compilation time of those programs.
        eager_run_s: median eager call time of the probe calls.
        compiled_run_s: median compiled call time of the probe calls.
        break_even_calls: calls for the compilation to pay for itself.
        decision: ``"jit"``, ``"eager"`` or ``"undecided"``.
        reason: why.
        temp_bytes: XLA's temporary memory of the largest compiled program.
        argument_bytes: its argument memory.
        output_bytes: its output memory.
        code_bytes: its generated code size.
        compiled_buckets: the padded batch sizes with a compiled program.
    """

    calls: int
    eager_calls: int
    compiled_calls: int
    compilations: int
    persistent_cache_hits: int
    traces: int
    programs: int
    compile_time_s: float
    eager_run_s: float | None
    compiled_run_s: float | None
    break_even_calls: float | None
    decision: str
    reason: str
    temp_bytes: int | None
    argument_bytes: int | None
    output_bytes: int | None
    code_bytes: int | None
    compiled_buckets: tuple[int, ...]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


class OptimizedModel:
    """A callable wrapper returned by :meth:`HybridPerformancePlatform.optimize`.

    Call it like the original target; :attr:`metrics` reads the measurements so far.
    """

    def __init__(self, jit: AdaptiveJit, bound_state: Any = None, is_module: bool = False):
        self.adaptive_jit = jit
        self._state = bound_state
        self._is_module = is_module

    def __call__(self, *args: Any) -> Any:
        if self._is_module:
            return self.adaptive_jit(self._state, *args)
        return self.adaptive_jit(*args)

    @property
    def metrics(self) -> PerformanceMetrics:
        """A snapshot of the measured figures."""
        j = self.adaptive_jit
        t = j.timings
        d = j.decision
        if j.mode == "auto":
            decision = "undecided" if d is None else ("jit" if d.use_jit else "eager")
            reason = "still measuring" if d is None else d.reason
        else:
            decision = "jit" if j.mode == "always" else "eager"
            reason = f"mode={j.mode!r}"
        mem = j.memory_analysis()

        def field(name: str) -> int | None:
            return None if mem is None else int(getattr(mem, name))

        eager_s = d.eager_s if d is not None else _median(t["eager"][1:] or t["eager"])
        return PerformanceMetrics(
            calls=j.calls,
            eager_calls=j.eager_calls,
            compiled_calls=j.compiled_calls,
            compilations=j.events.compilations,
            persistent_cache_hits=j.events.cache_hits,
            traces=j.events.traces,
            programs=len(t["compile"]),
            compile_time_s=float(sum(t["compile"])),
            eager_run_s=eager_s,
            compiled_run_s=d.compiled_s if d is not None else _median(t["compiled"]),
            break_even_calls=None if d is None else d.break_even_calls,
            decision=decision,
            reason=reason,
            temp_bytes=field("temp_size_in_bytes"),
            argument_bytes=field("argument_size_in_bytes"),
            output_bytes=field("output_size_in_bytes"),
            code_bytes=field("generated_code_size_in_bytes"),
            compiled_buckets=j.compiled_buckets,
        )


class HybridPerformancePlatform:
    """Adaptive JIT and memory management for JAX functions, training steps and NNX models.

    Args:
        gpu_memory_optimization: build an :class:`IntelligentGPUMemoryManager`
            (:attr:`memory_manager`) to plan rematerialization, micro-batching and donation for
            training steps (:meth:`plan_memory`); ``False`` leaves it out.
        adaptive_jit: measure eager against compiled calls and compile only when it pays
            (``mode="auto"``); ``False`` compiles every call's bucket (``mode="always"``).
        compilation_cache_dir: turn on JAX's persistent compilation cache there (process-wide,
            see :func:`enable_persistent_cache`).
        max_batch: largest batch size served when :meth:`optimize` gets ``batch_argnums``.
        min_bucket: smallest padded batch size.
        bucket_growth: ratio between consecutive padded batch sizes.
        probe_calls: eager and compiled calls timed before deciding.
        expected_calls: calls over which a compilation must pay for itself.
        memory_budget_bytes: temporary-memory budget for micro-batching (memory manager).

    Raises:
        ValueError: for bad settings (checked here, before anything compiles).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> platform = HybridPerformancePlatform(gpu_memory_optimization=True, adaptive_jit=True)
        >>> model = platform.optimize(lambda x: jnp.tanh(x) ** 2, np.ones((16, 4)),
        ...                           batch_argnums=(0,))
        >>> model(np.ones((5, 4))).shape
        (5, 4)
        >>> m = model.metrics
        >>> m.decision in ("jit", "eager"), m.eager_run_s > 0, m.compiled_run_s > 0
        (True, True, True)
    """

    def __init__(
        self,
        gpu_memory_optimization: bool = True,
        adaptive_jit: bool = True,
        *,
        compilation_cache_dir: str | None = None,
        max_batch: int = 4096,
        min_bucket: int = 8,
        bucket_growth: float = 2.0,
        probe_calls: int = 3,
        expected_calls: int = 1000,
        memory_budget_bytes: int | None = None,
    ) -> None:
        for name, flag in (
            ("gpu_memory_optimization", gpu_memory_optimization),
            ("adaptive_jit", adaptive_jit),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}.")
        bucket_sizes(max_batch, min_bucket=min_bucket, growth=bucket_growth)  # validates
        for name, value in (("probe_calls", probe_calls), ("expected_calls", expected_calls)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.gpu_memory_optimization = gpu_memory_optimization
        self.adaptive_jit = adaptive_jit
        self.max_batch = max_batch
        self.min_bucket = min_bucket
        self.bucket_growth = bucket_growth
        self.probe_calls = probe_calls
        self.expected_calls = expected_calls
        self.memory_manager = (
            IntelligentGPUMemoryManager(memory_budget_bytes=memory_budget_bytes)
            if gpu_memory_optimization
            else None
        )
        if compilation_cache_dir is not None:
            enable_persistent_cache(compilation_cache_dir)
        self.compilation_cache_dir = compilation_cache_dir

    def optimize(
        self,
        target: Callable[..., Any],
        *example_args: Any,
        batch_argnums: Sequence[int] = (),
        mask_argname: str | None = None,
    ) -> OptimizedModel:
        """Wrap ``target`` and, given example arguments, measure it until the JIT decides.

        Args:
            target: a pure function (e.g. ``step(params, opt_state, batch)``) or an
                ``nnx.Module``, called as ``model(*args)`` on a snapshot of its state
                (``nnx.split``; state changes made by the call are not written back).
            *example_args: arguments of one call; with them the probe calls run now.
            batch_argnums: arguments whose leaves share a leading batch axis (bucketed).
            mask_argname: keyword through which ``target`` receives the real-row mask.

        Returns:
            The :class:`OptimizedModel`.

        Raises:
            TypeError: when ``target`` is not callable.
        """
        from flax import nnx

        is_module = isinstance(target, nnx.Module)
        state = None
        fn = target
        if is_module:
            graphdef, state = nnx.split(target)

            def fn(state, *args, **kwargs):
                return nnx.merge(graphdef, state)(*args, **kwargs)

            batch_argnums = tuple(i + 1 for i in batch_argnums)
        elif not callable(target):
            raise TypeError(
                f"target must be a function or an nnx.Module, got {type(target).__name__}."
            )
        jit = AdaptiveJit(
            fn,
            mode="auto" if self.adaptive_jit else "always",
            batch_argnums=batch_argnums,
            max_batch=self.max_batch if batch_argnums else None,
            min_bucket=self.min_bucket,
            growth=self.bucket_growth,
            mask_argname=mask_argname,
            probe_calls=self.probe_calls,
            expected_calls=self.expected_calls,
        )
        model = OptimizedModel(jit, state, is_module)
        if example_args:
            calls = 2 * self.probe_calls if self.adaptive_jit else 1
            for _ in range(calls):
                model(*example_args)
        return model

    def plan_memory(self, make_loss: Callable, params: Any, args: Any):
        """Plan rematerialization and micro-batching (see :class:`IntelligentGPUMemoryManager`).

        Raises:
            ValueError: when the platform was built with ``gpu_memory_optimization=False``.
        """
        if self.memory_manager is None:
            raise ValueError(
                "plan_memory needs gpu_memory_optimization=True when building the platform."
            )
        return self.memory_manager.plan(make_loss, params, args)
