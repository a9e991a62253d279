"""Helpers of :class:`LearnToOptimize`: one objective as a task family, the jitted run."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from opifex.optimization.l2o.l2o_engine import TaskFamily, learned_optimizer


@dataclass(frozen=True)
class WithoutArgs:
    """``objective_fn(params)`` seen as ``fn(params, args)``; hashable by the wrapped function,
    so repeated calls with the same objective reuse one compilation."""

    fn: Callable[[Any], jax.Array]

    def __call__(self, params, args):
        del args
        return self.fn(params)


@dataclass(frozen=True)
class Raveled:
    """``fn(params, args)`` as a function of one raveled parameter vector.

    Hashable by ``fn`` and the pytree layout, so problems of one layout share a compilation.
    """

    fn: Callable[[Any, Any], jax.Array]
    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, fn: Callable, params: Any) -> tuple[Raveled, jax.Array]:
        """The raveled ``fn`` and ``params`` as one vector (of their common dtype)."""
        leaves, treedef = jax.tree.flatten(params)
        leaves = [jnp.asarray(x) for x in leaves]
        shapes = tuple(x.shape for x in leaves)
        dtypes = tuple(x.dtype.str for x in leaves)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        flat = jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves] or [jnp.zeros(0)])
        return cls(fn, treedef, shapes, dtypes), flat

    def unravel(self, flat: jax.Array) -> Any:
        """The pytree of ``flat`` (inverse of :meth:`of`)."""
        sizes = [math.prod(s) for s in self.shapes]
        parts = jnp.split(flat, list(itertools.accumulate(sizes))[:-1]) if sizes else []
        leaves = [
            p.reshape(s).astype(d) for p, s, d in zip(parts, self.shapes, self.dtypes, strict=True)
        ]
        return jax.tree.unflatten(self.treedef, leaves)

    def __call__(self, x, args):
        return self.fn(self.unravel(x), args)


def _no_sample(key):
    raise ValueError("the adaptation family has one task; pass it to meta_train as task=...")


def _task_start(key, task):
    del key
    return task["start"]


@dataclass(frozen=True)
class _TaskLoss:
    """``fn(params, task["args"])``; hashable by ``fn``, so the family is equal across calls."""

    fn: Callable[[Any, Any], jax.Array]

    def __call__(self, params, task):
        return self.fn(params, task["args"])


def single_objective_family(fn: Callable, start: Any, args: Any) -> tuple[TaskFamily, dict]:
    """A one-member family for ``fn(., args)`` from ``start`` (for adaptation), and its task.

    The task (``start`` and ``args``) is returned apart, to be passed to ``meta_train`` as
    data: families built from the same ``fn`` compare equal, so repeated adaptations of
    problems of one shape reuse one compiled meta-step.
    """
    family = TaskFamily(_no_sample, _task_start, _TaskLoss(fn), name="adaptation")
    return family, {"start": start, "args": args}


class RunOutput(NamedTuple):
    """Result of :func:`run_learned`."""

    params: Any  # final iterate, like the start
    losses: jax.Array  # float (num_steps + 1,), objective at iterates 0..num_steps
    fallback_count: jax.Array  # int32 [], steps that used the base optimizer


@functools.partial(jax.jit, static_argnames=("fn", "num_steps"))
def run_learned(theta, fn: Callable, params, args, num_steps: int, base_learning_rate) -> RunOutput:
    """``num_steps`` steps of the learned optimizer on ``fn(., args)`` in one ``lax.scan``."""
    opt = learned_optimizer(theta, base=optax.adam(base_learning_rate))
    value_and_grad = jax.value_and_grad(fn)

    def body(carry, _):
        p, state = carry
        value, grads = value_and_grad(p, args)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, state), values = jax.lax.scan(body, (params, opt.init(params)), length=num_steps)
    losses = jnp.concatenate([values, fn(params, args)[None]])
    return RunOutput(params, losses, state.fallback_count)
