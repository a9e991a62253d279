"""Production performance platform: adaptive JIT with measured metrics, and memory management.

:class:`HybridPerformancePlatform` turns a JAX function, a training step or an NNX model into
an :class:`OptimizedModel`: a callable that buckets dynamic batch sizes, compiles only when the
measured saving pays for the compilation (the rule is stated in
:mod:`opifex.optimization._production._adaptive_jit`), and reports :class:`PerformanceMetrics`
measured from the running program: timings by its clock, compilations and persistent-cache hits
from ``jax.monitoring`` events, memory from XLA's ``memory_analysis()``.
:class:`IntelligentGPUMemoryManager` chooses rematerialization, micro-batching and donation for
a training step from XLA's analyses; :meth:`HybridPerformancePlatform.optimize_training_step`
applies its plan when the platform is built with ``gpu_memory_optimization=True``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from opifex.optimization._production._adaptive_jit import AdaptiveJit, bucket_sizes, decide
from opifex.optimization._production._compile_events import CompileStats, compile_events
from opifex.optimization._production._memory import (
    NO_REMAT,
    IntelligentGPUMemoryManager,
    MemoryPlan,
    RematCandidate,
    scan_layers,
)

__all__ = [
    "NO_REMAT",
    "AdaptiveJit",
    "CompileStats",
    "HybridPerformancePlatform",
    "IntelligentGPUMemoryManager",
    "MemoryPlan",
    "OptimizedModel",
    "PerformanceMetrics",
    "RematCandidate",
    "bucket_sizes",
    "compile_events",
    "decide",
    "enable_persistent_cache",
    "scan_layers",
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
        memory_policy: the rematerialization candidate of a training step
            (:meth:`HybridPerformancePlatform.optimize_training_step`; ``None`` otherwise).
        remat_temp_bytes: temporary memory of the gradient program under ``memory_policy``.
        baseline_temp_bytes: temporary memory of the gradient program without
            rematerialization (``None`` when the memory manager is off: nothing compared).
        remat_flops_ratio: FLOPs of the gradient program under ``memory_policy`` over the
            baseline's.
        micro_batches: micro-batches the gradient is accumulated over (training steps).
        donated: whether the compiled step donates the parameter and optimizer-state buffers.
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
    memory_policy: str | None = None
    remat_temp_bytes: int | None = None
    baseline_temp_bytes: int | None = None
    remat_flops_ratio: float | None = None
    micro_batches: int | None = None
    donated: bool = False


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


class OptimizedModel:
    """A callable returned by :class:`HybridPerformancePlatform`'s ``optimize*`` methods.

    Call it like the original target; :attr:`metrics` reads the measurements so far.
    :attr:`memory_plan` holds the memory manager's plan of a training step (``None``
    otherwise).
    """

    def __init__(
        self,
        jit: AdaptiveJit,
        bound_state: Any = None,
        is_module: bool = False,
        *,
        memory_plan: MemoryPlan | None = None,
        memory_policy: str | None = None,
        donated: bool = False,
    ):
        self.adaptive_jit = jit
        self._state = bound_state
        self._is_module = is_module
        self.memory_plan = memory_plan
        self._memory_policy = memory_policy
        self._donated = donated

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
        plan = self.memory_plan
        remat = None if plan is None else plan.remat
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
            memory_policy=self._memory_policy,
            remat_temp_bytes=None if remat is None else remat.rows[remat.chosen].cost.temp_bytes,
            baseline_temp_bytes=(
                None if remat is None else remat.rows[remat.baseline].cost.temp_bytes
            ),
            remat_flops_ratio=None if remat is None else remat.flops_ratio(),
            micro_batches=None if self._memory_policy is None else _micro(plan),
            donated=self._donated,
        )


def _micro(plan: MemoryPlan | None) -> int:
    return 1 if plan is None else plan.num_micro_batches


class HybridPerformancePlatform:
    """Adaptive JIT and memory management for JAX functions, training steps and NNX models.

    Args:
        gpu_memory_optimization: build an :class:`IntelligentGPUMemoryManager`
            (:attr:`memory_manager`); :meth:`optimize_training_step` then applies its plan
            (rematerialization policy, micro-batching, buffer donation). ``False`` leaves it
            out and training steps run as written, without donation.
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
        memory_manager: a configured :class:`IntelligentGPUMemoryManager` to use instead of
            the default one (candidates, FLOPs bound); needs ``gpu_memory_optimization=True``.

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

        A training step under the memory manager's plan (see :meth:`optimize_training_step`):

        >>> import optax
        >>> def make_loss(remat):
        ...     def loss(ws, x):
        ...         return jnp.mean(scan_layers(lambda h, w: jnp.tanh(h @ w), ws, x, remat) ** 2)
        ...     return loss
        >>> ws, x, opt = jnp.ones((4, 8, 8)) / 8, jnp.ones((32, 8)), optax.sgd(0.1)
        >>> step = platform.optimize_training_step(make_loss, ws, x, opt)
        >>> ws, state, loss = step(ws, opt.init(ws), x)
        >>> m = step.metrics
        >>> m.remat_temp_bytes <= m.baseline_temp_bytes, m.donated
        (True, True)
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
        memory_manager: IntelligentGPUMemoryManager | None = None,
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
        if memory_manager is not None:
            if not isinstance(memory_manager, IntelligentGPUMemoryManager):
                raise TypeError(
                    "memory_manager must be an IntelligentGPUMemoryManager, got "
                    f"{type(memory_manager).__name__}."
                )
            if not gpu_memory_optimization:
                raise ValueError(
                    "memory_manager was given with gpu_memory_optimization=False; set it to "
                    "True to use the manager, or drop the manager."
                )
        elif gpu_memory_optimization:
            memory_manager = IntelligentGPUMemoryManager(memory_budget_bytes=memory_budget_bytes)
        self.memory_manager = memory_manager
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

    def optimize_training_step(
        self,
        make_loss: Callable[[RematCandidate], Callable[[Any, Any], Any]],
        params: Any,
        args: Any,
        optimizer: Any,
    ) -> OptimizedModel:
        """A training step ``step(params, opt_state, args) -> (params, opt_state, loss)``.

        With ``gpu_memory_optimization=True`` the memory manager first compiles the gradient
        program of every rematerialization candidate at these shapes and keeps the one with
        the least temporary memory within its FLOPs bound and never above no
        rematerialization (:func:`~opifex.optimization._production._remat.choose_remat`);
        with a memory budget it also accumulates gradients over the fewest micro-batches that
        fit. The step then donates the ``params`` and ``opt_state`` buffers, so callers must
        not reuse the arrays they pass in. With ``gpu_memory_optimization=False`` the step is
        ``make_loss(NO_REMAT)`` as written, without donation. Either way the step goes through
        the adaptive JIT (no batch bucketing: padding would change a mean loss), and
        :attr:`OptimizedModel.metrics` reports the plan's measured memory and FLOPs.

        Args:
            make_loss: builds ``loss(params, args) -> scalar`` for a
                :class:`RematCandidate` (usually by passing it to ``scan_layers``).
            params: example parameters (arrays or ``jax.ShapeDtypeStruct``; nothing runs).
            args: example batch, the shapes the step will be called with.
            optimizer: an ``optax.GradientTransformation``.

        Returns:
            The :class:`OptimizedModel` of the step; nothing has run yet.

        Raises:
            TypeError: when ``make_loss`` is not callable or ``optimizer`` is not an optax
                transformation.
        """
        import optax

        if not callable(make_loss):
            raise TypeError(f"make_loss must be callable, got {type(make_loss).__name__}.")
        if not hasattr(optimizer, "update") or not hasattr(optimizer, "init"):
            raise TypeError(
                "optimizer must be an optax.GradientTransformation, got "
                f"{type(optimizer).__name__}."
            )
        manager = self.memory_manager
        if manager is None:
            plan, candidate, donate = None, NO_REMAT, False
            grad_fn = jax.value_and_grad(make_loss(NO_REMAT))
        else:
            plan = manager.plan(make_loss, params, args)
            candidate, donate, grad_fn = plan.remat.chosen_candidate, manager.donate, plan.grad_fn

        def step(params: Any, opt_state: Any, args: Any) -> tuple[Any, Any, Any]:
            loss, grads = grad_fn(params, args)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        jit = AdaptiveJit(
            step,
            mode="auto" if self.adaptive_jit else "always",
            probe_calls=self.probe_calls,
            expected_calls=self.expected_calls,
            donate_argnums=(0, 1) if donate else (),
        )
        return OptimizedModel(jit, memory_plan=plan, memory_policy=candidate.name, donated=donate)
