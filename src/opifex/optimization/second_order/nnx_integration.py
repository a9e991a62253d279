"""L-BFGS (and Adam -> L-BFGS) over the ``nnx.Param`` of any Flax NNX module.

The model is split once per call into ``graphdef``, its parameters and the rest of its state
(BatchNorm statistics, RNG counters, any other ``Variable``). :class:`NNXLBFGSWrapper` runs
the optimizer on the parameters ravelled into one vector (``ravel_pytree``; Adam is
elementwise and L-BFGS only takes inner products, so this is the same method), and the line
search evaluates the loss as a pure function of that vector by merging ``graphdef`` with the
candidate parameters and the step's fixed non-parameter state.

Non-parameter state follows a normal training step. If the loss leaves every non-parameter
``Variable`` untouched (e.g. no BatchNorm in training mode, no dropout), :meth:`fit` reuses
the line search's value and gradient at the accepted point, as
``optax.value_and_grad_from_state`` does, and costs what raw L-BFGS on the flattened
parameters costs. Otherwise each step evaluates loss and gradient once at the current
parameters on the model, which advances BatchNorm statistics and RNG counters exactly once as
a training step would; the line search's trial evaluations start from the same pre-step
state and their side effects are discarded, so one step sees one deterministic objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from opifex.optimization.core import Status
from opifex.optimization.second_order._hybrid import (
    LBFGS_PHASE,
    HybridState,
    hybrid_adam_lbfgs,
    transform_loop,
)
from opifex.optimization.second_order.config import HybridOptimizerConfig, LBFGSConfig
from opifex.optimization.second_order.wrappers import create_lbfgs_optimizer

LossFn = Callable[..., jax.Array]


class FitHistory(NamedTuple):
    """Result of :meth:`NNXLBFGSWrapper.fit` (the model itself is updated in place).

    Attributes:
        losses: Loss before each update and at the end, ``f(x_0), ..., f(x_n)`` (numpy).
        value: Loss at the final parameters.
        num_steps: Updates applied ``n``.
        status: CONVERGED (``gtol``/``ftol`` of the L-BFGS config met), MAX_STEPS or
            NONFINITE (the model keeps the last finite parameters).
        switch_step: Adam steps before L-BFGS took over (hybrid config; ``None`` otherwise,
            ``-1`` if it never switched).
    """

    losses: np.ndarray
    value: float
    num_steps: int
    status: Status
    switch_step: int | None


def _transform(config) -> tuple[optax.GradientTransformationExtraArgs, LBFGSConfig]:
    if config is None:
        config = LBFGSConfig()
    if isinstance(config, LBFGSConfig):
        return create_lbfgs_optimizer(config), config
    if isinstance(config, HybridOptimizerConfig):
        return hybrid_adam_lbfgs(**config.to_kwargs()), config.lbfgs
    raise TypeError(
        f"config must be an LBFGSConfig or a HybridOptimizerConfig, got {type(config).__name__}."
    )


def _check_model(model) -> None:
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
    if not jax.tree.leaves(nnx.state(model, nnx.Param)):
        raise ValueError(f"model {type(model).__name__} has no nnx.Param to optimize.")


def _split(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.as_pure(params), nnx.as_pure(rest)


def _flat(params) -> jax.Array:
    # The optimizer runs on one vector: the same arithmetic as raw L-BFGS on ravelled
    # params, without per-leaf work in every two-loop recursion and line-search trial.
    return ravel_pytree(params)[0]


def _like(new, old):
    # The loop carry needs the non-parameter state's exact types back.
    return jax.tree.map(lambda n, o: n if n.dtype == o.dtype else n.astype(o.dtype), new, old)


def create_nnx_lbfgs_optimizer(
    model: nnx.Module, config: LBFGSConfig | HybridOptimizerConfig | None = None
) -> nnx.Optimizer:
    """An ``nnx.Optimizer`` (``wrt=nnx.Param``) running L-BFGS, or the hybrid, on ``model``.

    ``optimizer.update(model, grads, value=..., grad=..., value_fn=...)`` needs the loss,
    its gradient and the loss as a function of the parameter ``State`` for the line search.

    Args:
        model: Any ``nnx.Module`` with ``nnx.Param`` variables.
        config: :class:`LBFGSConfig` (default) or :class:`HybridOptimizerConfig`.

    Returns:
        An ``nnx.Optimizer``.

    Raises:
        TypeError: If ``model`` is not an ``nnx.Module`` or ``config`` has the wrong type.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from opifex.optimization.second_order import create_nnx_lbfgs_optimizer
        >>> model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
        >>> x = jnp.linspace(-1.0, 1.0, 16)[:, None]; y = 2.0 * x + 1.0
        >>> loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
        >>> optimizer = create_nnx_lbfgs_optimizer(model)
        >>> @nnx.jit
        ... def train_step(model, optimizer):
        ...     loss, grads = nnx.value_and_grad(loss_fn)(model)
        ...     graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        ...     rest = nnx.as_pure(rest)  # trial evaluations get fresh copies of the rest
        ...     value_fn = lambda params: loss_fn(nnx.merge(graphdef, params, rest))
        ...     optimizer.update(model, grads, value=loss, grad=grads, value_fn=value_fn)
        ...     return loss
        >>> for _ in range(5):
        ...     loss = train_step(model, optimizer)
        >>> model.kernel[...].round(4).tolist(), model.bias[...].round(4).tolist()
        ([[2.0]], [1.0])
    """
    _check_model(model)
    tx, _ = _transform(config)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


class NNXLBFGSWrapper:
    """L-BFGS (or Adam -> L-BFGS) training of an ``nnx.Module`` with jit-compiled steps.

    ``loss_fn(model, *batch) -> scalar`` is any loss written for the model. :meth:`step`
    takes one update (one compiled step per ``loss_fn`` and batch shapes); :meth:`fit` runs
    to tolerance in one compiled ``lax.while_loop``. See the module docstring for how
    BatchNorm statistics and RNG state are handled.

    Args:
        model: Any ``nnx.Module`` with ``nnx.Param`` variables (updated in place).
        config: :class:`LBFGSConfig` (default) or :class:`HybridOptimizerConfig`.

    Attributes:
        model: The model.
        opt_state: The transformation's state over the ravelled parameter vector.
        num_traces: How many times a step or fit function was traced (compiled).

    Raises:
        TypeError: If ``model`` is not an ``nnx.Module`` or ``config`` has the wrong type.
        ValueError: If ``model`` has no ``nnx.Param``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from opifex.optimization.second_order import NNXLBFGSWrapper
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> x = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 1.0]])
        >>> y = x @ jnp.array([[1.5], [-0.5]]) + 0.25
        >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
        >>> wrapper = NNXLBFGSWrapper(model)
        >>> history = wrapper.fit(loss_fn, x, y, num_steps=50)
        >>> history.status.name, model.kernel[...].round(4).ravel().tolist()
        ('CONVERGED', [1.5, -0.5])
    """

    def __init__(
        self, model: nnx.Module, config: LBFGSConfig | HybridOptimizerConfig | None = None
    ):
        _check_model(model)
        self.model = model
        self.config = config
        self._tx, self._lbfgs_config = _transform(config)
        self._hybrid = isinstance(config, HybridOptimizerConfig)
        self._graphdef, params, _ = _split(model)
        self.opt_state = self._tx.init(_flat(params))
        self.num_traces = 0
        self._step_jit = jax.jit(self._step_impl, static_argnames=("loss_fn",))
        self._fit_jit = jax.jit(self._fit_impl, static_argnames=("loss_fn", "num_steps"))

    # -- traced -------------------------------------------------------------------------

    def _evaluator(self, loss_fn: LossFn, batch, unravel, dtype, *, reuse: bool):
        """Loss and gradient as functions of the flat parameter vector ``v``."""
        graphdef = self._graphdef

        def pure_loss(v, rest):
            return jnp.asarray(loss_fn(nnx.merge(graphdef, unravel(v), rest), *batch), dtype)

        def loss_and_rest(v, rest):
            model = nnx.merge(graphdef, unravel(v), rest)
            loss = loss_fn(model, *batch)
            new_rest = nnx.as_pure(nnx.split(model, nnx.Param, ...)[2])
            if jax.tree.structure(new_rest) != jax.tree.structure(rest):
                raise ValueError(
                    "loss_fn changed the model's structure (it created or removed Variables); "
                    "the L-BFGS wrapper needs a loss that only reads the model or updates "
                    "existing Variables."
                )
            if jnp.shape(loss) != ():
                raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}.")
            return jnp.asarray(loss, dtype), _like(new_rest, rest)

        def mutates(params, rest) -> bool:
            # Trace-time test (no compiled code): a Variable the loss leaves alone comes back
            # as the very tracer that went in.
            found = []

            def probe(p, r):
                new_rest = loss_and_rest(p, r)[1]
                leaves = zip(jax.tree.leaves(new_rest), jax.tree.leaves(r), strict=True)
                found.append(any(a is not b for a, b in leaves))
                return 0

            jax.eval_shape(probe, params, rest)
            return found[0]

        def evaluate(params, rest, opt_state):
            if reuse and not mutates(params, rest):
                # Nothing but the params moves: reuse the line search's last evaluation.
                value, grad = optax.value_and_grad_from_state(pure_loss)(
                    params, rest, state=opt_state
                )
                return value, grad, rest, lambda p: pure_loss(p, rest)
            (value, new_rest), grad = jax.value_and_grad(loss_and_rest, has_aux=True)(params, rest)
            return value, grad, new_rest, lambda p: pure_loss(p, rest)

        return evaluate

    def _step_impl(self, params, rest, opt_state, batch, *, loss_fn):
        self.num_traces += 1
        v, unravel = ravel_pytree(params)
        evaluate = self._evaluator(loss_fn, batch, unravel, v.dtype, reuse=False)
        value, grad, new_rest, value_fn = evaluate(v, rest, opt_state)
        updates, opt_state = self._tx.update(
            grad, opt_state, v, value=value, grad=grad, value_fn=value_fn
        )
        return unravel(v + updates), new_rest, opt_state, value

    def _fit_impl(self, params, rest, opt_state, batch, *, loss_fn, num_steps):
        self.num_traces += 1
        v, unravel = ravel_pytree(params)
        evaluate = self._evaluator(loss_fn, batch, unravel, v.dtype, reuse=True)
        cfg = self._lbfgs_config
        res = transform_loop(
            self._tx,
            evaluate,
            v,
            rest,
            opt_state,
            num_steps=num_steps,
            gtol=float(cfg.gtol),
            ftol=float(cfg.ftol),
            phase_fn=(lambda s: s.phase == LBFGS_PHASE) if self._hybrid else None,
        )
        return res._replace(params=unravel(res.params))

    # -- host ---------------------------------------------------------------------------

    def _parts(self, loss_fn):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (model, *batch) -> scalar, got {loss_fn!r}.")
        graphdef, params, rest = _split(self.model)
        if graphdef != self._graphdef:
            raise ValueError(
                "the model's structure changed since the wrapper was created; create a new "
                "NNXLBFGSWrapper for the new model."
            )
        return params, rest

    def reset(self) -> None:
        """Forget the optimizer state (L-BFGS memory, Adam moments, phase) but keep the
        compiled steps; the model's variables are left as they are."""
        self.opt_state = self._tx.init(_flat(_split(self.model)[1]))

    def step(self, loss_fn: LossFn, *batch: Any) -> jax.Array:
        """One update of the model's parameters; returns the loss before the update.

        Like a training step, the loss and gradient are evaluated once at the current
        parameters (so ``batch`` may change between calls; L-BFGS then mixes curvature of
        different batches, which is the caller's choice).

        Args:
            loss_fn: ``(model, *batch) -> scalar`` loss.
            *batch: Arrays passed to ``loss_fn`` after the model.

        Returns:
            The loss at the parameters before the update (a scalar array).
        """
        params, rest = self._parts(loss_fn)
        params, rest, self.opt_state, value = self._step_jit(
            params, rest, self.opt_state, batch, loss_fn=loss_fn
        )
        nnx.update(self.model, params, rest)
        return value

    def fit(self, loss_fn: LossFn, *batch: Any, num_steps: int | None = None) -> FitHistory:
        """Train on a fixed ``batch`` until converged or ``num_steps`` updates are applied.

        Converged means ``max|grad| <= gtol`` or (L-BFGS phase, ``ftol > 0``) a relative
        decrease ``<= ftol``, with the tolerances of the :class:`LBFGSConfig` in use. The
        whole run is one compiled ``lax.while_loop``; the optimizer state carries over to
        later calls.

        Args:
            loss_fn: ``(model, *batch) -> scalar`` loss.
            *batch: Arrays passed to ``loss_fn`` after the model.
            num_steps: Update budget; defaults to ``max_iterations`` of the L-BFGS config
                (plus ``switch_step`` for a hybrid config).

        Returns:
            A :class:`FitHistory`.

        Raises:
            ValueError: If ``num_steps`` is not an int >= 1.
        """
        if num_steps is None:
            num_steps = self._lbfgs_config.max_iterations
            if self._hybrid:
                num_steps += self.config.switch_step
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
        if num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
        params, rest = self._parts(loss_fn)
        res = self._fit_jit(
            params, rest, self.opt_state, batch, loss_fn=loss_fn, num_steps=int(num_steps)
        )
        self.opt_state = res.opt_state
        nnx.update(self.model, res.params, res.aux)
        n = int(res.num_steps)
        switch = None
        if isinstance(res.opt_state, HybridState):
            switch = int(res.opt_state.switch_step_taken)
        return FitHistory(
            losses=np.asarray(res.losses)[: n + 1],
            value=float(res.value),
            num_steps=n,
            status=Status(int(res.status)),
            switch_step=switch,
        )


__all__ = ["FitHistory", "NNXLBFGSWrapper", "create_nnx_lbfgs_optimizer"]
