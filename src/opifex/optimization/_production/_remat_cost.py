"""What a compiled program costs: XLA's memory analysis and a FLOP count that sees loops.

Memory comes from ``compiled.memory_analysis()`` of the program XLA will run. FLOPs come from
two places, both reported: XLA's ``compiled.cost_analysis()["flops"]`` and a count over the
traced jaxpr. XLA's cost analysis counts the body of a ``while`` loop once, whatever its trip
count (a 64-layer ``lax.scan`` reads as one layer), so comparing a per-layer rematerialization
with a nested one on XLA's figure would compare different fractions of the work. The jaxpr
count multiplies every ``scan`` body by its length, and it sees rematerialized forward passes
because ``jax.checkpoint`` keeps them as ``remat`` equations under differentiation (XLA keeps
them too: ``prevent_cse``). Counting rules: ``dot_general`` costs ``2 * batch * M * N * K``;
arithmetic and transcendental element-wise ops cost one per output element; reductions one per
input element; data movement (reshape, slice, broadcast, transpose, gather...) costs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend as jex
import numpy as np

_ELEMENTWISE = frozenset(
    {
        "add",
        "add_any",
        "sub",
        "mul",
        "div",
        "rem",
        "neg",
        "max",
        "min",
        "abs",
        "sign",
        "pow",
        "integer_pow",
        "sqrt",
        "rsqrt",
        "cbrt",
        "exp",
        "exp2",
        "expm1",
        "log",
        "log1p",
        "tanh",
        "logistic",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "atan2",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "erf",
        "erfc",
        "erf_inv",
        "square",
        "reciprocal",
        "lgamma",
        "digamma",
    }
)
_REDUCTIONS = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "cumsum"}
)


class CompiledCost(NamedTuple):
    """Measured cost of one compiled program (bytes are XLA's, per device).

    Attributes:
        temp_bytes: Temporary buffers XLA allocates while the program runs (activations,
            residuals saved for the backward pass, workspace): the figure rematerialization
            and micro-batching lower.
        argument_bytes: Input buffers.
        output_bytes: Output buffers.
        alias_bytes: Output bytes written into donated input buffers.
        flops: Floating-point operations counted on the jaxpr, loop trip counts included.
        xla_flops: ``cost_analysis()["flops"]`` (each loop body counted once).
        compile_s: Seconds spent lowering and compiling.
    """

    temp_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    flops: float
    xla_flops: float
    compile_s: float

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, less the outputs written over donated inputs."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def _size(aval: Any) -> int:
    return int(np.prod(getattr(aval, "shape", ()), dtype=np.int64))


def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    # The output holds batch * M * N elements, each a length-K multiply-add.
    return 2.0 * _size(eqn.outvars[0].aval) * math.prod(lhs[d] for d in lhs_contract)


def _sub_jaxprs(params: dict) -> list[Any]:
    found = []
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, jex.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jex.core.Jaxpr):
                found.append(item)
    return found


def _jaxpr_flops(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name in _ELEMENTWISE:
            total += sum(_size(v.aval) for v in eqn.outvars)
        elif name in _REDUCTIONS:
            total += _size(eqn.invars[0].aval)
        elif name == "scan":
            total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
        else:
            # pjit, remat, custom_jvp/vjp calls, while (trip count unknown: once).
            subs = _sub_jaxprs(eqn.params)
            if name in ("custom_vjp_call", "custom_jvp_call"):
                # Only the primal computation runs; the rule jaxprs are alternatives.
                subs = subs[:1]
            total += sum(_jaxpr_flops(s) for s in subs)
    return total


def count_flops(fn: Callable, *args: Any) -> float:
    """FLOPs of ``fn(*args)`` counted on its jaxpr, with ``scan`` bodies times their length.

    Args:
        fn: A JAX-traceable function.
        *args: Example arguments (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
        The count, as a float.

    Example:
        >>> import jax.numpy as jnp
        >>> count_flops(lambda a, b: a @ b, jnp.ones((4, 3)), jnp.ones((3, 5)))
        120.0
    """
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _xla_flops(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, Sequence):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", float("nan")))


def compile_and_measure(
    fn: Callable, *args: Any, donate_argnums: tuple[int, ...] = ()
) -> tuple[CompiledCost, Any]:
    """Compile ``jax.jit(fn)`` for ``args`` and read its cost; returns ``(cost, compiled)``."""
    t0 = time.perf_counter()
    if hasattr(fn, "trace") and hasattr(fn, "lower"):
        if donate_argnums:
            raise ValueError(
                "fn is already jitted, so donate_argnums cannot be added; pass them to its "
                f"jax.jit instead, got donate_argnums={donate_argnums!r}."
            )
        traced = fn.trace(*args)
    else:
        traced = jax.jit(fn, donate_argnums=donate_argnums).trace(*args)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(
            f"XLA gave no memory analysis on backend {jax.default_backend()!r}; the memory "
            "manager needs it (CPU and GPU backends provide it)."
        )
    cost = CompiledCost(
        temp_bytes=int(memory.temp_size_in_bytes),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        flops=_jaxpr_flops(traced.jaxpr.jaxpr),
        xla_flops=_xla_flops(compiled),
        compile_s=compile_s,
    )
    return cost, compiled


def measure_compiled(
    fn: Callable, *args: Any, donate_argnums: tuple[int, ...] = ()
) -> CompiledCost:
    """Compile ``jax.jit(fn, donate_argnums=...)`` for ``args`` and return what it costs.

    Args:
        fn: A JAX-traceable function, or one already wrapped by ``jax.jit`` (its own
            ``donate_argnums`` then apply).
        *args: Example arguments (arrays or ``jax.ShapeDtypeStruct``); nothing is executed.
        donate_argnums: Positional arguments whose buffers the program may reuse.

    Raises:
        ValueError: If ``fn`` is already jitted and ``donate_argnums`` is given.

    Returns:
        A :class:`CompiledCost` from XLA's ``memory_analysis()`` and ``cost_analysis()`` and
        the jaxpr FLOP count.

    Example:
        >>> import jax.numpy as jnp
        >>> cost = measure_compiled(lambda x: jnp.tanh(x) * 2.0, jnp.ones((8, 8), jnp.float32))
        >>> cost.argument_bytes, cost.output_bytes, cost.flops
        (256, 256, 128.0)
    """
    return compile_and_measure(fn, *args, donate_argnums=donate_argnums)[0]
