"""Physics-informed objectives: weighted residual terms over batches of points.

A residual is a function ``residual(u, points, targets) -> (N,)`` (or ``(N, k)``) where
``u`` maps a batch of points ``(N, d)`` to the field ``(N,)``; derivatives of ``u`` come from
:func:`partial`, which uses nested forward-mode ``jvp`` on the whole batch. Because each
point's output depends on that point alone, one ``jvp`` with the tangent ``e_axis`` at every
point yields every point's derivative at once, at the cost of about two network passes per
order, instead of a per-point ``vmap(grad(grad(...)))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Field = Callable[[jax.Array], jax.Array]
Residual = Callable[[Field, jax.Array, Any], jax.Array]


def partial(u: Field, points: jax.Array, axis: int, order: int = 1) -> tuple[jax.Array, ...]:
    """``(u, du/dx_axis, ..., d^order u / dx_axis^order)`` at a batch of points.

    Nested forward mode: each level is a ``jax.jvp`` of the level below along the unit
    vector ``e_axis`` at every point, so all lower derivatives come out of the same pass.

    Args:
        u: Batched field ``(N, d) -> (N,)`` whose outputs depend pointwise on the inputs.
        points: ``(N, d)`` points.
        axis: Input coordinate to differentiate along.
        order: Highest derivative order (>= 1).

    Returns:
        A tuple of ``order + 1`` arrays of shape ``(N,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[0.0], [1.0]])
        >>> [d.tolist() for d in partial(lambda p: p[:, 0] ** 3, x, 0, 2)]
        [[0.0, 1.0], [0.0, 3.0], [0.0, 6.0]]
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}.")
    tangent = jnp.zeros_like(points).at[:, axis].set(1.0)

    def lift(f):
        def g(p):
            primal, tangent_out = jax.jvp(f, (p,), (tangent,))
            return (*primal, tangent_out[-1])

        return g

    f = lambda p: (u(p),)  # noqa: E731
    for _ in range(order):
        f = lift(f)
    return f(points)


@dataclass(frozen=True)
class ResidualTerm:
    """One term ``weight * mean(residual(u, points, targets)**2)`` of a physics-informed loss.

    Attributes:
        name: Key of this term's batch in the ``batch`` mapping (``{"points", "targets"}``).
        residual: ``(u, points, targets) -> (N,)`` or ``(N, k)``.
        weight: Fixed weight (loss balancing may rescale it during training).
    """

    name: str
    residual: Residual
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}.")
        if not callable(self.residual):
            raise TypeError(f"residual must be callable, got {type(self.residual).__name__}.")
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {self.weight!r}.")


@dataclass(frozen=True)
class PhysicsInformedLoss:
    """A weighted sum of residual terms of a network ``apply(params, points)``.

    ``loss(params, batch)`` is the objective (a pure function, so every solver of the
    project, ``jit``, ``grad`` and ``vmap`` apply), ``term_losses(params, batch)`` the ``(K,)``
    vector of unweighted mean squared residuals (for loss balancing), and
    ``residuals(params, batch)`` the stacked weighted residual vector (for Gauss-Newton).

    ``batch`` maps each term's name to ``{"points": (N, d), "targets": array or None}``;
    :meth:`check_batch` validates it on the host before any training.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from opifex.optimization.scientific_integration import init_mlp, apply_mlp
        >>> # u'' = -pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0
        >>> pde = lambda u, x, f: partial(u, x, 0, 2)[2] - f
        >>> bc = lambda u, x, _: u(x)
        >>> terms = (ResidualTerm("pde", pde), ResidualTerm("bc", bc))
        >>> loss = PhysicsInformedLoss(apply_mlp, terms)
        >>> x = jnp.linspace(0, 1, 16)[:, None]
        >>> batch = {"pde": {"points": x, "targets": -jnp.pi**2 * jnp.sin(jnp.pi * x[:, 0])},
        ...          "bc": {"points": jnp.array([[0.0], [1.0]]), "targets": None}}
        >>> params = init_mlp(jax.random.PRNGKey(0), (1, 8, 1))
        >>> loss.term_losses(params, loss.check_batch(batch)).shape
        (2,)
    """

    apply: Callable[[Any, jax.Array], jax.Array]
    terms: Sequence[ResidualTerm]
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        if not terms or not all(isinstance(t, ResidualTerm) for t in terms):
            raise TypeError("terms must be a non-empty sequence of ResidualTerm.")
        names = tuple(t.name for t in terms)
        if len(set(names)) != len(names):
            raise ValueError(f"term names must be unique, got {names}.")
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "names", names)

    @property
    def weights(self) -> np.ndarray:
        return np.array([t.weight for t in self.terms])

    def _residual(self, term: ResidualTerm, params, part) -> jax.Array:
        u = lambda p: self.apply(params, p)  # noqa: E731
        return term.residual(u, part["points"], part.get("targets"))

    def term_losses(self, params, batch: Mapping) -> jax.Array:
        """``(K,)`` mean squared residual of each term (unweighted)."""
        return jnp.stack(
            [jnp.mean(self._residual(t, params, batch[t.name]) ** 2) for t in self.terms]
        )

    def loss(self, params, batch: Mapping, weights: jax.Array | None = None) -> jax.Array:
        """``sum_k w_k * mean(r_k^2)`` with the terms' weights unless ``weights`` is given."""
        w = jnp.asarray(self.weights if weights is None else weights)
        return jnp.sum(w * self.term_losses(params, batch))

    def __call__(self, params, batch: Mapping) -> jax.Array:
        return self.loss(params, batch)

    def residuals(self, params, batch: Mapping) -> jax.Array:
        """Stacked residuals scaled by ``sqrt(w_k / N_k)``: their squared norm is the loss."""
        out = []
        for t in self.terms:
            r = self._residual(t, params, batch[t.name]).reshape(-1)
            out.append(jnp.sqrt(t.weight / r.shape[0]) * r)
        return jnp.concatenate(out)

    def check_batch(self, batch: Mapping, params=None) -> dict:
        """Validate ``batch`` on the host and return it with arrays as ``jnp`` arrays.

        Raises ``ValueError`` naming the term and the offending indices for non-finite points
        or targets, a missing term, or points that are not 2-D; with ``params``, also checks
        (by ``jax.eval_shape``, before any training) that every residual returns a vector (one
        row per point, or per pair of points for a periodic condition).
        """
        out = {}
        for t in self.terms:
            if t.name not in batch:
                raise ValueError(f"batch has no entry for term {t.name!r}; got {sorted(batch)}.")
            part = batch[t.name]
            points = np.asarray(part["points"])
            if points.ndim != 2:
                raise ValueError(
                    f"points of term {t.name!r} must be (N, d), got shape {points.shape}."
                )
            _require_finite(points, f"points of term {t.name!r}")
            targets = part.get("targets")
            if targets is not None:
                targets = np.asarray(targets)
                _require_finite(targets, f"targets of term {t.name!r}")
                if targets.shape[0] != points.shape[0]:
                    raise ValueError(
                        f"targets of term {t.name!r} must have {points.shape[0]} rows (one per "
                        f"point), got shape {targets.shape}."
                    )
                targets = jnp.asarray(targets)
            out[t.name] = {"points": jnp.asarray(points), "targets": targets}
        if params is not None:
            for t in self.terms:
                shape = jax.eval_shape(
                    lambda p, part, t=t: self._residual(t, p, part), params, out[t.name]
                ).shape
                if len(shape) not in (1, 2) or shape[0] == 0:
                    n = out[t.name]["points"].shape[0]
                    raise ValueError(
                        f"residual of term {t.name!r} must return a non-empty vector (R,) or "
                        f"(R, k) of residuals (usually R = {n}, one per point), got shape "
                        f"{shape}."
                    )
        return out


def _require_finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        shown = ", ".join(str(i) for i in rows[:10]) + (" ..." if rows.size > 10 else "")
        raise ValueError(
            f"{what} contain {rows.size} non-finite row(s), at indices [{shown}]; remove or "
            "fix them before training."
        )
