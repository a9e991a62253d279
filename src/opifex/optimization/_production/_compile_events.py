"""Count XLA compilations and persistent-cache hits from JAX's ``jax.monitoring`` events.

JAX reports every backend compilation request as a ``/jax/core/compile/backend_compile_duration``
event (in jax 0.10: ``jax/_src/interpreters/pxla.py``) and, when the persistent compilation
cache is on, a ``/jax/compilation_cache/cache_hits`` or ``.../cache_misses`` event per request
(``jax/_src/compiler.py``). A request answered from the persistent cache still emits the
backend-compile event, so the number of programs XLA actually compiled is the backend-compile
count minus the cache hits.

Events are global to the process; :func:`compile_events` attributes them to the ``with`` blocks
that are active on the calling thread (JAX compiles synchronously on the thread that dispatches),
so two wrappers counting at once on different threads do not see each other's compilations.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"

_local = threading.local()
_lock = threading.Lock()
_installed = False


@dataclass(eq=False)
class CompileStats:
    """Compilation events seen inside :func:`compile_events` blocks.

    Attributes:
        requests: backend compilation requests (compiled or served by the persistent cache).
        cache_hits: requests served by the persistent compilation cache.
        cache_misses: requests the persistent cache could not serve (0 when it is off).
        traces: Python traces of a function to a jaxpr.
        compile_seconds: summed duration of the backend compilation requests.
    """

    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    traces: int = 0
    compile_seconds: float = 0.0

    @property
    def compilations(self) -> int:
        """Programs XLA actually compiled: requests not served by the persistent cache."""
        return self.requests - self.cache_hits


def _active() -> list[CompileStats]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _on_event(event: str, **_: object) -> None:
    stack = getattr(_local, "stack", None)
    if not stack:
        return
    for stats in stack:
        if event == CACHE_HIT_EVENT:
            stats.cache_hits += 1
        elif event == CACHE_MISS_EVENT:
            stats.cache_misses += 1


def _on_duration(event: str, duration: float, **_: object) -> None:
    stack = getattr(_local, "stack", None)
    if not stack:
        return
    for stats in stack:
        if event == BACKEND_COMPILE_EVENT:
            stats.requests += 1
            stats.compile_seconds += float(duration)
        elif event == TRACE_EVENT:
            stats.traces += 1


def _install() -> None:
    # Listeners are registered once per process and stay: jax offers no cheap way to check
    # whether a callback is already registered, and idle listeners cost one attribute lookup.
    global _installed
    with _lock:
        if not _installed:
            jax.monitoring.register_event_listener(_on_event)
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _installed = True


@contextlib.contextmanager
def compile_events(stats: CompileStats | None = None) -> Iterator[CompileStats]:
    """Count the compilation events raised on this thread inside the block.

    Blocks nest: an event is added to every enclosing block's stats.

    Args:
        stats: stats to add to (a fresh :class:`CompileStats` when ``None``).

    Returns:
        A context manager yielding the stats it updates.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> with compile_events() as stats:
        ...     _ = jax.jit(lambda x: x * 2.0 + 1.0)(jnp.ones(3_217))
        >>> stats.compilations >= 1
        True
    """
    _install()
    stats = CompileStats() if stats is None else stats
    stack = _active()
    stack.append(stats)
    try:
        yield stats
    finally:
        stack.remove(stats)
