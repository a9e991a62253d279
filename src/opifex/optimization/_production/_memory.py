"""Fit a training step into memory: rematerialization, buffer donation and micro-batching.

Three measured levers, all read from XLA's ``memory_analysis()`` of programs compiled in this
process (CPU and GPU alike): the rematerialization policy (:mod:`._remat`), donation of the
parameter and optimizer-state buffers to the updated ones (``donate_argnums``), and gradient
accumulation over ``k`` micro-batches, which shrinks activation memory about ``k``-fold. For a
loss that is a mean over the batch and equal micro-batches, the mean of the micro-batch
gradients is the full-batch gradient, so accumulation changes memory, not results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from opifex.optimization._production._remat import (
    NO_REMAT,
    CandidateCost,
    RematCandidate,
    RematReport,
    choose_remat,
    remat_candidates,
    scan_layers,
)
from opifex.optimization._production._remat_cost import (
    CompiledCost,
    compile_and_measure,
    count_flops,
    measure_compiled,
)

__all__ = [
    "NO_REMAT",
    "CandidateCost",
    "CompiledCost",
    "IntelligentGPUMemoryManager",
    "MemoryPlan",
    "MicroBatchReport",
    "RematCandidate",
    "RematReport",
    "accumulate_gradients",
    "choose_remat",
    "count_flops",
    "fit_micro_batches",
    "make_train_step",
    "measure_compiled",
    "remat_candidates",
    "scan_layers",
]


def _int_at_least(name: str, value: Any, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}.")


def _batch_size(args: Any) -> int:
    leaves = jax.tree.leaves(args)
    sizes = {leaf.shape[0] if getattr(leaf, "ndim", 0) else None for leaf in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        raise ValueError(
            "micro-batching splits every leaf of args on axis 0, so all leaves need one shared "
            f"leading (batch) size; got leading sizes {sorted(map(str, sizes))}. Pass only "
            "batched data in args."
        )
    return sizes.pop()


def accumulate_gradients(
    loss_fn: Callable[[Any, Any], Any], num_micro_batches: int
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``value_and_grad`` of ``loss_fn`` accumulated over equal micro-batches with ``lax.scan``.

    Every leaf of ``args`` is split on axis 0 into ``num_micro_batches`` equal parts; the
    returned loss and gradients are the means over the parts, which equal the full-batch ones
    when ``loss_fn`` is a mean over the batch.

    Args:
        loss_fn: ``loss(params, args) -> scalar``.
        num_micro_batches: ``k >= 1``; must divide the batch size.

    Returns:
        ``fn(params, args) -> (loss, grads)``.

    Raises:
        ValueError: If ``k < 1``; when called, if the leaves of ``args`` do not share a batch
            size divisible by ``k``.

    Example:
        >>> import jax.numpy as jnp
        >>> loss = lambda w, xy: jnp.mean((xy[0] @ w - xy[1]) ** 2)
        >>> x, y = jnp.arange(8.0).reshape(4, 2), jnp.arange(4.0)
        >>> full = jax.grad(loss)(jnp.ones(2), (x, y))
        >>> _, acc = accumulate_gradients(loss, 2)(jnp.ones(2), (x, y))
        >>> bool(jnp.allclose(full, acc))
        True
    """
    _int_at_least("num_micro_batches", num_micro_batches, 1)
    value_and_grad = jax.value_and_grad(loss_fn)
    k = num_micro_batches
    if k == 1:
        return value_and_grad

    def fn(params: Any, args: Any) -> tuple[Any, Any]:
        n = _batch_size(args)
        if n % k:
            raise ValueError(
                f"num_micro_batches must divide the batch size {n}, got {k}; use a divisor."
            )
        parts = jax.tree.map(lambda x: x.reshape(k, n // k, *x.shape[1:]), args)

        def body(acc, part):
            value, grads = value_and_grad(params, part)
            return jax.tree.map(jnp.add, acc, (value, grads)), None

        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(value_and_grad, params, args))
        total, _ = lax.scan(body, zero, parts)
        return jax.tree.map(lambda t: t / k, total)

    return fn


class MicroBatchReport(NamedTuple):
    """Measured temporary memory per micro-batch count tried, and the chosen count.

    Attributes:
        rows: ``(k, cost)`` for each ``k`` compiled, in increasing ``k``.
        chosen: The smallest ``k`` whose temporary memory fits the budget.
        budget_bytes: The budget.
    """

    rows: tuple[tuple[int, CompiledCost], ...]
    chosen: int
    budget_bytes: int

    @property
    def chosen_cost(self) -> CompiledCost:
        """The cost of the chosen micro-batch count."""
        return dict(self.rows)[self.chosen]


def fit_micro_batches(
    loss_fn: Callable[[Any, Any], Any],
    params: Any,
    args: Any,
    *,
    memory_budget_bytes: int,
    min_micro_batches: int = 1,
    max_micro_batches: int | None = None,
) -> MicroBatchReport:
    """The fewest micro-batches whose gradient program's temporary memory fits the budget.

    Divisors ``k`` of the batch size are compiled in increasing order (``k = 1`` first) and
    the first whose measured ``temp_bytes`` is at most ``memory_budget_bytes`` is chosen.

    Args:
        loss_fn: ``loss(params, args) -> scalar``, a mean over the batch.
        params: Example parameters (arrays or ``jax.ShapeDtypeStruct``; nothing runs).
        args: Example batch; every leaf is split on axis 0.
        memory_budget_bytes: Budget for XLA's temporary buffers, in bytes (> 0).
        min_micro_batches: Smallest ``k`` tried (skip counts already known not to fit).
        max_micro_batches: Largest ``k`` tried (default: the batch size).

    Returns:
        A :class:`MicroBatchReport`.

    Raises:
        ValueError: On a bad budget or batch, or if no ``k`` fits (the message gives the
            smallest memory reached).

    Example:
        >>> import jax.numpy as jnp
        >>> loss = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
        >>> w, x = jnp.ones((32, 32)), jnp.ones((256, 32))
        >>> full = fit_micro_batches(loss, w, x, memory_budget_bytes=10**9)
        >>> full.chosen
        1
        >>> tight = full.rows[0][1].temp_bytes // 2
        >>> report = fit_micro_batches(loss, w, x, memory_budget_bytes=tight)
        >>> report.chosen > 1 and report.chosen_cost.temp_bytes <= tight
        True
    """
    if (
        not isinstance(memory_budget_bytes, int)
        or isinstance(memory_budget_bytes, bool)
        or memory_budget_bytes <= 0
    ):
        raise ValueError(f"memory_budget_bytes must be an int > 0, got {memory_budget_bytes!r}.")
    n = _batch_size(args)
    _int_at_least("min_micro_batches", min_micro_batches, 1)
    limit = n if max_micro_batches is None else max_micro_batches
    _int_at_least("max_micro_batches", limit, min_micro_batches)
    rows = []
    for k in (d for d in range(min_micro_batches, min(n, limit) + 1) if n % d == 0):
        cost, _ = compile_and_measure(accumulate_gradients(loss_fn, k), params, args)
        rows.append((k, cost))
        if cost.temp_bytes <= memory_budget_bytes:
            return MicroBatchReport(tuple(rows), k, memory_budget_bytes)
    if not rows:
        raise ValueError(
            f"no divisor of the batch size {n} lies in [min_micro_batches, max_micro_batches] "
            f"= [{min_micro_batches}, {limit}]; widen the range."
        )
    least = min(rows, key=lambda r: r[1].temp_bytes)
    raise ValueError(
        f"no micro-batch count fits memory_budget_bytes={memory_budget_bytes}: the least "
        f"temporary memory measured was {least[1].temp_bytes} bytes with {least[0]} "
        f"micro-batches (tried k in {[k for k, _ in rows]}). Raise the budget, rematerialize "
        "(choose_remat) or shrink the batch."
    )


def make_train_step(
    grad_fn: Callable[[Any, Any], tuple[Any, Any]],
    optimizer: Any,
    *,
    donate: bool = True,
) -> Callable[[Any, Any, Any], tuple[Any, Any, Any]]:
    """A jitted ``step(params, opt_state, args) -> (params, opt_state, loss)``.

    With ``donate=True`` the parameter and optimizer-state buffers are donated
    (``donate_argnums=(0, 1)``), so XLA writes the updated ones in place instead of holding
    both copies; the caller must not reuse the arrays it passed in.

    Args:
        grad_fn: ``(params, args) -> (loss, grads)``, e.g. ``jax.value_and_grad(loss)`` or
            :func:`accumulate_gradients`.
        optimizer: An ``optax.GradientTransformation``.
        donate: Donate ``params`` and ``opt_state``.

    Returns:
        The jitted step.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> grad_fn = jax.value_and_grad(lambda w, x: jnp.mean((x - w) ** 2))
        >>> opt = optax.sgd(0.5)
        >>> step = make_train_step(grad_fn, opt)
        >>> w = jnp.zeros(2)
        >>> w, state, loss = step(w, opt.init(w), jnp.ones((4, 2)))
        >>> [round(float(v), 3) for v in w]
        [0.5, 0.5]
    """
    import optax

    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable, got {type(grad_fn).__name__}.")
    if not hasattr(optimizer, "update"):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}."
        )

    def step(params: Any, opt_state: Any, args: Any) -> tuple[Any, Any, Any]:
        loss, grads = grad_fn(params, args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


class MemoryPlan(NamedTuple):
    """What :class:`IntelligentGPUMemoryManager` chose, with the measurements behind it.

    Attributes:
        remat: The rematerialization report.
        micro_batches: The micro-batch report, or ``None`` when no budget was given.
        loss_fn: The loss under the chosen rematerialization policy.
        grad_fn: ``(params, args) -> (loss, grads)`` with the chosen micro-batch count.
    """

    remat: RematReport
    micro_batches: MicroBatchReport | None
    loss_fn: Callable[[Any, Any], Any]
    grad_fn: Callable[[Any, Any], tuple[Any, Any]]

    @property
    def num_micro_batches(self) -> int:
        """The chosen micro-batch count (1 without a budget)."""
        return 1 if self.micro_batches is None else self.micro_batches.chosen


class IntelligentGPUMemoryManager:
    """Measure and pick rematerialization, micro-batching and donation for a training step.

    :meth:`plan` compiles every rematerialization candidate (:func:`choose_remat`), then, if a
    budget is set, the fewest micro-batches (:func:`fit_micro_batches`) under the chosen
    policy. :meth:`train_step` returns a jitted step that donates parameter and optimizer
    buffers. Every figure comes from XLA's analyses of programs compiled in this process.

    Args:
        flops_bound: Largest ``flops(candidate) / flops(no remat)`` allowed (>= 1).
        memory_budget_bytes: Budget for temporary memory; ``None`` skips micro-batching.
        donate: Donate parameter and optimizer-state buffers in :meth:`train_step`.
        candidates: Rematerialization candidates (default: :func:`remat_candidates` for
            ``num_layers``).
        num_layers: Depth of the layer stack, used for the default nested candidates.

    Raises:
        ValueError: On a bound < 1 or a non-positive budget.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> def make_loss(remat):
        ...     def loss(ws, x):
        ...         return jnp.mean(scan_layers(lambda h, w: jnp.tanh(h @ w), ws, x, remat) ** 2)
        ...     return loss
        >>> ws, x = jnp.ones((4, 8, 8)) / 8, jnp.ones((32, 8))
        >>> full = RematCandidate("full", "nothing_saveable")
        >>> manager = IntelligentGPUMemoryManager(candidates=[full])
        >>> plan = manager.plan(make_loss, ws, x)
        >>> plan.remat.memory_reduction() >= 0.0, plan.num_micro_batches
        (True, 1)
    """

    def __init__(
        self,
        *,
        flops_bound: float = 1.35,
        memory_budget_bytes: int | None = None,
        donate: bool = True,
        candidates: Sequence[RematCandidate] | None = None,
        num_layers: int | None = None,
    ) -> None:
        if not isinstance(flops_bound, (int, float)) or not flops_bound >= 1.0:
            raise ValueError(f"flops_bound must be a float >= 1, got {flops_bound!r}.")
        if memory_budget_bytes is not None and (
            not isinstance(memory_budget_bytes, int) or memory_budget_bytes <= 0
        ):
            raise ValueError(
                f"memory_budget_bytes must be None or an int > 0, got {memory_budget_bytes!r}."
            )
        if num_layers is not None:
            _int_at_least("num_layers", num_layers, 1)
        self.flops_bound = float(flops_bound)
        self.memory_budget_bytes = memory_budget_bytes
        self.donate = bool(donate)
        self.candidates = remat_candidates(num_layers) if candidates is None else tuple(candidates)

    def plan(
        self,
        make_loss: Callable[[RematCandidate], Callable[[Any, Any], Any]],
        params: Any,
        args: Any,
    ) -> MemoryPlan:
        """Measure the candidates for ``make_loss`` at these shapes and return the plan."""
        remat = choose_remat(
            make_loss, params, args, candidates=self.candidates, flops_bound=self.flops_bound
        )
        loss_fn = make_loss(remat.chosen_candidate)
        micro = None
        if self.memory_budget_bytes is not None:
            micro = fit_micro_batches(
                loss_fn, params, args, memory_budget_bytes=self.memory_budget_bytes
            )
        k = 1 if micro is None else micro.chosen
        return MemoryPlan(remat, micro, loss_fn, accumulate_gradients(loss_fn, k))

    def train_step(self, plan: MemoryPlan, optimizer: Any) -> Callable:
        """The jitted, donating ``step(params, opt_state, args)`` for ``plan``."""
        return make_train_step(plan.grad_fn, optimizer, donate=self.donate)
