"""Adam, then L-BFGS: one optax transformation that switches phase inside ``jit``.

Also the small driver :func:`transform_loop` shared by :class:`HybridOptimizer` and the NNX
wrapper: a ``lax.while_loop`` over any transformation taking ``value``/``grad``/``value_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from opifex.optimization.core import Status, tree_all_finite, tree_norm, tree_select
from opifex.optimization.second_order.config import HybridOptimizerConfig, LBFGSConfig

ADAM_PHASE = 0
LBFGS_PHASE = 1


class HybridState(NamedTuple):
    """State of :func:`hybrid_adam_lbfgs` (``W``: ``plateau_window``; float: the params' dtype)."""

    adam: optax.OptState  # Adam's state (moments like params, int32 count); frozen after the switch
    lbfgs: optax.OptState  # L-BFGS state; initialised at the switch from the params then
    phase: jax.Array  # int32 [], 0 Adam, 1 L-BFGS
    count: jax.Array  # int32 [], updates taken (both phases)
    switch_step_taken: jax.Array  # int32 [], Adam steps taken before L-BFGS took over; -1 before
    losses: jax.Array  # float [W + 1], ring buffer of the losses seen, slot = count % (W + 1)
    grad_norms: jax.Array  # float [W], ring buffer of the gradient norms, slot = count % W


def _lbfgs_transform(config: LBFGSConfig) -> optax.GradientTransformationExtraArgs:
    # Imported here: ``wrappers`` is the front door of the L-BFGS transform the hybrid reuses.
    from opifex.optimization.second_order.wrappers import create_lbfgs_optimizer

    return create_lbfgs_optimizer(config)


def float_dtype(params) -> jnp.dtype:
    """The common floating dtype of the params' float leaves."""
    floats = [
        jnp.result_type(x)
        for x in jax.tree.leaves(params)
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]
    if not floats:
        raise TypeError("hybrid_adam_lbfgs needs floating-point params; got no float leaves.")
    return jnp.result_type(*floats)


def _cast_like(new, old):
    # Keeps both lax.cond branches type-identical whatever dtypes an inner transform returns.
    return jax.tree.map(lambda n, o: jnp.asarray(n, jnp.result_type(o)), new, old)


def push_history(losses, grad_norms, k, value, grad_norm):
    """Write update ``k``'s loss and gradient norm into the ring buffers (sizes W + 1, W)."""
    window = grad_norms.shape[0]
    return losses.at[k % (window + 1)].set(value), grad_norms.at[k % window].set(grad_norm)


def should_switch(
    k,
    losses,
    grad_norms,
    *,
    switch_criterion: str,
    switch_step: int,
    min_adam_steps: int,
    plateau_threshold: float,
    gradient_variance_threshold: float,
) -> jax.Array:
    """Whether update ``k`` (``k`` Adam steps taken, buffers already holding step ``k``) is
    the first L-BFGS step; see :func:`hybrid_adam_lbfgs` for the rules."""
    window = grad_norms.shape[0]
    forced = k >= switch_step
    if switch_criterion == "step":
        return forced
    allowed = k >= min_adam_steps
    if switch_criterion == "plateau":
        old, new = losses[(k + 1) % (window + 1)], losses[k % (window + 1)]
        scale = jnp.maximum(jnp.abs(old), jnp.finfo(losses.dtype).tiny)
        flat = (k >= window) & ((old - new) / scale < plateau_threshold)
    else:
        mean = jnp.mean(grad_norms)
        safe_mean = jnp.where(mean > 0, mean, 1)
        cv = jnp.where(mean > 0, jnp.std(grad_norms) / safe_mean, 0)
        flat = (k + 1 >= window) & (cv < gradient_variance_threshold)
    return forced | (allowed & flat)


def hybrid_adam_lbfgs(
    *,
    adam_learning_rate: float = 1e-3,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    switch_criterion: str = "plateau",
    switch_step: int = 1000,
    min_adam_steps: int = 10,
    plateau_window: int = 50,
    plateau_threshold: float = 1e-3,
    gradient_variance_threshold: float = 0.1,
    lbfgs: LBFGSConfig | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam until a switch test passes, then L-BFGS, as one ``GradientTransformationExtraArgs``.

    The keyword arguments are the fields of :class:`HybridOptimizerConfig` (validated by it).
    Update ``k`` (``k`` Adam steps taken so far) first records the loss ``f(x_k)`` and the
    gradient norm, then switches to L-BFGS when

    - ``"step"``: ``k >= switch_step``;
    - ``"plateau"``: ``k >= min_adam_steps`` and the relative improvement
      ``(f(x_{k-W}) - f(x_k)) / |f(x_{k-W})| < plateau_threshold`` with ``W = plateau_window``
      (a net increase counts as a plateau), or ``k >= switch_step``;
    - ``"gradient_variance"``: ``k >= min_adam_steps`` and the coefficient of variation
      ``std/mean`` of the last ``W`` gradient norms is below ``gradient_variance_threshold``,
      or ``k >= switch_step``.

    Update ``k`` is then already an L-BFGS step, from a fresh L-BFGS state at ``x_k``; the
    phase never goes back. The test and both phases are traced once (``lax.cond``), so a jitted
    training step compiles once for the whole run. The Adam phase is exactly ``optax.adam``
    and uses ``grads`` only; the L-BFGS phase is :func:`create_lbfgs_optimizer`'s transform,
    whose line search needs ``value``, ``grad`` and ``value_fn`` (Kingma & Ba 2015; Nocedal &
    Wright, Alg. 7.4; the two-phase recipe of physics-informed training, e.g. Raissi et al.
    2019). ``optax.value_and_grad_from_state`` works on the state (it reuses the L-BFGS line
    search's last value once in the L-BFGS phase).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
        value, grad=None, value_fn)`` needs ``params`` (``grad`` defaults to ``grads``).

    Raises:
        ValueError: If a field is invalid (message from :class:`HybridOptimizerConfig`).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from opifex.optimization.second_order._hybrid import hybrid_adam_lbfgs
        >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
        >>> tx = hybrid_adam_lbfgs(switch_criterion="step", switch_step=5, adam_learning_rate=0.1)
        >>> @jax.jit
        ... def train_step(x, state):
        ...     value, grad = jax.value_and_grad(f)(x)
        ...     updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=f)
        ...     return optax.apply_updates(x, updates), state
        >>> x = jnp.zeros(2); state = tx.init(x)
        >>> for _ in range(8):
        ...     x, state = train_step(x, state)
        >>> int(state.switch_step_taken), x.round(6).tolist()
        (5, [3.0, 3.0])
    """
    config = HybridOptimizerConfig(
        adam_learning_rate=adam_learning_rate,
        adam_b1=adam_b1,
        adam_b2=adam_b2,
        adam_eps=adam_eps,
        switch_criterion=switch_criterion,
        switch_step=switch_step,
        min_adam_steps=min_adam_steps,
        plateau_window=plateau_window,
        plateau_threshold=plateau_threshold,
        gradient_variance_threshold=gradient_variance_threshold,
        lbfgs=LBFGSConfig() if lbfgs is None else lbfgs,
    )
    adam = optax.adam(adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=adam_eps)
    lbfgs_tx = _lbfgs_transform(config.lbfgs)
    window = plateau_window
    switch_rule = {
        "switch_criterion": switch_criterion,
        "switch_step": switch_step,
        "min_adam_steps": min_adam_steps,
        "plateau_threshold": plateau_threshold,
        "gradient_variance_threshold": gradient_variance_threshold,
    }

    def init_fn(params) -> HybridState:
        dtype = float_dtype(params)
        return HybridState(
            adam=adam.init(params),
            lbfgs=lbfgs_tx.init(params),
            phase=jnp.asarray(ADAM_PHASE, jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            switch_step_taken=jnp.asarray(-1, jnp.int32),
            losses=jnp.zeros(window + 1, dtype),
            grad_norms=jnp.zeros(window, dtype),
        )

    def update_fn(
        updates, state: HybridState, params=None, *, value, grad=None, value_fn, **extra_args: Any
    ):
        del extra_args
        if params is None:
            raise ValueError("hybrid_adam_lbfgs.update needs `params` (the L-BFGS line search).")
        if jnp.shape(value) != ():
            raise ValueError(f"value must be a scalar loss, got shape {jnp.shape(value)}.")
        grad = updates if grad is None else grad
        k = state.count
        in_adam = state.phase == ADAM_PHASE
        dtype = state.losses.dtype
        losses, grad_norms = push_history(
            state.losses,
            state.grad_norms,
            k,
            jnp.asarray(value, dtype),
            tree_norm(updates).astype(dtype),
        )
        losses = jnp.where(in_adam, losses, state.losses)
        grad_norms = jnp.where(in_adam, grad_norms, state.grad_norms)
        switch = in_adam & should_switch(k, losses, grad_norms, **switch_rule)
        phase = jnp.where(in_adam & ~switch, ADAM_PHASE, LBFGS_PHASE).astype(jnp.int32)

        def adam_step(_):
            new_updates, adam_state = adam.update(updates, state.adam, params)
            return _cast_like(new_updates, params), _cast_like(adam_state, state.adam), state.lbfgs

        def lbfgs_step(_):
            fresh = _cast_like(lbfgs_tx.init(params), state.lbfgs)
            inner = tree_select(switch, fresh, state.lbfgs)
            new_updates, inner = lbfgs_tx.update(
                updates, inner, params, value=value, grad=grad, value_fn=value_fn
            )
            return _cast_like(new_updates, params), state.adam, _cast_like(inner, state.lbfgs)

        new_updates, adam_state, lbfgs_state = jax.lax.cond(
            phase == LBFGS_PHASE, lbfgs_step, adam_step, None
        )
        new_state = HybridState(
            adam=adam_state,
            lbfgs=lbfgs_state,
            phase=phase,
            count=k + 1,
            switch_step_taken=jnp.where(switch, k, state.switch_step_taken).astype(jnp.int32),
            losses=losses,
            grad_norms=grad_norms,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class LoopResult(NamedTuple):
    """What :func:`transform_loop` returns (all arrays; ``N`` is ``num_steps``)."""

    params: Any  # final iterate (the last finite one on NONFINITE)
    opt_state: Any  # transformation state after the last update
    aux: Any  # evaluator's auxiliary state (e.g. NNX non-parameter state) at the end
    value: jax.Array  # float [], objective at params
    losses: jax.Array  # float [N + 1], f(x_0), ..., f(x_n) then NaN padding
    num_steps: jax.Array  # int32 [], updates applied (n)
    status: jax.Array  # int32 [], Status code


Evaluate = Callable[[Any, Any, Any], tuple[jax.Array, Any, Any, Callable]]


def transform_loop(
    tx: optax.GradientTransformationExtraArgs,
    evaluate: Evaluate,
    params,
    aux,
    opt_state,
    *,
    num_steps: int,
    gtol: float,
    ftol: float,
    phase_fn: Callable[[Any], jax.Array] | None = None,
) -> LoopResult:
    """Apply ``tx`` up to ``num_steps`` times in one ``lax.while_loop`` (call it under ``jit``).

    Args:
        tx: A transformation taking ``value``, ``grad`` and ``value_fn`` extra arguments.
        evaluate: ``(params, aux, opt_state) -> (value, grad, new_aux, value_fn)``: the
            objective and gradient at ``params``, the auxiliary state after this evaluation,
            and the objective as a pure function of params for the line search.
        params: Initial iterate.
        aux: Initial auxiliary state (any pytree, ``()`` if none).
        opt_state: ``tx``'s state.
        num_steps: Update budget (static).
        gtol: Converged when ``max|grad| <= gtol`` at the current iterate.
        ftol: Converged when the relative decrease ``(f_{k-1} - f_k) / max(|f_{k-1}|, |f_k|, 1)``
            is ``<= ftol`` in the L-BFGS phase; ``0`` disables the test.
        phase_fn: ``opt_state -> bool`` whether the ftol test is active (default: always).

    Returns:
        A :class:`LoopResult`; status CONVERGED, MAX_STEPS or NONFINITE.
    """
    running = jnp.int32(Status.RUNNING)
    value_dtype = jax.eval_shape(lambda: evaluate(params, aux, opt_state)[0]).dtype
    nan = jnp.asarray(jnp.nan, value_dtype)
    losses = jnp.full(num_steps + 1, jnp.nan, value_dtype)

    def cond(carry):
        return carry[7] == running

    def body(carry):
        k, x, prev_x, a, s, prev_value, losses, _, _ = carry
        value, grad, new_aux, value_fn = evaluate(x, a, s)
        finite = jnp.isfinite(value) & tree_all_finite(grad)
        gmax = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grad)]))
        done = gmax <= gtol
        if ftol > 0:
            scale = jnp.maximum(jnp.maximum(jnp.abs(prev_value), jnp.abs(value)), 1.0)
            active = True if phase_fn is None else phase_fn(s)
            done = done | ((k > 0) & active & ((prev_value - value) <= ftol * scale))
        status = jnp.select(
            [~finite, done, k == num_steps],
            [jnp.int32(Status.NONFINITE), jnp.int32(Status.CONVERGED), jnp.int32(Status.MAX_STEPS)],
            running,
        )
        losses = losses.at[k].set(jnp.where(finite, value, nan))

        def advance(_):
            updates, s_new = tx.update(grad, s, x, value=value, grad=grad, value_fn=value_fn)
            return optax.apply_updates(x, updates), s_new, new_aux

        x_new, s_new, a_new = jax.lax.cond(status == running, advance, lambda _: (x, s, a), None)
        # On a non-finite evaluation return the previous iterate, whose value was finite.
        x_out = tree_select(finite, x_new, prev_x)
        value_out = jnp.where(finite, value, prev_value)
        return k + 1, x_out, x, a_new, s_new, value_out, losses, status, k

    init = (jnp.int32(0), params, params, aux, opt_state, nan, losses, running, jnp.int32(0))
    _, x, _, a, s, value, losses, status, k = jax.lax.while_loop(cond, body, init)
    # k is the index of the last evaluation: x_k, or x_{k-1} when it was not finite.
    n = jnp.where(status == Status.NONFINITE, jnp.maximum(k - 1, 0), k).astype(jnp.int32)
    return LoopResult(x, s, a, value, losses, n, status)
