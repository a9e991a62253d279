"""An optax wrapper that skips updates containing NaN or Inf and counts them.

Written here rather than as a thin shell around ``optax.apply_if_finite`` because that wrapper
(optax 0.2.x) checks only the *incoming* gradients, so an inner transformation that overflows on
finite gradients (e.g. Adam's ``m / sqrt(v)`` with ``eps = 0`` and a zero second moment) still
writes NaN into the parameters; it also requires an integer limit (no "never give up") and
names its counters differently. This wrapper checks both the incoming gradients and the inner
transformation's outgoing updates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`."""

    skipped: jax.Array  # int32 [], total updates skipped since init (never reset)
    consecutive: jax.Array  # int32 [], non-finite steps in a row (0 after a finite step)
    inner_state: Any  # state of the wrapped transformation, unchanged by a skipped step


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def skip_nonfinite(
    inner: optax.GradientTransformation, *, max_consecutive: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so that a step with non-finite gradients or updates changes nothing.

    At each step the wrapped transformation computes ``inner``'s updates and new state; if the
    incoming gradients or the outgoing updates hold a NaN or Inf, the step returns zero updates
    (so ``optax.apply_updates`` leaves the parameters unchanged) and keeps ``inner``'s old state
    (so e.g. Adam's moments are not poisoned), and increments ``skipped`` and ``consecutive``.
    A finite step is applied as ``inner`` computed it and resets ``consecutive`` to 0. The
    check is a ``jnp.where`` on traced values, so the wrapper runs under ``jax.jit``.

    Args:
        inner: Transformation to protect, e.g. ``optax.adam(1e-3)``.
        max_consecutive: If an int ``k >= 0``, once ``k`` non-finite steps in a row have been
            seen, further non-finite updates are applied (not counted in ``skipped``), so
            that a run that can no longer produce a finite step fails visibly instead of
            stalling (``optax.apply_if_finite``'s rule). None (default) skips every non-finite step.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` with state :class:`SkipNonfiniteState`.

    Raises:
        ValueError: If ``max_consecutive`` is not None or an int >= 0.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> opt = skip_nonfinite(optax.sgd(0.1))
        >>> params = jnp.array([1.0, 2.0])
        >>> state = opt.init(params)
        >>> updates, state = opt.update(jnp.array([jnp.nan, 1.0]), state, params)
        >>> optax.apply_updates(params, updates).tolist(), int(state.skipped)
        ([1.0, 2.0], 1)
        >>> updates, state = opt.update(jnp.array([1.0, 1.0]), state, params)
        >>> [round(x, 3) for x in optax.apply_updates(params, updates).tolist()]
        [0.9, 1.9]
        >>> int(state.skipped), int(state.consecutive)
        (1, 0)
    """
    if max_consecutive is not None and (
        not isinstance(max_consecutive, int)
        or isinstance(max_consecutive, bool)
        or max_consecutive < 0
    ):
        raise ValueError(f"max_consecutive must be None or an int >= 0, got {max_consecutive!r}.")
    inner = optax.with_extra_args_support(inner)

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return SkipNonfiniteState(skipped=zero, consecutive=zero, inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        finite = jnp.logical_and(_all_finite(updates), _all_finite(new_updates))
        apply = finite
        if max_consecutive is not None:
            apply = jnp.logical_or(apply, state.consecutive >= max_consecutive)
        # jnp.where, not multiplication by a 0/1 mask: 0 * NaN is NaN.
        out = jax.tree_util.tree_map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates)
        inner_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(apply, new, old), new_inner, state.inner_state
        )
        return out, SkipNonfiniteState(
            skipped=state.skipped + jnp.logical_not(apply).astype(jnp.int32),
            consecutive=jnp.where(finite, 0, state.consecutive + 1).astype(jnp.int32),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init, update)
