"""Loss balancing for physics-informed training, as optax gradient transformations.

A physics-informed loss is a sum of K terms (PDE residual, boundary, initial, data, ...) whose
gradients can differ by orders of magnitude. Each transformation here is an
``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None, *,
term_losses, **extra)`` takes ``updates`` = the per-term gradients stacked on a leading axis of
size K (every leaf ``(K, *param_leaf_shape)``, as :func:`term_gradients` returns them) and
``term_losses`` = the ``(K,)`` term losses, and returns the combined gradient
``sum_i w_i g_i`` (leaves shaped like params) with a state whose ``weights`` field holds the
``(K,)`` weights used. So ``optax.chain(relobralo(3), optax.adam(1e-3))`` is a complete
optimizer. Weights carry no gradient. Moving averages follow one convention throughout:
``lambda <- alpha * lambda_old + (1 - alpha) * lambda_new`` (``alpha`` weighs the old value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from opifex.optimization.scientific_integration._loss_balancing_causal import (
    causal_loss,
    causal_weights,
)
from opifex.optimization.scientific_integration._loss_balancing_ntk import ntk_trace
from opifex.optimization.scientific_integration._loss_balancing_utils import (
    check_int_at_least,
    check_num_terms,
    check_stacked,
    check_unit_interval,
    check_vector,
    float_dtype,
    per_term_abs_stats,
    weighted_sum,
)

__all__ = [
    "FixedWeightsState",
    "GradNormAnnealingState",
    "NTKWeightsState",
    "ReLoBRaLoState",
    "causal_loss",
    "causal_weights",
    "fixed_weights",
    "grad_norm_annealing",
    "ntk_trace",
    "ntk_weights",
    "relobralo",
    "term_gradients",
]


def term_gradients(
    term_losses_fn: Callable[[Any, Any], jax.Array], params, args
) -> tuple[jax.Array, Any]:
    """Term losses and their stacked gradients in one forward pass.

    Args:
        term_losses_fn: ``term_losses_fn(params, args) -> (K,)`` vector of term losses.
        params: Pytree of parameters.
        args: Data passed through to ``term_losses_fn``.

    Returns:
        ``(term_losses, grads)``: the ``(K,)`` losses and a pytree like params whose every leaf
        has shape ``(K, *leaf_shape)`` (``jax.jacrev`` of the loss vector).

    Raises:
        ValueError: If ``term_losses_fn`` does not return a 1-D vector.

    Example:
        >>> import jax.numpy as jnp
        >>> fn = lambda x, a: jnp.stack([jnp.sum((x - a) ** 2), jnp.sum(x**2)])
        >>> losses, grads = term_gradients(fn, jnp.array([1.0, 2.0]), 1.0)
        >>> print(losses.tolist(), grads.tolist())
        [1.0, 5.0] [[0.0, 2.0], [2.0, 4.0]]
    """
    out = jax.eval_shape(term_losses_fn, params, args)
    if not hasattr(out, "shape") or len(out.shape) != 1:
        raise ValueError(
            "term_losses_fn must return a 1-D vector of K term losses, got "
            f"{getattr(out, 'shape', type(out))}; stack the terms with jnp.stack."
        )

    def with_value(p):
        losses = term_losses_fn(p, args)
        return losses, losses

    grads, losses = jax.jacrev(with_value, has_aux=True)(params)
    return losses, grads


class FixedWeightsState(NamedTuple):
    """State of :func:`fixed_weights`."""

    weights: jax.Array  # float [K], the constant weights


def fixed_weights(weights: ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Constant weights, the baseline: ``update = sum_i w_i g_i``.

    Args:
        weights: ``(K,)`` weights, one per loss term.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``term_losses`` is optional (its shape is
        checked when given).

    Raises:
        ValueError: If ``weights`` is not a non-empty 1-D vector.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = fixed_weights([1.0, 0.5])
        >>> grads = jnp.array([[2.0, 0.0], [0.0, 4.0]])
        >>> out, _ = tx.update(grads, tx.init(jnp.zeros(2)))
        >>> print(out.tolist())
        [2.0, 2.0]
    """
    w = jnp.asarray(weights)
    if w.ndim != 1 or w.shape[0] < 1:
        raise ValueError(f"weights must be a non-empty 1-D vector, got shape {w.shape}.")
    k = w.shape[0]

    def init(params):
        return FixedWeightsState(weights=w.astype(float_dtype(params)))

    def update(updates, state, params=None, *, term_losses=None, **extra):
        del extra
        check_stacked(updates, k, params)
        if term_losses is not None:
            check_vector("term_losses", term_losses, k)
        return weighted_sum(updates, state.weights), state

    return optax.GradientTransformationExtraArgs(init, update)


class GradNormAnnealingState(NamedTuple):
    """State of :func:`grad_norm_annealing`."""

    count: jax.Array  # int32 [], updates taken
    weights: jax.Array  # float [K], current weights (reference term fixed at 1)


def grad_norm_annealing(
    num_terms: int, *, reference: int = 0, alpha: float = 0.9, update_every: int = 1
) -> optax.GradientTransformationExtraArgs:
    """Learning-rate annealing by gradient statistics (Wang, Teng & Perdikaris 2021, Alg. 1).

    Every ``update_every`` steps (the first included; weights are kept in between)::

        lambda_hat_i = max_theta |g_ref| / mean_theta |g_i|     (over all parameter scalars)
        lambda_i    <- alpha * lambda_i + (1 - alpha) * lambda_hat_i,   lambda_ref = 1

    then ``update = sum_i lambda_i g_i`` with the new weights. Weights start at 1. Note the
    convention: the paper's ``alpha = 0.1`` weighs the *new* estimate, ours weighs the *old*
    value, so the paper's setting is our ``alpha = 0.9`` (the default). A term whose mean
    gradient (or the reference's max gradient) is zero keeps its weight.

    Args:
        num_terms: Number of loss terms K (>= 1).
        reference: Index of the reference term (the PDE residual in the paper).
        alpha: Weight of the old value in the moving average, in [0, 1).
        update_every: Recompute the weights every this many steps (>= 1).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``term_losses`` is optional.

    Raises:
        ValueError: On a bad argument.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = grad_norm_annealing(2, alpha=0.0)
        >>> grads = jnp.array([[4.0, -2.0], [0.5, 0.5]])
        >>> out, state = tx.update(grads, tx.init(jnp.zeros(2)))
        >>> print(state.weights.tolist(), out.tolist())
        [1.0, 8.0] [8.0, 2.0]

    References:
        S. Wang, Y. Teng, P. Perdikaris, "Understanding and mitigating gradient flow
        pathologies in physics-informed neural networks", SIAM J. Sci. Comput. 43 (2021).
    """
    k = check_num_terms(num_terms)
    ref = check_int_at_least("reference", reference, 0)
    if ref >= k:
        raise ValueError(f"reference must be a term index in [0, {k}), got {ref}.")
    alpha = check_unit_interval("alpha", alpha, closed=False)
    every = check_int_at_least("update_every", update_every, 1)

    def init(params):
        return GradNormAnnealingState(
            count=jnp.zeros((), jnp.int32), weights=jnp.ones((k,), float_dtype(params))
        )

    def update(updates, state, params=None, *, term_losses=None, **extra):
        del extra
        check_stacked(updates, k, params)
        if term_losses is not None:
            check_vector("term_losses", term_losses, k)
        old = state.weights
        abs_max, abs_mean = jax.lax.stop_gradient(per_term_abs_stats(updates))
        abs_max, abs_mean = abs_max.astype(old.dtype), abs_mean.astype(old.dtype)
        ok = (abs_mean > 0) & (abs_max[ref] > 0)
        hat = jnp.where(ok, abs_max[ref] / jnp.where(ok, abs_mean, 1), old)
        new = (alpha * old + (1 - alpha) * hat).at[ref].set(1)
        weights = jnp.where(state.count % every == 0, new, old)
        new_state = GradNormAnnealingState(count=state.count + 1, weights=weights)
        return weighted_sum(updates, weights), new_state

    return optax.GradientTransformationExtraArgs(init, update)


class ReLoBRaLoState(NamedTuple):
    """State of :func:`relobralo`."""

    count: jax.Array  # int32 [], updates taken
    weights: jax.Array  # float [K], current weights
    initial_losses: jax.Array  # float [K], L(0), the losses seen at the first update
    previous_losses: jax.Array  # float [K], L(t-1), the losses seen at the last update
    key: jax.Array  # uint32 [2], PRNG key for the Bernoulli "saudade" draw rho


def _balance(losses, reference, temperature):
    """``K * softmax(L_i / (T * L_ref_i))``; a zero reference loss counts as unchanged."""
    nonzero = reference != 0
    ratio = jnp.where(nonzero, losses / jnp.where(nonzero, reference, 1), 1)
    return losses.shape[0] * jax.nn.softmax(ratio / temperature)


def relobralo(
    num_terms: int,
    *,
    alpha: float = 0.999,
    temperature: float = 0.1,
    expected_rho: float = 0.999,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Relative Loss Balancing with Random Lookback (ReLoBRaLo; Bischof & Kraus 2021).

    With ``bal(t, t') = K * softmax_i(L_i(t) / (T * L_i(t')))``::

        lambda(t) = alpha * (rho * lambda(t-1) + (1 - rho) * bal(t, 0))
                    + (1 - alpha) * bal(t, t-1),          rho ~ Bernoulli(expected_rho)

    then ``update = sum_i lambda_i(t) g_i``. At the first update there is no history: the
    weights stay 1 and ``L(0)`` is recorded. ``rho`` is drawn from a PRNG key kept in the
    state (one split per update), so a run is reproducible by ``seed``. A term whose
    reference loss ``L_i(t')`` is exactly 0 counts as unchanged (ratio 1).

    Args:
        num_terms: Number of loss terms K (>= 1).
        alpha: Weight of the history in the moving average, in [0, 1).
        temperature: Softmax temperature T (> 0).
        expected_rho: Probability that rho = 1 (keep the history; else look back to
            ``L(0)``), in [0, 1].
        seed: Seed of the PRNG key for rho.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``term_losses``.

    Raises:
        ValueError: On a bad argument.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = relobralo(2, alpha=0.0)
        >>> state = tx.init(jnp.zeros(2))
        >>> grads = jnp.eye(2)
        >>> _, state = tx.update(grads, state, term_losses=jnp.array([1.0, 1.0]))
        >>> _, state = tx.update(grads, state, term_losses=jnp.array([1.0, 0.9]))
        >>> print([round(w, 3) for w in state.weights.tolist()])
        [1.462, 0.538]

    References:
        R. Bischof, M. Kraus, "Multi-objective loss balancing for physics-informed deep
        learning", arXiv:2110.09813 (2021).
    """
    k = check_num_terms(num_terms)
    alpha = check_unit_interval("alpha", alpha, closed=False)
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    temperature = float(temperature)
    expected_rho = check_unit_interval("expected_rho", expected_rho, closed=True)
    seed = check_int_at_least("seed", seed, 0)

    def init(params):
        dtype = float_dtype(params)
        return ReLoBRaLoState(
            count=jnp.zeros((), jnp.int32),
            weights=jnp.ones((k,), dtype),
            initial_losses=jnp.zeros((k,), dtype),
            previous_losses=jnp.zeros((k,), dtype),
            key=jax.random.PRNGKey(seed),
        )

    def update(updates, state, params=None, *, term_losses, **extra):
        del extra
        check_stacked(updates, k, params)
        dtype = state.weights.dtype
        losses = jax.lax.stop_gradient(check_vector("term_losses", term_losses, k)).astype(dtype)
        key, sub = jax.random.split(state.key)
        rho = jax.random.bernoulli(sub, expected_rho).astype(dtype)
        first = state.count == 0
        initial = jnp.where(first, losses, state.initial_losses)
        history = rho * state.weights + (1 - rho) * _balance(losses, initial, temperature)
        recent = _balance(losses, state.previous_losses, temperature)
        weights = jnp.where(first, state.weights, alpha * history + (1 - alpha) * recent)
        new_state = ReLoBRaLoState(
            count=state.count + 1,
            weights=weights,
            initial_losses=initial,
            previous_losses=losses,
            key=key,
        )
        return weighted_sum(updates, weights), new_state

    return optax.GradientTransformationExtraArgs(init, update)


class NTKWeightsState(NamedTuple):
    """State of :func:`ntk_weights`."""

    count: jax.Array  # int32 [], updates taken
    weights: jax.Array  # float [K], current weights


def ntk_weights(
    num_terms: int, *, alpha: float = 0.0, update_every: int = 1
) -> optax.GradientTransformationExtraArgs:
    """Weights from the neural tangent kernel's traces (Wang, Yu & Perdikaris 2022, Alg. 1).

    ``update`` takes an extra keyword ``ntk_traces``, the ``(K,)`` traces ``tr(K_i) =
    ||J_i||_F^2`` of each term's residual Jacobian (see :func:`ntk_trace`). Every
    ``update_every`` steps (the first included; weights are kept in between)::

        lambda_hat_i = sum_k tr(K_k) / tr(K_i)
        lambda_i    <- alpha * lambda_i + (1 - alpha) * lambda_hat_i

    then ``update = sum_i lambda_i g_i``. Weights start at 1; a term with a zero trace keeps
    its weight. ``ntk_traces`` must be passed at every update (its values are ignored on steps
    that keep the weights, so the caller may pass the last traces there). Traces are
    unnormalised sums over collocation points, as in the paper; divide each by its number of
    points first if the term losses are means over differently sized point sets and that is
    the balance wanted.

    Args:
        num_terms: Number of loss terms K (>= 1).
        alpha: Weight of the old value in the moving average, in [0, 1).
        update_every: Recompute the weights every this many steps (>= 1).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``ntk_traces``.

    Raises:
        ValueError: On a bad argument.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = ntk_weights(2)
        >>> out, state = tx.update(jnp.eye(2), tx.init(jnp.zeros(2)),
        ...                        ntk_traces=jnp.array([3.0, 1.0]))
        >>> print([round(w, 3) for w in state.weights.tolist()])
        [1.333, 4.0]

    References:
        S. Wang, X. Yu, P. Perdikaris, "When and why PINNs fail to train: A neural tangent
        kernel perspective", J. Comput. Phys. 449 (2022).
    """
    k = check_num_terms(num_terms)
    alpha = check_unit_interval("alpha", alpha, closed=False)
    every = check_int_at_least("update_every", update_every, 1)

    def init(params):
        return NTKWeightsState(
            count=jnp.zeros((), jnp.int32), weights=jnp.ones((k,), float_dtype(params))
        )

    def update(updates, state, params=None, *, ntk_traces, term_losses=None, **extra):
        del extra
        check_stacked(updates, k, params)
        if term_losses is not None:
            check_vector("term_losses", term_losses, k)
        old = state.weights
        traces = jax.lax.stop_gradient(check_vector("ntk_traces", ntk_traces, k)).astype(old.dtype)
        ok = traces > 0
        hat = jnp.where(ok, jnp.sum(traces) / jnp.where(ok, traces, 1), old)
        new = alpha * old + (1 - alpha) * hat
        weights = jnp.where(state.count % every == 0, new, old)
        new_state = NTKWeightsState(count=state.count + 1, weights=weights)
        return weighted_sum(updates, weights), new_state

    return optax.GradientTransformationExtraArgs(init, update)
