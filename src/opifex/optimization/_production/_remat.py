"""Choose a rematerialization policy by compiling the candidates and reading XLA's analyses.

Reverse-mode differentiation keeps the forward pass's intermediates ("residuals") alive until
the backward pass consumes them; for a stack of ``L`` layers that is ``O(L)`` activations.
``jax.checkpoint`` (Griewank & Walther, *Evaluating Derivatives*, 2nd ed., ch. 12; Chen et al.,
"Training deep nets with sublinear memory cost", 2016) saves only what a policy allows and
recomputes the rest in the backward pass: per-layer checkpointing inside ``lax.scan`` keeps one
carry per layer, and nested checkpointing over ``c`` chunks of ``L / c`` layers keeps
``c + L / c`` carries (``2 sqrt(L)`` at ``c = sqrt(L)``) for one more forward pass.

The choice is measured, never predicted: each candidate's gradient program is compiled in this
process, its temporary memory read from ``memory_analysis()`` and its FLOPs counted (see
:mod:`._remat_cost`); the winner has the least temporary memory among candidates whose FLOPs
stay within ``flops_bound`` times the baseline's and whose memory does not exceed the
baseline's. The baseline (no rematerialization) is always a candidate, so the choice is never
worse than not rematerializing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
from jax import lax

from opifex.optimization._production._remat_cost import CompiledCost, compile_and_measure

_POLICIES = tuple(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))


class RematCandidate(NamedTuple):
    """One way to rematerialize a layer stack.

    Attributes:
        name: Label used in reports.
        policy: ``None`` for no rematerialization, else the name of a policy in
            ``jax.checkpoint_policies`` (``"nothing_saveable"``, ``"dots_saveable"``, ...)
            applied to each layer.
        chunks: ``1`` for a flat scan over layers; ``c > 1`` scans ``c`` checkpointed chunks of
            ``L / c`` layers (nested checkpointing; ``c ~ sqrt(L)`` is the classic choice).
    """

    name: str
    policy: str | None = None
    chunks: int = 1

    def wrap(self, layer_fn: Callable) -> Callable:
        """``layer_fn`` under this candidate's per-layer ``jax.checkpoint`` policy."""
        if self.policy is None:
            return layer_fn
        return jax.checkpoint(layer_fn, policy=getattr(jax.checkpoint_policies, self.policy))


NO_REMAT = RematCandidate("no remat")


def _check_candidate(c: Any) -> None:
    if not isinstance(c, RematCandidate):
        raise TypeError(f"candidates must be RematCandidate, got {type(c).__name__}.")
    if c.policy is not None and c.policy not in _POLICIES:
        raise ValueError(
            f"RematCandidate.policy must be None or one of jax.checkpoint_policies {_POLICIES}, "
            f"got {c.policy!r}."
        )
    if not isinstance(c.chunks, int) or isinstance(c.chunks, bool) or c.chunks < 1:
        raise ValueError(f"RematCandidate.chunks must be an int >= 1, got {c.chunks!r}.")


def _sqrt_divisor(n: int) -> int:
    divisors = [d for d in range(2, n) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - math.sqrt(n)), default=1)


def remat_candidates(num_layers: int | None = None) -> tuple[RematCandidate, ...]:
    """The default candidates: none, three per-layer policies, and nested sqrt(L) chunks.

    Args:
        num_layers: Depth of the layer stack; when given and it has a divisor ``c`` with
            ``1 < c < L``, nested candidates with ``c`` nearest ``sqrt(L)`` are added.

    Returns:
        A tuple of :class:`RematCandidate`, the baseline first.

    Example:
        >>> [c.name for c in remat_candidates(16)][-1]
        'nested 4x4, nothing_saveable'
    """
    out = [
        NO_REMAT,
        RematCandidate("nothing_saveable", "nothing_saveable"),
        RematCandidate("dots_saveable", "dots_saveable"),
        RematCandidate("dots_with_no_batch_dims_saveable", "dots_with_no_batch_dims_saveable"),
    ]
    if num_layers is not None:
        c = _sqrt_divisor(int(num_layers))
        if c > 1:
            inner = num_layers // c
            out.append(RematCandidate(f"nested {c}x{inner}, dots_saveable", "dots_saveable", c))
            out.append(
                RematCandidate(f"nested {c}x{inner}, nothing_saveable", "nothing_saveable", c)
            )
    return tuple(out)


def scan_layers(
    layer_fn: Callable[[Any, Any], Any],
    layer_params: Any,
    carry: Any,
    remat: RematCandidate = NO_REMAT,
) -> Any:
    """Apply ``carry = layer_fn(carry, p_l)`` for each layer ``l`` with ``lax.scan``.

    Args:
        layer_fn: One layer, ``(carry, params_of_one_layer) -> carry``.
        layer_params: A pytree whose leaves stack the layers on axis 0 (length ``L``).
        carry: The input of the first layer.
        remat: How to rematerialize (see :class:`RematCandidate`); ``remat.chunks`` must
            divide ``L``.

    Returns:
        The output of the last layer.

    Raises:
        ValueError: If the leaves disagree on ``L`` or ``remat.chunks`` does not divide it.

    Example:
        >>> import jax.numpy as jnp
        >>> ws = jnp.stack([jnp.eye(2) * (i + 1.0) for i in range(4)])
        >>> nested = RematCandidate("n", "nothing_saveable", 2)
        >>> scan_layers(lambda h, w: h @ w, ws, jnp.ones(2), nested).tolist()
        [24.0, 24.0]
    """
    _check_candidate(remat)
    lengths = {leaf.shape[0] for leaf in jax.tree.leaves(layer_params)}
    if len(lengths) != 1:
        raise ValueError(f"layer_params leaves must share one leading length, got {lengths}.")
    (num_layers,) = lengths
    body = remat.wrap(layer_fn)

    def inner(h, stack):
        return lax.scan(lambda h, p: (body(h, p), None), h, stack)[0]

    if remat.chunks == 1:
        return inner(carry, layer_params)
    if num_layers % remat.chunks:
        raise ValueError(
            f"remat.chunks must divide the number of layers {num_layers}, got {remat.chunks}; "
            "pick a divisor (remat_candidates(num_layers) does)."
        )
    chunked = jax.tree.map(
        lambda x: x.reshape(remat.chunks, num_layers // remat.chunks, *x.shape[1:]), layer_params
    )
    # Only the chunk inputs survive the forward pass; each chunk's layers are recomputed once.
    chunk = jax.checkpoint(inner, policy=jax.checkpoint_policies.nothing_saveable)
    return lax.scan(lambda h, stack: (chunk(h, stack), None), carry, chunked)[0]


class CandidateCost(NamedTuple):
    """A candidate and what its compiled gradient program costs."""

    candidate: RematCandidate
    cost: CompiledCost


class RematReport(NamedTuple):
    """Every candidate's measured cost and the chosen one.

    Attributes:
        rows: One :class:`CandidateCost` per candidate, in the order given.
        chosen: Index into ``rows`` of the chosen candidate.
        baseline: Index into ``rows`` of the no-rematerialization baseline.
        flops_bound: The FLOPs bound used, relative to the baseline.
    """

    rows: tuple[CandidateCost, ...]
    chosen: int
    baseline: int
    flops_bound: float

    @property
    def chosen_candidate(self) -> RematCandidate:
        """The chosen :class:`RematCandidate`."""
        return self.rows[self.chosen].candidate

    def memory_reduction(self, index: int | None = None) -> float:
        """``1 - temp(candidate) / temp(baseline)`` for ``index`` (default: the chosen one)."""
        base = self.rows[self.baseline].cost.temp_bytes
        temp = self.rows[self.chosen if index is None else index].cost.temp_bytes
        return 1.0 - temp / base if base else 0.0

    def flops_ratio(self, index: int | None = None) -> float:
        """``flops(candidate) / flops(baseline)`` for ``index`` (default: the chosen one)."""
        row = self.rows[self.chosen if index is None else index]
        return row.cost.flops / self.rows[self.baseline].cost.flops

    def best_reduction(self) -> float:
        """The largest temporary-memory reduction any candidate reached, whatever its FLOPs."""
        return max(self.memory_reduction(i) for i in range(len(self.rows)))

    def table(self) -> str:
        """A plain-text table of the candidates, the chosen one marked ``*``."""
        lines = [f"{'candidate':<40} {'temp MiB':>10} {'reduction':>9} {'FLOPs x':>8}"]
        for i, row in enumerate(self.rows):
            mark = "*" if i == self.chosen else " "
            lines.append(
                f"{mark}{row.candidate.name:<39} {row.cost.temp_bytes / 2**20:>10.3f} "
                f"{self.memory_reduction(i):>9.1%} {self.flops_ratio(i):>8.3f}"
            )
        return "\n".join(lines)


def choose_remat(
    make_loss: Callable[[RematCandidate], Callable[[Any, Any], Any]],
    params: Any,
    args: Any,
    *,
    candidates: Sequence[RematCandidate] | None = None,
    flops_bound: float = 1.35,
) -> RematReport:
    """Compile ``value_and_grad`` of each candidate's loss and choose the leanest affordable one.

    Args:
        make_loss: Builds the loss ``loss(params, args) -> scalar`` for a candidate, usually by
            passing it to :func:`scan_layers`.
        params: Example parameters (arrays or ``jax.ShapeDtypeStruct``; nothing runs).
        args: Example data.
        candidates: Candidates to compare (default :func:`remat_candidates`); the no-remat
            baseline is added if missing.
        flops_bound: Largest allowed ``flops(candidate) / flops(baseline)`` (>= 1).

    Returns:
        A :class:`RematReport`; the chosen candidate has the least temporary memory among those
        with FLOPs within the bound and temporary memory <= the baseline's (ties: fewer FLOPs).

    Raises:
        ValueError: If ``flops_bound < 1`` or a candidate is malformed.
        TypeError: If ``make_loss`` is not callable.

    Example:
        >>> import jax.numpy as jnp
        >>> def make_loss(remat):
        ...     def loss(ws, x):
        ...         return jnp.sum(scan_layers(lambda h, w: jnp.tanh(h @ w), ws, x, remat) ** 2)
        ...     return loss
        >>> ws, x = jnp.ones((8, 16, 16)) / 16, jnp.ones((64, 16))
        >>> full = RematCandidate("per-layer", "nothing_saveable")
        >>> report = choose_remat(make_loss, ws, x, candidates=[NO_REMAT, full])
        >>> print(report.chosen_candidate.name, report.memory_reduction() > 0.3)
        per-layer True
    """
    if not callable(make_loss):
        raise TypeError(f"make_loss must be callable, got {type(make_loss).__name__}.")
    if not isinstance(flops_bound, (int, float)) or not flops_bound >= 1.0:
        raise ValueError(f"flops_bound must be a float >= 1, got {flops_bound!r}.")
    cands = list(remat_candidates() if candidates is None else candidates)
    for c in cands:
        _check_candidate(c)
    if NO_REMAT not in cands:
        cands.insert(0, NO_REMAT)
    rows = []
    for c in cands:
        cost, _ = compile_and_measure(jax.value_and_grad(make_loss(c)), params, args)
        rows.append(CandidateCost(c, cost))
    base = cands.index(NO_REMAT)
    base_cost = rows[base].cost
    affordable = [
        i
        for i, r in enumerate(rows)
        if r.cost.flops <= flops_bound * base_cost.flops
        and r.cost.temp_bytes <= base_cost.temp_bytes
    ]
    chosen = min(affordable, key=lambda i: (rows[i].cost.temp_bytes, rows[i].cost.flops))
    return RematReport(tuple(rows), chosen, base, float(flops_bound))
