"""The hybrid Adam -> L-BFGS optimizer (front door of :mod:`._hybrid`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from opifex.optimization.core import Status
from opifex.optimization.second_order._hybrid import (
    LBFGS_PHASE,
    HybridState,
    float_dtype,
    hybrid_adam_lbfgs,
    transform_loop,
)
from opifex.optimization.second_order.config import HybridOptimizerConfig


class HybridResult(NamedTuple):
    """Result of :meth:`HybridOptimizer.optimize`.

    Attributes:
        params: Final iterate (same structure as the initial params).
        value: Objective at ``params``.
        losses: Objective before each update and at the end, ``f(x_0), ..., f(x_n)``
            (numpy, length ``num_steps + 1``).
        num_steps: Updates applied ``n`` (fewer than asked when L-BFGS converged).
        switch_step: Adam steps taken before L-BFGS took over (``-1``: never switched).
        status: :class:`~opifex.optimization.core.Status` code (CONVERGED when the L-BFGS
            config's ``gtol``/``ftol`` tests passed, else MAX_STEPS or NONFINITE).
        state: Final :class:`~opifex.optimization.second_order._hybrid.HybridState`.
    """

    params: Any
    value: float
    losses: np.ndarray
    num_steps: int
    switch_step: int
    status: Status
    state: HybridState


@functools.partial(jax.jit, static_argnames=("tx", "fn", "num_steps", "gtol", "ftol"))
def _optimize(tx, fn, params, args, *, num_steps, gtol, ftol):
    dtype = float_dtype(params)  # the loss in the params' precision, as the line search stores it

    def objective(p):
        return jnp.asarray(fn(p, args), dtype)

    value_and_grad = optax.value_and_grad_from_state(objective)

    def evaluate(x, aux, state):
        value, grad = value_and_grad(x, state=state)
        return value, grad, aux, objective

    return transform_loop(
        tx,
        evaluate,
        params,
        (),
        tx.init(params),
        num_steps=num_steps,
        gtol=gtol,
        ftol=ftol,
        phase_fn=lambda s: s.phase == LBFGS_PHASE,
    )


class HybridOptimizer:
    """Adam first, L-BFGS once Adam stalls: an optax transformation with a one-call driver.

    ``transform`` (also reachable as ``init``/``update``) is the
    ``optax.GradientTransformationExtraArgs`` built by
    :func:`~opifex.optimization.second_order._hybrid.hybrid_adam_lbfgs`; drop it into any
    optax loop or ``nnx.Optimizer``. :meth:`optimize` runs the whole optimization in one
    jitted ``lax.while_loop``.

    Args:
        config: A :class:`HybridOptimizerConfig` (defaults if ``None``).

    Raises:
        TypeError: If ``config`` is not a :class:`HybridOptimizerConfig`.

    Example:
        >>> import jax.numpy as jnp
        >>> from opifex.optimization.second_order import HybridOptimizer, HybridOptimizerConfig
        >>> rosen = lambda x, a: (a - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        >>> opt = HybridOptimizer(HybridOptimizerConfig(switch_criterion="step", switch_step=50))
        >>> result = opt.optimize(rosen, jnp.array([-1.2, 1.0]), 1.0, num_steps=200)
        >>> result.params.round(6).tolist(), result.switch_step, result.status.name
        ([1.0, 1.0], 50, 'CONVERGED')
    """

    def __init__(self, config: HybridOptimizerConfig | None = None):
        if config is None:
            config = HybridOptimizerConfig()
        if not isinstance(config, HybridOptimizerConfig):
            raise TypeError(f"config must be a HybridOptimizerConfig, got {type(config).__name__}.")
        self.config = config
        self.transform = hybrid_adam_lbfgs(**config.to_kwargs())

    def init(self, params) -> HybridState:
        """``self.transform.init``."""
        return self.transform.init(params)

    def update(self, grads, state: HybridState, params=None, **extra_args):
        """``self.transform.update`` (needs ``value``, ``grad`` and ``value_fn``)."""
        return self.transform.update(grads, state, params, **extra_args)

    def optimize(self, fn: Callable, params, args=None, *, num_steps: int) -> HybridResult:
        """Minimise ``fn(params, args)`` with up to ``num_steps`` updates in one jitted loop.

        Stops early, with status CONVERGED, once in the L-BFGS phase ``max|grad| <=
        config.lbfgs.gtol`` (the test also applies during Adam) or the relative decrease falls
        below ``config.lbfgs.ftol`` (if > 0). Compiled once per ``fn``, ``num_steps`` and
        argument shapes; the loop runs on device, so there is no per-step progress to show:
        the result carries the loss history and the switch step.

        Args:
            fn: Scalar objective ``(params, args) -> float``.
            params: Initial guess (any pytree of float arrays).
            args: Problem data passed to ``fn`` (any pytree).
            num_steps: Update budget (int >= 1).

        Returns:
            A :class:`HybridResult`.

        Raises:
            TypeError: If ``fn`` is not callable.
            ValueError: If ``num_steps`` is not an int >= 1 or ``fn`` does not return a scalar.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable (params, args) -> scalar, got {type(fn)}.")
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
        if num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
        out = jax.eval_shape(fn, params, args)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"fn must return a scalar, got shape {getattr(out, 'shape', type(out))}; "
                "reduce the loss (e.g. jnp.sum or jnp.mean)."
            )
        lbfgs = self.config.lbfgs
        res = _optimize(
            self.transform,
            fn,
            params,
            args,
            num_steps=int(num_steps),
            gtol=float(lbfgs.gtol),
            ftol=float(lbfgs.ftol),
        )
        n = int(res.num_steps)
        return HybridResult(
            params=res.params,
            value=float(res.value),
            losses=np.asarray(res.losses)[: n + 1],
            num_steps=n,
            switch_step=int(res.opt_state.switch_step_taken),
            status=Status(int(res.status)),
            state=res.opt_state,
        )

    def __repr__(self) -> str:
        return f"HybridOptimizer({self.config!r})"


__all__ = ["HybridOptimizer", "HybridResult"]
