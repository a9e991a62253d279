"""A per-parameter learned optimizer: a small MLP applied elementwise, as an optax transform.

The network never outputs a raw step. It outputs, for every scalar parameter, a bounded
log-scale and bounded mixing weights over Adam-normalised directions, so any ``theta`` (even
one meta-trained on short unrolls) yields steps no larger than a fixed multiple of its own
learning rate: far past the training horizon the optimizer behaves like a tuned Adam variant
and cannot blow up. Time enters only through saturating ``tanh(t / s)`` features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Momentum time scales (the first is the gradient itself), Adam's second-moment decay, time
# scales of the saturating step features and the bounds that make every step finite.
MOMENTUM_DECAYS: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
SECOND_MOMENT_DECAY = 0.999
TIME_SCALES: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
EPS = 1e-8
DIRECTION_CLIP = 5.0  # |each normalised direction| <= 5
SCALE_RANGE = 2.0  # per-parameter step multiplier in [e^-2, e^2]
NUM_DIRECTIONS = 1 + len(MOMENTUM_DECAYS)  # gradient + momenta
NUM_FEATURES = NUM_DIRECTIONS + 1 + len(TIME_SCALES)  # directions, tanh(param), time
NUM_OUTPUTS = 1 + NUM_DIRECTIONS  # log-scale, one mixing weight per direction
_ADAM_DIRECTION = 1 + MOMENTUM_DECAYS.index(0.9)


class LearnedOptimizerState(NamedTuple):
    """State of :func:`learned_optimizer`."""

    count: jax.Array  # int32 [], steps taken
    momenta: Any  # params-shaped pytree, leaves (len(MOMENTUM_DECAYS), *leaf.shape)
    second_moment: Any  # params-shaped pytree, EMA of g**2 (decay SECOND_MOMENT_DECAY)
    base_state: Any  # state of the fallback optimizer, updated every step
    fallback_count: jax.Array  # int32 [], steps where the learned update was non-finite


def init_meta_params(
    key: jax.Array,
    *,
    hidden_sizes: Sequence[int] = (32, 32),
    learning_rate: float = 1e-2,
    output_scale: float = 1e-2,
) -> dict[str, jax.Array]:
    """Meta-parameters ``theta`` of the learned optimizer: MLP weights and a log learning rate.

    The last layer starts at ``output_scale`` times its usual size, so an untrained ``theta``
    is (almost exactly) Adam with ``beta1 = 0.9`` and step size ``learning_rate``.

    Args:
        key: PRNG key for the weights.
        hidden_sizes: Widths of the hidden layers (each >= 1; may be empty).
        learning_rate: Initial global step size (> 0); meta-training adapts its logarithm.
        output_scale: Scale of the initial last-layer weights (>= 0).

    Returns:
        A flat dict ``{"log_lr", "w0", "b0", "w1", "b1", ...}`` of float arrays.

    Raises:
        ValueError: If a hidden size is < 1, ``learning_rate <= 0`` or ``output_scale < 0``.

    Example:
        >>> import jax
        >>> theta = init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(8,))
        >>> sorted(theta), theta["w0"].shape[1], round(float(jnp.exp(theta["log_lr"])), 4)
        (['b0', 'b1', 'log_lr', 'w0', 'w1'], 8, 0.01)
    """
    sizes = tuple(hidden_sizes)
    if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in sizes):
        raise ValueError(f"hidden_sizes must be ints >= 1, got {hidden_sizes!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if not output_scale >= 0:
        raise ValueError(f"output_scale must be >= 0, got {output_scale!r}.")
    widths = (NUM_FEATURES, *sizes, NUM_OUTPUTS)
    keys = jax.random.split(key, len(widths) - 1)
    # Strong (not weak) dtypes, so a meta-step's output theta matches its input's types.
    theta = {"log_lr": jnp.full((), math.log(learning_rate), jnp.result_type(float))}
    for i, (k, n_in, n_out) in enumerate(zip(keys, widths[:-1], widths[1:], strict=True)):
        scale = output_scale if i == len(widths) - 2 else 1.0
        theta[f"w{i}"] = scale * jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in)
        theta[f"b{i}"] = jnp.zeros(n_out)
    return theta


def num_layers(theta: dict[str, Any]) -> int:
    """Number of dense layers in ``theta``; raises ValueError if the dict is malformed."""
    if not isinstance(theta, dict) or "log_lr" not in theta or "w0" not in theta:
        got = sorted(theta) if isinstance(theta, dict) else type(theta).__name__
        raise ValueError(
            f"theta must be a dict from init_meta_params with keys log_lr, w0, b0, ...; got {got}."
        )
    n = sum(1 for k in theta if k.startswith("w"))
    expected = {"log_lr"} | {f"{p}{i}" for i in range(n) for p in "wb"}
    if set(theta) != expected:
        raise ValueError(f"theta keys must be {sorted(expected)}, got {sorted(theta)}.")
    first, last = jnp.shape(theta["w0"]), jnp.shape(theta[f"w{n - 1}"])
    if first[0] != NUM_FEATURES or last[-1] != NUM_OUTPUTS:
        raise ValueError(
            f"theta's network must map {NUM_FEATURES} features to {NUM_OUTPUTS} outputs, got "
            f"{first[0]} -> {last[-1]}; build theta with init_meta_params."
        )
    return n


def _mlp(theta, features, n_layers):
    h = features
    for i in range(n_layers):
        h = h @ theta[f"w{i}"].astype(h.dtype) + theta[f"b{i}"].astype(h.dtype)
        if i < n_layers - 1:
            h = jax.nn.relu(h)
    return h


def _leaf_step(theta, n_layers, g, p, m, v, count):
    """Learned update, new momenta and new second moment for one parameter array."""
    decays = jnp.asarray(MOMENTUM_DECAYS, g.dtype).reshape((-1,) + (1,) * g.ndim)
    m = decays * m + (1 - decays) * g
    v = SECOND_MOMENT_DECAY * v + (1 - SECOND_MOMENT_DECAY) * g * g
    t = count.astype(g.dtype)
    # Bias correction as in Adam (Kingma & Ba 2015, Alg. 1) for every time scale.
    m_hat = m / (1 - decays**t)
    rms = jnp.sqrt(v / (1 - SECOND_MOMENT_DECAY**t)) + EPS
    directions = jnp.concatenate([g[None], m_hat], axis=0) / rms
    directions = jnp.clip(directions, -DIRECTION_CLIP, DIRECTION_CLIP)
    time = jnp.tanh(t / jnp.asarray(TIME_SCALES, g.dtype))
    features = jnp.concatenate(
        [
            jnp.moveaxis(directions, 0, -1),
            jnp.tanh(p)[..., None],
            jnp.broadcast_to(time, (*g.shape, len(TIME_SCALES))),
        ],
        axis=-1,
    )
    out = _mlp(theta, features, n_layers)
    scale = jnp.exp(theta["log_lr"].astype(g.dtype) + SCALE_RANGE * jnp.tanh(out[..., 0]))
    mix = jnp.tanh(out[..., 1:])
    direction = directions[_ADAM_DIRECTION] + jnp.sum(mix * jnp.moveaxis(directions, 0, -1), -1)
    return -scale * direction, m, v


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def learned_optimizer(
    theta: dict[str, Any], *, base: optax.GradientTransformation | None = None
) -> optax.GradientTransformationExtraArgs:
    """The learned optimizer defined by meta-parameters ``theta``, as an optax transform.

    For every scalar parameter ``p`` with gradient ``g`` at step ``t`` (1-based) it keeps the
    moments ``m_k = b_k m_k + (1 - b_k) g`` for ``b_k`` in ``MOMENTUM_DECAYS`` and
    ``v = 0.999 v + 0.001 g^2`` (bias-corrected as in Adam), forms the normalised directions
    ``d_0 = g / sqrt(v_hat)``, ``d_k = m_hat_k / sqrt(v_hat)`` (each clipped to ``[-5, 5]``),
    and feeds ``[d_0..d_K, tanh(p), tanh(t / s) for s in TIME_SCALES]`` to an MLP with outputs
    ``(s, a_0..a_K)``. The update is::

        u = -exp(log_lr + 2 tanh(s)) * (d_{0.9} + sum_j tanh(a_j) d_j)

    so ``|u| <= exp(log_lr + 2) * 5 * (K + 2)`` for every ``theta``: Adam (``a = s = 0``) is
    the starting point and the network modulates its step and direction within fixed bounds.
    This is the per-parameter MLP design of Metz et al. (2020, 2022), simplified.

    If any proposed update is non-finite, the whole step uses ``base``'s update instead, the
    learned moments keep their previous values and ``fallback_count`` is incremented.
    ``base`` is updated every step so that its state is warm when it is needed.

    Args:
        theta: Meta-parameters from :func:`init_meta_params` or ``meta_train``.
        base: Fallback transformation (default ``optax.adam(1e-3)``).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` with state :class:`LearnedOptimizerState`.
        ``update`` requires ``params``.

    Raises:
        ValueError: If ``theta`` is malformed, or ``update`` is called without ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> theta = init_meta_params(jax.random.PRNGKey(0), learning_rate=0.1)
        >>> opt = learned_optimizer(theta)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = opt.init(params)
        >>> update = jax.jit(opt.update)
        >>> for _ in range(50):
        ...     updates, state = update(params, state, params)  # grad of |p|^2 / 2
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.max(jnp.abs(params)) < 0.2), int(state.fallback_count)
        (True, 0)

    References:
        Metz, Maheswaranathan, Freeman, Poole, Sohl-Dickstein, "Tasks, stability, architecture,
        and compute: training more effective learned optimizers, and using them to train
        themselves", arXiv:2009.11243 (2020). Metz et al., "VeLO", arXiv:2211.09760 (2022).
    """
    n_layers = num_layers(theta)
    base = optax.with_extra_args_support(optax.adam(1e-3) if base is None else base)
    n_m = len(MOMENTUM_DECAYS)

    def init(params):
        return LearnedOptimizerState(
            count=jnp.zeros([], jnp.int32),
            momenta=jax.tree.map(lambda p: jnp.zeros((n_m, *jnp.shape(p)), p.dtype), params),
            second_moment=jax.tree.map(jnp.zeros_like, params),
            base_state=base.init(params),
            fallback_count=jnp.zeros([], jnp.int32),
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "learned_optimizer.update needs params (the network sees parameter values); "
                "call update(grads, state, params)."
            )
        count = state.count + 1
        base_updates, base_state = base.update(grads, state.base_state, params, **extra_args)
        treedef = jax.tree.structure(grads)
        leaves = [
            _leaf_step(theta, n_layers, g, p, m, v, count)
            for g, p, m, v in zip(
                treedef.flatten_up_to(grads),
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.momenta),
                treedef.flatten_up_to(state.second_moment),
                strict=True,
            )
        ]
        learned, momenta, second = (treedef.unflatten(x) for x in zip(*leaves, strict=True))
        ok = _all_finite(learned)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = LearnedOptimizerState(
            count=count,
            momenta=pick(momenta, state.momenta),
            second_moment=pick(second, state.second_moment),
            base_state=base_state,
            fallback_count=state.fallback_count + (~ok).astype(jnp.int32),
        )
        return pick(learned, base_updates), new_state

    return optax.GradientTransformationExtraArgs(init, update)
