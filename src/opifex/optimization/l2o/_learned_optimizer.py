"""A per-parameter learned optimizer: a small MLP applied elementwise, as an optax transform.

The network never outputs a raw step. It outputs, for every scalar parameter, a bounded
log-scale and bounded mixing weights over normalised short-memory directions, so any
``theta`` (even one meta-trained on short unrolls) yields steps no larger than a fixed
multiple of its own learning rate. Two choices keep it converging far past the training
horizon (after the saturating ``tanh(t / s)`` time features have stopped changing):

- the step is built from the gradient and momenta of time scale <= 10 steps only; a
  direction with a long memory (decay 0.99, 0.999) would add a mode of the iteration that
  decays no faster than that memory and sets a floor under the loss. The long momenta are
  inputs of the network, not directions of the step.
- the normaliser is the running maximum of Adam's bias-corrected second moment (as in
  AMSGrad), so the effective step size never grows as old large gradients are forgotten:
  a step size stable at the horizon stays stable after it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Momentum time scales (inputs), how many of them (shortest first) are step directions,
# Adam's second-moment decay, time scales of the saturating step features and the bounds
# that make every step finite.
MOMENTUM_DECAYS: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
NUM_STEP_MOMENTA = 2  # decays 0.5 and 0.9: memories <= 10 steps
SECOND_MOMENT_DECAY = 0.999
TIME_SCALES: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
EPS = 1e-8
DIRECTION_CLIP = 5.0  # |each normalised direction| <= 5
SCALE_RANGE = 2.0  # per-parameter step multiplier in [e^-2, e^2]
NUM_DIRECTIONS = 1 + NUM_STEP_MOMENTA  # gradient + short momenta
NUM_FEATURES = 1 + len(MOMENTUM_DECAYS) + 1 + len(TIME_SCALES)  # g, momenta, tanh(p), time
NUM_OUTPUTS = 1 + NUM_DIRECTIONS  # log-scale, one mixing weight per direction
_ADAM_DIRECTION = 1 + MOMENTUM_DECAYS.index(0.9)


class LearnedOptimizerState(NamedTuple):
    """State of :func:`learned_optimizer`."""

    count: jax.Array  # int32 [], steps taken
    momenta: Any  # params-shaped pytree, leaves (len(MOMENTUM_DECAYS), *leaf.shape)
    second_moment: Any  # params-shaped pytree, EMA of g**2 (decay SECOND_MOMENT_DECAY)
    max_second_moment: Any  # params-shaped pytree, running max of the bias-corrected EMA
    base_state: Any  # state of the fallback optimizer, updated every step
    fallback_count: jax.Array  # int32 [], steps where the learned update was non-finite


def check_network_args(
    hidden_sizes: Sequence[int], learning_rate: float, output_scale: float = 1e-2
) -> tuple[int, ...]:
    """Validate :func:`init_meta_params`' arguments (host-side); return the widths tuple."""
    sizes = tuple(hidden_sizes)
    if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in sizes):
        raise ValueError(f"hidden_sizes must be ints >= 1, got {hidden_sizes!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if not output_scale >= 0:
        raise ValueError(f"output_scale must be >= 0, got {output_scale!r}.")
    return sizes


def init_meta_params(
    key: jax.Array,
    *,
    hidden_sizes: Sequence[int] = (32, 32),
    learning_rate: float = 1e-2,
    output_scale: float = 1e-2,
) -> dict[str, jax.Array]:
    """Meta-parameters ``theta`` of the learned optimizer: MLP weights and a log learning rate.

    The last layer starts at ``output_scale`` times its usual size, so an untrained ``theta``
    is (almost exactly) AMSGrad with ``beta1 = 0.9`` and step size ``learning_rate``. The
    weights are LeCun-normal draws of a numpy generator seeded by ``key`` (host-side: call it
    outside ``jit``); the same key gives the same ``theta``.

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
    sizes = check_network_args(hidden_sizes, learning_rate, output_scale)
    widths = (NUM_FEATURES, *sizes, NUM_OUTPUTS)
    # The weights are drawn on the host from a generator seeded by the key: a device draw
    # would compile a Threefry hash and a dozen eager ops for every network shape.
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rng = np.random.default_rng(np.asarray(key, np.uint32).ravel())
    dtype = jnp.result_type(float)  # float64 under jax_enable_x64, float32 otherwise
    theta = {"log_lr": jnp.asarray(math.log(learning_rate), dtype)}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        scale = output_scale if i == len(widths) - 2 else 1.0
        w = scale * rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)
        theta[f"w{i}"] = jnp.asarray(w, dtype)
        theta[f"b{i}"] = jnp.asarray(np.zeros(n_out), dtype)
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


def _leaf_step(theta, n_layers, g, p, m, v, v_max, count):
    """Learned update and new moments for one parameter array."""
    decays = jnp.asarray(MOMENTUM_DECAYS, g.dtype).reshape((-1,) + (1,) * g.ndim)
    m = decays * m + (1 - decays) * g
    v = SECOND_MOMENT_DECAY * v + (1 - SECOND_MOMENT_DECAY) * g * g
    t = count.astype(g.dtype)
    # Bias correction as in Adam (Kingma & Ba 2015, Alg. 1) for every time scale; the
    # normaliser is the running max of v_hat (AMSGrad, Reddi et al. 2018).
    m_hat = m / (1 - decays**t)
    v_max = jnp.maximum(v_max, v / (1 - SECOND_MOMENT_DECAY**t))
    directions = jnp.concatenate([g[None], m_hat], axis=0) / (jnp.sqrt(v_max) + EPS)
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
    steps = jnp.moveaxis(directions[:NUM_DIRECTIONS], 0, -1)
    direction = directions[_ADAM_DIRECTION] + jnp.sum(mix * steps, -1)
    return -scale * direction, m, v, v_max


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def learned_optimizer(
    theta: dict[str, Any], *, base: optax.GradientTransformation | None = None
) -> optax.GradientTransformationExtraArgs:
    """The learned optimizer defined by meta-parameters ``theta``, as an optax transform.

    For every scalar parameter ``p`` with gradient ``g`` at step ``t`` (1-based) it keeps the
    moments ``m_k = b_k m_k + (1 - b_k) g`` for ``b_k`` in ``MOMENTUM_DECAYS`` (0.5, 0.9,
    0.99, 0.999) and ``v = 0.999 v + 0.001 g^2``, bias-corrected as in Adam, with the running
    maximum ``r = max(r, v_hat)`` as in AMSGrad. It forms the normalised directions
    ``d_0 = g / sqrt(r)``, ``d_k = m_hat_k / sqrt(r)`` (each clipped to ``[-5, 5]``) and feeds
    ``[d_0..d_4, tanh(p), tanh(t / s) for s in TIME_SCALES]`` to an MLP with outputs
    ``(s, a_0, a_1, a_2)``. The update mixes only the short-memory directions
    (gradient, decays 0.5 and 0.9)::

        u = -exp(log_lr + 2 tanh(s)) * (d_{0.9} + sum_{j <= 2} tanh(a_j) d_j)

    so ``|u| <= exp(log_lr + 2) * 5 * 4`` for every ``theta``: AMSGrad with ``beta1 = 0.9``
    (``a = s = 0``) is the starting point and the network modulates its step and direction
    within fixed bounds. This is the per-parameter MLP design of Metz et al. (2020, 2022),
    simplified; the module docstring says why long momenta are inputs only.

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
            max_second_moment=jax.tree.map(jnp.zeros_like, params),
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
            _leaf_step(theta, n_layers, *args, count)
            for args in zip(
                treedef.flatten_up_to(grads),
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.momenta),
                treedef.flatten_up_to(state.second_moment),
                treedef.flatten_up_to(state.max_second_moment),
                strict=True,
            )
        ]
        learned, momenta, second, second_max = (
            treedef.unflatten(x) for x in zip(*leaves, strict=True)
        )
        ok = _all_finite(learned)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = LearnedOptimizerState(
            count=count,
            momenta=pick(momenta, state.momenta),
            second_moment=pick(second, state.second_moment),
            max_second_moment=pick(second_max, state.max_second_moment),
            base_state=base_state,
            fallback_count=state.fallback_count + (~ok).astype(jnp.int32),
        )
        return pick(learned, base_updates), new_state

    return optax.GradientTransformationExtraArgs(init, update)
