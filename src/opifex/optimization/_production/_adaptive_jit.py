"""Adaptive JIT: compile when it pays, and bucket dynamic batch sizes to a bounded set.

A call goes through three steps:

1. **Bucketing.** The leading axis of the arguments named by ``batch_argnums`` is padded on the
   host up to the smallest bucket that holds it (a geometric ladder ``min_bucket, min_bucket *
   growth, ..., max_batch``), and the outputs whose leading axis follows the batch are cut back
   to the true size. Padding repeats the last real row, so padded rows hold finite values and
   are thrown away; a function that works row by row returns what the unpadded call returns,
   bit for bit for element-wise work (XLA picks a dot kernel by operand shape, so a padded
   contraction can differ from the unpadded one in the last bit). A function that reduces over
   the batch (a loss) asks for a ``mask`` keyword (True on real rows) with ``mask_argname`` and
   weighs its reduction by it. Padding and slicing run in NumPy because an eager device-side
   pad or slice compiles one XLA program per distinct batch size, which is what bucketing
   exists to avoid.
2. **The decision** (``mode="auto"``). The first ``probe_calls`` calls run eagerly and are timed
   (the median leaves out the first, which also compiles every primitive); the next
   ``probe_calls`` calls run compiled, timed apart from the compilation. Compilation pays when
   the time it saves over ``expected_calls`` calls covers its cost::

       expected_calls * (t_eager - t_compiled) >= t_compile

   i.e. the break-even number of calls ``t_compile / (t_eager - t_compiled)`` is at most
   ``expected_calls``. Otherwise every later call runs eagerly. ``mode="always"`` compiles from
   the first call, ``mode="never"`` never compiles.
3. **Execution** of the bucket's ahead-of-time compiled executable (``jit(...).lower().compile()``,
   kept per argument signature, so its ``memory_analysis()`` is at hand).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from opifex.optimization._production._compile_events import CompileStats, compile_events

_MODES = ("auto", "always", "never")


def bucket_sizes(max_batch: int, *, min_bucket: int = 8, growth: float = 2.0) -> tuple[int, ...]:
    """The geometric ladder of padded batch sizes ``min_bucket * growth**k``, capped at max_batch.

    At most a fraction ``growth - 1`` of a padded batch is padding.

    Args:
        max_batch: the largest batch size to serve (the last bucket).
        min_bucket: the smallest bucket.
        growth: ratio between consecutive buckets, > 1.

    Returns:
        Increasing bucket sizes ending with ``max_batch``.

    Raises:
        ValueError: for sizes < 1 or ``growth <= 1``.

    Example:
        >>> bucket_sizes(100, min_bucket=8)
        (8, 16, 32, 64, 100)
    """
    if not isinstance(max_batch, int | np.integer) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}.")
    if not isinstance(min_bucket, int | np.integer) or min_bucket < 1:
        raise ValueError(f"min_bucket must be an int >= 1, got {min_bucket!r}.")
    if not growth > 1.0:
        raise ValueError(f"growth must be > 1 (e.g. 2.0 for powers of two), got {growth!r}.")
    sizes = []
    size = min(int(min_bucket), int(max_batch))
    while size < max_batch:
        sizes.append(size)
        size = max(size + 1, math.ceil(size * growth))
    sizes.append(int(max_batch))
    return tuple(sizes)


class JitDecision(NamedTuple):
    """The outcome of the compile-or-not rule (see the module docstring)."""

    use_jit: bool
    reason: str
    eager_s: float  # median eager run time, seconds
    compiled_s: float  # median compiled run time, seconds
    compile_s: float  # mean compilation time per program, seconds
    break_even_calls: float  # calls after which compiling has paid for itself (inf: never)


def decide(
    eager_times: Sequence[float],
    compiled_times: Sequence[float],
    compile_s: float,
    expected_calls: int,
) -> JitDecision:
    """Apply the rule ``expected_calls * (t_eager - t_compiled) >= t_compile``.

    Args:
        eager_times: timed eager calls; the first is left out of the median when there are more.
        compiled_times: timed compiled calls (compilation excluded).
        compile_s: compilation time of one program, seconds.
        expected_calls: the number of calls the compilation must pay back over.

    Returns:
        A :class:`JitDecision` with the measured figures and the reason.

    Example:
        >>> decide([0.5, 0.1, 0.1], [0.01, 0.01], compile_s=1.0, expected_calls=100).use_jit
        True
    """
    t_eager = statistics.median(eager_times[1:] if len(eager_times) > 1 else eager_times)
    t_jit = statistics.median(compiled_times)
    saving = t_eager - t_jit
    if saving <= 0.0:
        return JitDecision(
            False,
            f"compiled call ({t_jit:.3g} s) is not faster than eager ({t_eager:.3g} s)",
            t_eager,
            t_jit,
            compile_s,
            math.inf,
        )
    break_even = compile_s / saving
    use = break_even <= expected_calls
    verb = "pays back" if use else "would not pay back"
    reason = (
        f"compilation ({compile_s:.3g} s) {verb} within expected_calls={expected_calls}: "
        f"break-even after {break_even:.3g} calls (eager {t_eager:.3g} s, compiled {t_jit:.3g} s)"
    )
    return JitDecision(use, reason, t_eager, t_jit, compile_s, break_even)


def _signature(leaves: list[Any]) -> tuple:
    return tuple((np.shape(x), x.dtype if hasattr(x, "dtype") else type(x)) for x in leaves)


class AdaptiveJit:
    """A callable that buckets batch sizes and compiles ``fn`` only when compiling pays.

    Args:
        fn: a pure function of positional arguments (pytrees of arrays).
        mode: ``"auto"`` (measure, then decide), ``"always"`` or ``"never"``.
        batch_argnums: positions of the arguments whose leaves share a leading batch axis.
        max_batch: the largest batch size served (required with ``batch_argnums`` unless
            ``buckets`` is given).
        buckets: explicit increasing bucket sizes (default :func:`bucket_sizes`).
        min_bucket: smallest bucket of the default ladder.
        growth: ratio between consecutive buckets of the default ladder.
        mask_argname: when set, ``fn`` receives this keyword: a bool array over the padded batch,
            True on real rows.
        probe_calls: eager calls and compiled calls timed before deciding (``mode="auto"``).
        expected_calls: calls over which compilation must pay for itself.
        donate_argnums: arguments whose buffers the compiled program may reuse.
        clock: the timer (seconds); tests pass a stub.

    Raises:
        ValueError: for an unknown mode, bad bucket settings or counts < 1.
        TypeError: when ``fn`` is not callable.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> f = AdaptiveJit(lambda x: jnp.sin(x) * 2.0, mode="always", batch_argnums=(0,),
        ...                 max_batch=64)
        >>> [f(np.ones((n, 3))).shape[0] for n in (5, 7, 30)]
        [5, 7, 30]
        >>> f.compiled_buckets
        (8, 32)
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        mode: str = "auto",
        batch_argnums: Sequence[int] = (),
        max_batch: int | None = None,
        buckets: Sequence[int] | None = None,
        min_bucket: int = 8,
        growth: float = 2.0,
        mask_argname: str | None = None,
        probe_calls: int = 3,
        expected_calls: int = 1000,
        donate_argnums: Sequence[int] = (),
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        for name, value in (("probe_calls", probe_calls), ("expected_calls", expected_calls)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.batch_argnums = tuple(int(i) for i in batch_argnums)
        if any(i < 0 for i in self.batch_argnums):
            raise ValueError(f"batch_argnums must be >= 0, got {self.batch_argnums}.")
        if buckets is not None:
            b = tuple(int(s) for s in buckets)
            if not b or b[0] < 1 or any(x >= y for x, y in itertools.pairwise(b)):
                raise ValueError(f"buckets must be increasing sizes >= 1, got {tuple(buckets)}.")
            self.buckets = b
        elif self.batch_argnums:
            if max_batch is None:
                raise ValueError(
                    "batch_argnums needs max_batch (the largest batch size served) or buckets."
                )
            self.buckets = bucket_sizes(max_batch, min_bucket=min_bucket, growth=growth)
        else:
            self.buckets = ()
        if mask_argname is not None and not self.batch_argnums:
            raise ValueError("mask_argname needs batch_argnums (the arguments to mask).")
        self.fn = fn
        self.mode = mode
        self.mask_argname = mask_argname
        self.probe_calls = probe_calls
        self.expected_calls = expected_calls
        self.clock = clock
        self._jit = jax.jit(fn, donate_argnums=tuple(donate_argnums))
        self._compiled: dict[tuple, Any] = {}
        self._compiled_bucket: dict[tuple, int | None] = {}
        self._compile_times: list[float] = []
        self._memory: dict[tuple, Any] = {}
        self._batch_out: dict[tuple, list[bool]] = {}
        self._eager_times: list[float] = []
        self._jit_times: list[float] = []
        self.events = CompileStats()
        self.calls = 0
        self.eager_calls = 0
        self.compiled_calls = 0
        self.bucket_hits = 0
        self.decision: JitDecision | None = None
        self._phase = {"auto": "eager_probe", "always": "jit", "never": "eager"}[mode]

    @property
    def phase(self) -> str:
        """``eager_probe``, ``compile_probe``, ``jit`` or ``eager``."""
        return self._phase

    @property
    def compiled_buckets(self) -> tuple[int, ...]:
        """The bucket sizes with a compiled program, in increasing order."""
        return tuple(sorted({b for b in self._compiled_bucket.values() if b is not None}))

    # -- bucketing -------------------------------------------------------------------------

    def _bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(
            f"batch size {n} exceeds the largest bucket {self.buckets[-1]}; "
            "raise max_batch (or add a larger bucket)."
        )

    def _pad(self, args: tuple) -> tuple[tuple, dict, int | None, int | None]:
        if not self.batch_argnums:
            return args, {}, None, None
        if max(self.batch_argnums) >= len(args):
            raise ValueError(
                f"batch_argnums={self.batch_argnums} but the call has {len(args)} arguments."
            )
        sizes = set()
        for i in self.batch_argnums:
            for leaf in jax.tree.leaves(args[i]):
                if np.ndim(leaf) < 1:
                    raise ValueError(
                        f"argument {i} is a batch argument but holds a scalar leaf; every leaf "
                        "of a batch argument needs a leading batch axis."
                    )
                sizes.add(np.shape(leaf)[0])
        if len(sizes) != 1:
            raise ValueError(
                f"batch arguments {self.batch_argnums} disagree on the batch size: "
                f"{sorted(sizes)}; give every leaf the same leading size."
            )
        n = sizes.pop()
        if n < 1:
            raise ValueError("batch size must be >= 1, got an empty batch.")
        bucket = self._bucket_for(n)
        out = list(args)
        for i in self.batch_argnums:
            out[i] = jax.tree.map(lambda x: _pad_rows(np.asarray(x), bucket), args[i])
        kwargs = {}
        if self.mask_argname is not None:
            kwargs[self.mask_argname] = np.arange(bucket) < n
        return tuple(out), kwargs, n, bucket

    def _batch_outputs(self, key: tuple, args: tuple, kwargs: dict, bucket: int) -> list[bool]:
        # An output follows the batch when its leading size tracks the padded size: compare
        # the abstract outputs at the bucket and at bucket + 1 (tracing only, no compile).
        if key not in self._batch_out:
            shapes = []
            for size in (bucket, bucket + 1):
                a = list(args)
                for i in self.batch_argnums:
                    a[i] = jax.tree.map(
                        lambda x, s=size: jax.ShapeDtypeStruct((s, *x.shape[1:]), x.dtype), a[i]
                    )
                kw = {k: jax.ShapeDtypeStruct((size,), np.bool_) for k in kwargs}
                shapes.append(jax.tree.leaves(jax.eval_shape(self.fn, *a, **kw)))
            self._batch_out[key] = [
                len(s0.shape) > 0 and s0.shape[0] == bucket and s1.shape[0] == bucket + 1
                for s0, s1 in zip(*shapes, strict=True)
            ]
        return self._batch_out[key]

    # -- compilation -----------------------------------------------------------------------

    def _get_compiled(self, key: tuple, args: tuple, kwargs: dict, bucket: int | None):
        compiled = self._compiled.get(key)
        if compiled is not None:
            self.bucket_hits += 1
            return compiled
        t0 = self.clock()
        compiled = self._jit.lower(*args, **kwargs).compile()
        self._compile_times.append(self.clock() - t0)
        self._compiled[key] = compiled
        self._compiled_bucket[key] = bucket
        try:
            self._memory[key] = compiled.memory_analysis()
        except (NotImplementedError, RuntimeError):
            self._memory[key] = None
        return compiled

    def warmup(self, *example_args: Any) -> None:
        """Compile a program for every bucket now, from one example call's arguments.

        Rows of the example batch are repeated or cut to each bucket size.

        Args:
            *example_args: arguments of one call.
        """
        padded, kwargs, n, _ = self._pad(example_args)
        sizes = self.buckets or (None,)
        with compile_events(self.events):
            for b in sizes:
                args = list(padded)
                kw = dict(kwargs)
                if b is not None:
                    for i in self.batch_argnums:
                        args[i] = jax.tree.map(lambda x, b=b: _take_rows(x, n, b), padded[i])
                    if self.mask_argname is not None:
                        kw[self.mask_argname] = np.arange(b) < min(n, b)
                args = tuple(args)
                key = (jax.tree.structure((args, kw)), _signature(jax.tree.leaves((args, kw))))
                self._get_compiled(key, args, kw, b)

    # -- calling ---------------------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        padded, kwargs, n, bucket = self._pad(args)
        key = (jax.tree.structure((padded, kwargs)), _signature(jax.tree.leaves((padded, kwargs))))
        with compile_events(self.events):
            out = self._run(key, padded, kwargs, bucket)
            if n is not None and n != bucket:
                flags = self._batch_outputs(key, padded, kwargs, bucket)
                leaves, tree = jax.tree.flatten(out)
                leaves = [
                    jax.device_put(np.asarray(x)[:n]) if f else x
                    for x, f in zip(leaves, flags, strict=True)
                ]
                out = jax.tree.unflatten(tree, leaves)
        self.calls += 1
        return out

    def _run(self, key: tuple, args: tuple, kwargs: dict, bucket: int | None) -> Any:
        if self._phase == "jit":
            self.compiled_calls += 1
            return self._get_compiled(key, args, kwargs, bucket)(*args, **kwargs)
        if self._phase == "eager":
            self.eager_calls += 1
            return self.fn(*args, **kwargs)
        if self._phase == "eager_probe":
            t0 = self.clock()
            out = jax.block_until_ready(self.fn(*args, **kwargs))
            self._eager_times.append(self.clock() - t0)
            self.eager_calls += 1
            if len(self._eager_times) >= self.probe_calls:
                self._phase = "compile_probe"
            return out
        compiled = self._get_compiled(key, args, kwargs, bucket)
        t0 = self.clock()
        out = jax.block_until_ready(compiled(*args, **kwargs))
        self._jit_times.append(self.clock() - t0)
        self.compiled_calls += 1
        if len(self._jit_times) >= self.probe_calls:
            self.decision = decide(
                self._eager_times,
                self._jit_times,
                statistics.mean(self._compile_times),
                self.expected_calls,
            )
            self._phase = "jit" if self.decision.use_jit else "eager"
        return out

    @property
    def timings(self) -> dict[str, list[float]]:
        """Measured seconds: ``eager`` and ``compiled`` probe calls, ``compile`` per program."""
        return {
            "eager": list(self._eager_times),
            "compiled": list(self._jit_times),
            "compile": list(self._compile_times),
        }

    def memory_analysis(self) -> Any:
        """XLA's memory analysis of the largest compiled program (``None`` if unavailable)."""
        if not self._compiled:
            return None
        key = max(self._compiled, key=lambda k: self._compiled_bucket[k] or 0)
        return self._memory.get(key)


def _pad_rows(x: np.ndarray, bucket: int) -> np.ndarray:
    n = x.shape[0]
    if n == bucket:
        return x
    # Repeating the last real row keeps padded rows finite for any function that accepts the
    # real ones (zeros could hit a log or a division); the rows are sliced off afterwards.
    return np.concatenate([x, np.repeat(x[-1:], bucket - n, axis=0)], axis=0)


def _take_rows(x: np.ndarray, n: int, size: int) -> np.ndarray:
    return np.take(x, np.arange(size) % n, axis=0)
