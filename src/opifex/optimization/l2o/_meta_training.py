"""Meta-training of the learned optimizer by truncated unrolls (ES or gradient through scan).

A batch of ``num_tasks`` tasks is carried between meta-steps: each meta-step continues every
task for ``unroll_length`` inner steps and scores the segment; a task whose inner step count
has reached ``horizon`` is replaced by a freshly sampled one first. With the default
``horizon = unroll_length`` every meta-step sees new tasks from their initial point.

The meta-step is one module-level ``jax.jit`` whose static arguments are only the family and
the sizes, so every call of :func:`meta_train` with the same family object and settings (for
example the per-problem adaptation of ``LearnToOptimize``) reuses one compilation: ``theta``,
the optimizer states, the keys, a fixed task and the rates are all traced arguments.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from opifex.optimization.l2o._learned_optimizer import learned_optimizer, num_layers
from opifex.optimization.l2o._task_families import TaskFamily

METHODS = ("es", "grad")
LOSS_FLOOR = 1e-12  # relative: log(loss / loss0 + 1e-12) >= -27.6, finite at exact minima
DIVERGENCE_PENALTY = 5.0  # per-step meta-loss of a non-finite or > e^5 x initial loss


class InnerState(NamedTuple):
    """One task being optimized inside meta-training (batched along a leading axis)."""

    task: Any  # the task's pytree
    params: Any  # current parameters
    opt_state: Any  # LearnedOptimizerState
    loss0: jax.Array  # [] loss at the task's initial parameters


def fresh_inner(theta, family: TaskFamily, k_task, k_init, task=None) -> InnerState:
    """A task (sampled with ``k_task`` unless ``task`` is given) and its initial point."""
    task = family.sample(k_task) if task is None else task
    params = family.init(k_init, task)
    opt_state = learned_optimizer(theta).init(params)
    return InnerState(task, params, opt_state, family.loss(params, task))


def unroll(theta, family: TaskFamily, inner: InnerState, length: int):
    """Run ``length`` learned-optimizer steps on one task; return (meta-loss, new inner state).

    The meta-loss is the mean over the segment's steps of ``log(loss_t / loss0 + 1e-12)``,
    replaced by ``DIVERGENCE_PENALTY`` where non-finite or larger.
    """
    opt = learned_optimizer(theta)

    def body(carry, _):
        params, opt_state = carry
        value, grads = jax.value_and_grad(family.loss)(params, inner.task)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    (params, opt_state), values = jax.lax.scan(
        body, (inner.params, inner.opt_state), None, length=length
    )
    after = jnp.concatenate([values[1:], family.loss(params, inner.task)[None]])
    rel = jnp.log(after / inner.loss0 + LOSS_FLOOR)
    rel = jnp.where(jnp.isfinite(rel), jnp.minimum(rel, DIVERGENCE_PENALTY), DIVERGENCE_PENALTY)
    return jnp.mean(rel), InnerState(inner.task, params, opt_state, inner.loss0)


def batch_meta_loss(theta, family: TaskFamily, inner: InnerState, length: int):
    """Mean meta-loss over a batch of tasks (leading axis of ``inner``) and the new batch."""
    losses, new = jax.vmap(lambda s: unroll(theta, family, s, length))(inner)
    return jnp.mean(losses), new


def es_gradient(loss_fn, theta, key: jax.Array, num_perturbations: int, sigma):
    """Antithetic ES estimate of ``grad loss_fn(theta)`` and the mean of the evaluated losses.

    ``g = 1 / (2 sigma P) sum_i (L(theta + sigma e_i) - L(theta - sigma e_i)) e_i`` with
    ``e_i ~ N(0, I)`` (Salimans et al. 2017). ``loss_fn(theta) -> (loss, aux)``; the aux of
    the first positive perturbation is returned (it carries the truncated-unroll state).
    """
    flat, unravel = ravel_pytree(theta)
    eps = jax.random.normal(key, (num_perturbations, flat.size), flat.dtype)
    thetas = jnp.concatenate([flat + sigma * eps, flat - sigma * eps])
    losses, aux = jax.vmap(lambda f: loss_fn(unravel(f)))(thetas)
    diff = losses[:num_perturbations] - losses[num_perturbations:]
    grad = unravel((diff @ eps) / (2.0 * sigma * num_perturbations))
    return grad, jnp.mean(losses), jax.tree.map(lambda a: a[0], aux)


def _meta_optimizer(learning_rate, max_grad_norm) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate))


@functools.partial(
    jax.jit,
    static_argnames=("family", "method", "unroll_length", "horizon", "num_perturbations"),
)
def _meta_step(
    theta,
    meta_state,
    inner,
    key,
    task,
    rates,
    *,
    family,
    method,
    unroll_length,
    horizon,
    num_perturbations,
):
    """One meta-step; ``rates = (meta_learning_rate, sigma, max_grad_norm)`` as arrays."""
    meta_learning_rate, sigma, max_grad_norm = rates
    num_tasks = inner.loss0.shape[0]
    # One split for every key of the step: each split or draw is a separate Threefry hash,
    # and those dominate the compile time of this (otherwise small) program on CPU.
    keys = jax.random.split(key, 2 + 2 * num_tasks)
    k_next, k_es = keys[0], keys[1]
    fresh = jax.vmap(lambda kt, ki: fresh_inner(theta, family, kt, ki, task))(
        keys[2 : 2 + num_tasks], keys[2 + num_tasks :]
    )
    done = inner.opt_state.count >= horizon

    def pick(a, b):
        return jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    inner = jax.tree.map(pick, fresh, inner)

    def loss_fn(th):
        return batch_meta_loss(th, family, inner, unroll_length)

    if method == "es":
        grad, loss, inner = es_gradient(loss_fn, theta, k_es, num_perturbations, sigma)
    else:
        (loss, inner), grad = jax.value_and_grad(loss_fn, has_aux=True)(theta)
        grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
    updates, meta_state = _meta_optimizer(meta_learning_rate, max_grad_norm).update(
        grad, meta_state, theta
    )
    return optax.apply_updates(theta, updates), meta_state, inner, k_next, loss


def _check(name, value, kind, low, *, strict=False):
    bad = not isinstance(value, kind) or isinstance(value, bool)
    bad = bad or (value <= low if strict else value < low)
    if bad:
        rel = ">" if strict else ">="
        what = "an int" if kind is int else "a number"
        raise ValueError(f"{name} must be {what} {rel} {low}, got {value!r}.")


def _zeros(shapes):
    # Host zeros: no device computation, hence nothing to compile per leaf shape.
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def meta_train(
    theta: dict[str, Any],
    family: TaskFamily,
    *,
    meta_learning_rate: float,
    meta_steps: int,
    unroll_length: int,
    num_tasks: int,
    method: str = "es",
    key: jax.Array,
    progress: Any = None,
    horizon: int | None = None,
    num_perturbations: int = 8,
    sigma: float = 0.01,
    max_grad_norm: float = 1.0,
    task: Any = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Meta-train the learned optimizer's ``theta`` on ``family`` by truncated unrolls.

    Each meta-step (one jitted call) continues a batch of ``num_tasks`` tasks by
    ``unroll_length`` learned-optimizer steps, tasks that reached ``horizon`` inner steps
    being replaced by fresh samples first. The meta-loss of a segment is the mean over its
    steps of ``log(f_t / f_0 + 1e-12)`` (``f_0``: the task's initial loss; non-finite or
    ``> 5`` values count as 5), averaged over tasks. Its gradient is estimated by

    - ``"es"``: antithetic evolution strategies with ``num_perturbations`` pairs of Gaussian
      perturbations of scale ``sigma``, every perturbation scored on the same tasks
      (Salimans et al. 2017; robust where unrolled gradients explode), or
    - ``"grad"``: reverse-mode differentiation through the ``lax.scan`` unroll (non-finite
      entries zeroed),

    then clipped to global norm ``max_grad_norm`` and applied by Adam with step
    ``meta_learning_rate``. The segment's end state continues to the next meta-step (for
    ES, the first positive perturbation's end state). The meta-step is compiled once per
    family object, method and sizes, and reused by later calls with the same settings.

    Args:
        theta: Initial meta-parameters (:func:`init_meta_params`).
        family: The task family to train on.
        meta_learning_rate: Adam step on ``theta`` (> 0).
        meta_steps: Number of meta-steps (>= 1).
        unroll_length: Inner steps per meta-step (>= 1).
        num_tasks: Tasks per meta-step (>= 1).
        method: ``"es"`` or ``"grad"``.
        key: PRNG key (task sampling and perturbations).
        progress: Optional ``rich.progress.Progress``; a task advancing per meta-step is added.
        horizon: Inner steps after which a task is resampled (>= ``unroll_length``; default
            ``unroll_length``, i.e. untruncated unrolls from fresh tasks).
        num_perturbations: ES antithetic pairs per meta-step (>= 1).
        sigma: ES perturbation scale (> 0).
        max_grad_norm: Clip of the meta-gradient's global norm (> 0).
        task: Optional fixed task (a pytree of arrays as ``family.sample`` returns): every
            task of the batch is this one instead of a sample (``family.init`` still gives
            its start). It is data to the compiled step, so problems of one shape share a
            compilation.

    Returns:
        ``(theta, history)``: trained meta-parameters and a dict with ``meta_loss`` (per
        meta-step; for ES the mean over perturbations) and ``time_s`` (cumulative wall clock,
        including compilation in the first step).

    Raises:
        ValueError: If a size or rate is out of range, ``method`` is unknown, ``theta`` is
            malformed or ``family.loss`` does not return a scalar.
        TypeError: If ``family`` is not a :class:`TaskFamily` or ``key`` is not a PRNG key.

    Example:
        >>> import jax
        >>> from opifex.optimization.l2o.l2o_engine import init_meta_params, quadratic_family
        >>> family = quadratic_family(6)
        >>> theta = init_meta_params(jax.random.PRNGKey(0), hidden_sizes=(8,), learning_rate=0.1)
        >>> theta, history = meta_train(theta, family, meta_learning_rate=0.03, meta_steps=3,
        ...     unroll_length=20, num_tasks=4, method="grad", key=jax.random.PRNGKey(1))
        >>> history["meta_loss"].shape
        (3,)

    References:
        Salimans, Ho, Chen, Sidor, Sutskever, "Evolution strategies as a scalable alternative
        to reinforcement learning", arXiv:1703.03864 (2017). Metz et al., "Understanding and
        correcting pathologies in the training of learned optimizers", ICML 2019.
    """
    num_layers(theta)
    if not isinstance(family, TaskFamily):
        raise TypeError(f"family must be a TaskFamily, got {type(family).__name__}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    _check("meta_learning_rate", meta_learning_rate, (int, float), 0, strict=True)
    _check("meta_steps", meta_steps, int, 1)
    _check("unroll_length", unroll_length, int, 1)
    _check("num_tasks", num_tasks, int, 1)
    _check("num_perturbations", num_perturbations, int, 1)
    _check("sigma", sigma, (int, float), 0, strict=True)
    _check("max_grad_norm", max_grad_norm, (int, float), 0, strict=True)
    horizon = unroll_length if horizon is None else horizon
    _check("horizon", horizon, int, unroll_length)
    key = jnp.asarray(key)
    if key.shape != (2,) and not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(f"key must be a PRNG key such as jax.random.PRNGKey(0), got {key!r}.")
    # Weak-typed leaves would change type after the first update and force a second compile.
    theta = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.asarray(a).dtype), theta)
    keys = jax.ShapeDtypeStruct((num_tasks, 2), jnp.uint32)
    shapes = jax.eval_shape(jax.vmap(lambda k: fresh_inner(theta, family, k, k, task)), keys)
    if shapes.loss0.shape != (num_tasks,):
        raise ValueError(f"family.loss must return a scalar, got shape {shapes.loss0.shape[1:]}.")

    # Placeholder tasks, all marked finished, so the first meta-step samples its own batch
    # inside the compiled step.
    inner = _zeros(shapes)
    inner = inner._replace(
        opt_state=inner.opt_state._replace(count=np.full(num_tasks, horizon, np.int32))
    )
    meta_state = _zeros(jax.eval_shape(_meta_optimizer(1.0, 1.0).init, theta))
    dtype = jnp.result_type(*jax.tree.leaves(theta))
    rates = tuple(np.asarray(r, dtype) for r in (meta_learning_rate, sigma, max_grad_norm))
    static = {
        "family": family,
        "method": method,
        "unroll_length": unroll_length,
        "horizon": horizon,
        "num_perturbations": num_perturbations,
    }
    losses, times = [], []
    bar = progress.add_task("meta-train", total=meta_steps) if progress is not None else None
    t0 = time.perf_counter()
    for _ in range(meta_steps):
        theta, meta_state, inner, key, loss = _meta_step(
            theta, meta_state, inner, key, task, rates, **static
        )
        losses.append(float(loss))
        times.append(time.perf_counter() - t0)
        if bar is not None:
            progress.update(bar, advance=1, description=f"meta-train {method} {losses[-1]:.3f}")
    history = {"meta_loss": np.asarray(losses), "time_s": np.asarray(times)}
    return theta, history
