"""Numerical health checks for a physics-informed loss: NaN/Inf, gradient scale, curvature.

:class:`NumericalValidator` evaluates a loss and its gradient once, on the host, and turns what
it sees into plain-language :class:`Finding` s: non-finite entries named by their parameter
path, exploding or vanishing gradient norms, the Hessian's extreme eigenvalues and condition
estimate from Lanczos on Hessian-vector products (never forming the Hessian), and the gradient
norm of each loss term when the terms are given. It reports numerical trouble; it raises only on
structurally wrong input. :func:`skip_nonfinite` is the matching training-time guard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from opifex.optimization.scientific_integration._lanczos import (
    hashable,
    hessian_vector_product,
    lanczos_eigenvalues,
    lanczos_ritz_values,
)
from opifex.optimization.scientific_integration._skip_nonfinite import (
    SkipNonfiniteState,
    skip_nonfinite,
)

__all__ = [
    "Finding",
    "NumericalValidationResult",
    "NumericalValidator",
    "SkipNonfiniteState",
    "hessian_vector_product",
    "lanczos_eigenvalues",
    "skip_nonfinite",
]

_SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One observation of :class:`NumericalValidator`.

    Attributes:
        severity: ``"error"`` (training cannot proceed as is), ``"warning"`` or ``"info"``.
        code: Stable machine-readable tag, e.g. ``"nonfinite_gradient"``.
        message: Plain-language description with the numbers and a suggested remedy.

    Example:
        >>> print(Finding("warning", "vanishing_gradient", "gradient norm 1.0e-10"))
        [warning] vanishing_gradient: gradient norm 1.0e-10
    """

    severity: str
    code: str
    message: str

    def __post_init__(self):
        if self.severity not in _SEVERITIES:
            raise ValueError(f"severity must be one of {_SEVERITIES}, got {self.severity!r}.")

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message}"


@dataclass(frozen=True, eq=False)
class NumericalValidationResult:
    """What :meth:`NumericalValidator.validate` found.

    Attributes:
        ok: True when no finding has severity ``"error"``.
        findings: Tuple of :class:`Finding`, errors first.
        loss: Loss value (may be NaN or Inf).
        grad_norm: Global L2 norm of the gradient (may be NaN or Inf).
        nonfinite: Number of NaN/Inf entries per location with any, keyed ``"loss"``,
            ``"params['w']"``, ``"grads['w']"`` or ``"term_losses['name']"``; empty if all finite.
        top_eigenvalues: Largest Hessian eigenvalue estimates, descending, or None if skipped.
        min_eigenvalue_estimate: Smallest Ritz value (an upper bound on ``lambda_min``).
        condition_estimate: ``max|theta| / min|theta|`` over the Ritz values; for a positive
            definite Hessian this is ``lambda_max / lambda_min`` once Lanczos has converged and
            a lower bound before.
        term_grad_norms: Gradient norm of each loss term, keyed by name (empty if not given).

    Example:
        >>> r = NumericalValidationResult(ok=True, findings=(), loss=0.0, grad_norm=0.0)
        >>> print(r)
        ok: no findings
    """

    ok: bool
    findings: tuple[Finding, ...]
    loss: float
    grad_norm: float
    nonfinite: dict[str, int] = field(default_factory=dict)
    top_eigenvalues: np.ndarray | None = None
    min_eigenvalue_estimate: float | None = None
    condition_estimate: float | None = None
    term_grad_norms: dict[str, float] = field(default_factory=dict)

    @property
    def codes(self) -> tuple[str, ...]:
        """The codes of all findings, in order."""
        return tuple(f.code for f in self.findings)

    def __str__(self) -> str:
        if not self.findings:
            return "ok: no findings"
        return "\n".join(str(f) for f in self.findings)


def _path_names(tree: Any) -> list[tuple[str, str, Any]]:
    """``(keystr, layer name, leaf)`` per leaf; the layer name joins the path's keys by dots."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
        out.append((jax.tree_util.keystr(path), ".".join(map(str, keys)) or "params", leaf))
    return out


def _count_nonfinite(x: Any) -> tuple[int, int]:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.inexact):
        return 0, 0
    return int(np.isnan(x).sum()), int(np.isinf(x).sum())


def _describe(nan: int, inf: int) -> str:
    parts = [f"{c} {w}" for c, w in ((nan, "NaN"), (inf, "Inf")) if c]
    return " and ".join(parts) + (" entry" if nan + inf == 1 else " entries")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}.")


def _int_at_least(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}.")


# Module-level jits with the objective static: validating the same loss repeatedly (e.g. once
# per epoch) compiles once per parameter shape instead of once per call.
@partial(jax.jit, static_argnums=0)
def _value_and_grad(loss_fn, params, args):
    return jax.value_and_grad(loss_fn)(params, args)


@partial(jax.jit, static_argnums=(0, 4))
def _ritz_values(loss_fn, params, args, start, num_iterations):
    hvp = hessian_vector_product(loss_fn, params, args)
    return lanczos_ritz_values(hvp, start, num_iterations)


@partial(jax.jit, static_argnums=0)
def _terms_and_jacobian(term_losses_fn, params, args):
    return term_losses_fn(params, args), jax.jacrev(term_losses_fn)(params, args)


@dataclass(frozen=True, kw_only=True)
class NumericalValidator:
    """Checks a loss for non-finite values, gradient scale and Hessian conditioning.

    Severities: NaN/Inf in the loss, parameters, gradient or a loss term are errors (``ok`` is
    False); exploding or vanishing gradients, an ill-conditioned Hessian, non-finite
    Hessian-vector products and imbalanced loss terms are warnings; the spectrum summary,
    negative curvature and a skipped curvature analysis are info. The condition estimate is
    ``max|theta| / min|theta|`` over the Ritz values of one Lanczos run (Golub & Van Loan,
    Sec. 10.1), so no second run on ``lambda_max I - H`` is needed.

    Attributes:
        exploding_grad_threshold: Warn when the gradient norm exceeds this.
        vanishing_grad_threshold: Warn when the gradient norm is below this.
        condition_threshold: Warn when the Hessian condition estimate reaches this.
        lanczos_iterations: Lanczos steps (Hessian-vector products); clipped to the number
            of parameters, where the spectrum estimate becomes exact.
        num_eigenvalues: Number of largest eigenvalue estimates reported.
        check_hessian: Run the Lanczos curvature analysis.
        seed: Seed of Lanczos's random start vector.
        term_imbalance_threshold: Warn when the largest per-term gradient norm exceeds the
            smallest by more than this factor.

    Example:
        >>> import jax.numpy as jnp
        >>> fn = lambda p, a: jnp.sum(jnp.sqrt(p["w"]))
        >>> result = NumericalValidator().validate(fn, {"w": jnp.array([4.0, -1.0])})
        >>> result.ok, result.nonfinite
        (False, {'loss': 1, "grads['w']": 1})
        >>> print(result)
        [error] nonfinite_loss: loss is nan; check for overflow ...
        [error] nonfinite_gradient: gradient contains 1 NaN entry in layer 'w' (params['w'])
        [info] hessian_skipped: Hessian analysis skipped: ...
        >>> quadratic = lambda p, a: 0.5 * jnp.sum(a * p**2)
        >>> curvatures = jnp.array([1e-2, 1.0, 1e2])
        >>> validator = NumericalValidator(condition_threshold=1e3)
        >>> result = validator.validate(quadratic, jnp.ones(3), curvatures)
        >>> result.codes, f"{result.condition_estimate:.1e}"
        (('ill_conditioned', 'hessian_spectrum'), '1.0e+04')
    """

    exploding_grad_threshold: float = 1e3
    vanishing_grad_threshold: float = 1e-8
    condition_threshold: float = 1e6
    lanczos_iterations: int = 30
    num_eigenvalues: int = 3
    check_hessian: bool = True
    seed: int = 0
    term_imbalance_threshold: float = 1e3

    def __post_init__(self):
        _positive("exploding_grad_threshold", self.exploding_grad_threshold)
        _positive("vanishing_grad_threshold", self.vanishing_grad_threshold)
        if self.vanishing_grad_threshold >= self.exploding_grad_threshold:
            raise ValueError(
                "vanishing_grad_threshold must be < exploding_grad_threshold, got "
                f"{self.vanishing_grad_threshold!r} >= {self.exploding_grad_threshold!r}."
            )
        _positive("condition_threshold", self.condition_threshold)
        _positive("term_imbalance_threshold", self.term_imbalance_threshold)
        _int_at_least("lanczos_iterations", self.lanczos_iterations, 1)
        _int_at_least("num_eigenvalues", self.num_eigenvalues, 1)
        _int_at_least("seed", self.seed, 0)
        if not isinstance(self.check_hessian, bool):
            raise ValueError(f"check_hessian must be a bool, got {self.check_hessian!r}.")

    def validate(
        self,
        loss_fn: Callable[[Any, Any], jax.Array],
        params: Any,
        args: Any = None,
        *,
        term_losses_fn: Callable[[Any, Any], jax.Array] | None = None,
        term_names: Sequence[str] | None = None,
    ) -> NumericalValidationResult:
        """Evaluate ``loss_fn(params, args)`` and its derivatives once and report findings.

        Non-finite values anywhere are reported, never raised; the curvature analysis is then
        skipped (with an ``"info"`` finding) because Lanczos on NaN products means nothing.

        Args:
            loss_fn: Scalar objective ``loss_fn(params, args)``.
            params: Pytree of float arrays.
            args: Data passed unchanged to ``loss_fn`` (and ``term_losses_fn``).
            term_losses_fn: Optional ``term_losses_fn(params, args) -> (K,)`` array of the
                individual loss terms (e.g. PDE residual, boundary, initial condition).
            term_names: Names of the ``K`` terms; ``"term0"``, ``"term1"``, ... if None.

        Returns:
            A :class:`NumericalValidationResult`.

        Raises:
            ValueError: If ``loss_fn`` does not return a scalar, ``params`` holds no floats,
                ``term_losses_fn`` does not return a 1-D array, ``term_names`` is given without
                ``term_losses_fn`` or its length differs from ``K``.
        """
        out = jax.eval_shape(loss_fn, params, args)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"loss_fn must return a scalar, got shape {getattr(out, 'shape', type(out))}; "
                "reduce it (e.g. jnp.mean) or pass the terms as term_losses_fn."
            )
        flat, _ = ravel_pytree(params)
        if flat.size == 0 or not jnp.issubdtype(flat.dtype, jnp.floating):
            raise ValueError("params must hold at least one float array, got none.")
        names = self._term_names(term_losses_fn, term_names, params, args)

        loss, grads = _value_and_grad(hashable(loss_fn), params, args)
        loss = float(loss)
        errors: list[Finding] = []
        others: list[Finding] = []
        nonfinite: dict[str, int] = {}

        if not np.isfinite(loss):
            nonfinite["loss"] = 1
            errors.append(
                Finding(
                    "error",
                    "nonfinite_loss",
                    f"loss is {loss}; check for overflow (exp of large values), division by "
                    "zero, or log/sqrt of non-positive values",
                )
            )
        for what, tree, code in (
            ("parameters contain", params, "nonfinite_params"),
            ("gradient contains", grads, "nonfinite_gradient"),
        ):
            prefix = "params" if code == "nonfinite_params" else "grads"
            for key, layer, leaf in _path_names(tree):
                nan, inf = _count_nonfinite(leaf)
                if nan + inf:
                    nonfinite[f"{prefix}{key}"] = nan + inf
                    errors.append(
                        Finding(
                            "error",
                            code,
                            f"{what} {_describe(nan, inf)} in layer '{layer}' (params{key})",
                        )
                    )

        leaf_norms = [
            (layer, float(jnp.linalg.norm(jnp.ravel(g)))) for _, layer, g in _path_names(grads)
        ]
        grad_norm = float(np.sqrt(sum(n**2 for _, n in leaf_norms)))
        if np.isfinite(grad_norm):
            others.extend(self._scale_findings(grad_norm, leaf_norms))

        top = lam_min = cond = None
        if self.check_hessian:
            if nonfinite:
                others.append(
                    Finding(
                        "info",
                        "hessian_skipped",
                        "Hessian analysis skipped: the loss, parameters or gradient are non-finite",
                    )
                )
            else:
                top, lam_min, cond, found = self._curvature(loss_fn, params, args, flat)
                others.extend(found)

        term_norms: dict[str, float] = {}
        if term_losses_fn is not None:
            term_norms, found = self._terms(term_losses_fn, names, params, args, nonfinite)
            errors.extend(f for f in found if f.severity == "error")
            others.extend(f for f in found if f.severity != "error")

        order = {"error": 0, "warning": 1, "info": 2}
        findings = tuple(errors + sorted(others, key=lambda f: order[f.severity]))
        return NumericalValidationResult(
            ok=not errors,
            findings=findings,
            loss=loss,
            grad_norm=grad_norm,
            nonfinite=nonfinite,
            top_eigenvalues=top,
            min_eigenvalue_estimate=lam_min,
            condition_estimate=cond,
            term_grad_norms=term_norms,
        )

    def _scale_findings(self, grad_norm: float, leaf_norms: list[tuple[str, float]]):
        layer, largest = max(leaf_norms, key=lambda t: t[1])
        if grad_norm > self.exploding_grad_threshold:
            yield Finding(
                "warning",
                "exploding_gradient",
                f"gradient norm {grad_norm:.1e} exceeds {self.exploding_grad_threshold:.1e} "
                f"(largest in layer '{layer}': {largest:.1e}): exploding gradients; lower the "
                "learning rate, clip gradients (optax.clip_by_global_norm) or rescale the loss",
            )
        elif grad_norm < self.vanishing_grad_threshold:
            yield Finding(
                "warning",
                "vanishing_gradient",
                f"gradient norm {grad_norm:.1e} is below {self.vanishing_grad_threshold:.1e}: "
                "vanishing gradients (or a stationary point); check saturating activations "
                "and the loss scale",
            )

    def _curvature(self, loss_fn, params, args, flat):
        dim, m = int(flat.size), min(self.lanczos_iterations, int(flat.size))
        # numpy's generator: jax.random would add about a second of compilation per shape.
        start = np.random.default_rng(self.seed).standard_normal((2, dim))
        start = jnp.asarray(start, flat.dtype)

        ritz = np.asarray(_ritz_values(hashable(loss_fn), params, args, start, m), dtype=float)
        if not np.all(np.isfinite(ritz)):
            finding = Finding(
                "warning",
                "nonfinite_hessian",
                "Hessian-vector products are non-finite although the gradient is finite; "
                "second derivatives overflow or are undefined (e.g. sqrt or abs at 0)",
            )
            return None, None, None, [finding]
        top = ritz[::-1][: self.num_eigenvalues].copy()
        lam_min = float(ritz[0])
        magnitudes = np.abs(ritz)
        cond = float(magnitudes.max() / magnitudes.min()) if magnitudes.min() > 0 else np.inf
        found = [
            Finding(
                "info",
                "hessian_spectrum",
                f"Hessian eigenvalue estimates ({m} Lanczos steps, {dim} parameters): largest "
                + ", ".join(f"{t:.1e}" for t in top)
                + f"; smallest {lam_min:.1e}; condition estimate {cond:.1e}",
            )
        ]
        if cond >= self.condition_threshold:
            found.append(
                Finding(
                    "warning",
                    "ill_conditioned",
                    f"Hessian condition estimate {cond:.1e}: ill-conditioned; consider "
                    "L-BFGS/Newton-CG or rescaling",
                )
            )
        if lam_min < -np.sqrt(np.finfo(flat.dtype).eps) * magnitudes.max():
            found.append(
                Finding(
                    "info",
                    "negative_curvature",
                    f"smallest Hessian eigenvalue estimate {lam_min:.1e} < 0: saddle point or "
                    "non-convex region; first-order methods may stall, Newton steps need damping",
                )
            )
        return top, lam_min, cond, found

    @staticmethod
    def _term_names(term_losses_fn, term_names, params, args) -> list[str]:
        if term_losses_fn is None:
            if term_names is not None:
                raise ValueError("term_names was given without term_losses_fn; pass both.")
            return []
        out = jax.eval_shape(term_losses_fn, params, args)
        shape = getattr(out, "shape", None)
        if shape is None or len(shape) != 1 or shape[0] < 1:
            raise ValueError(
                f"term_losses_fn must return a 1-D array of K >= 1 terms, got shape {shape}."
            )
        if term_names is None:
            return [f"term{i}" for i in range(shape[0])]
        names = [str(n) for n in term_names]
        if len(names) != shape[0]:
            raise ValueError(
                f"term_names must have one name per term ({shape[0]}), got {len(names)}: {names}."
            )
        return names

    def _terms(self, term_losses_fn, names, params, args, nonfinite):
        values, jac = _terms_and_jacobian(hashable(term_losses_fn), params, args)
        values = np.asarray(values, dtype=float)
        squares = sum(
            np.sum(np.asarray(leaf, dtype=float).reshape(len(names), -1) ** 2, axis=1)
            for leaf in jax.tree_util.tree_leaves(jac)
        )
        norms = {n: float(v) for n, v in zip(names, np.sqrt(squares), strict=True)}
        found = []
        for name, value in zip(names, values, strict=True):
            if not np.isfinite(value):
                nonfinite[f"term_losses['{name}']"] = 1
                found.append(
                    Finding("error", "nonfinite_term_loss", f"loss term '{name}' is {value}")
                )
            elif not np.isfinite(norms[name]):
                found.append(
                    Finding(
                        "error",
                        "nonfinite_term_gradient",
                        f"gradient of loss term '{name}' is non-finite",
                    )
                )
        finite = {n: v for n, v in norms.items() if np.isfinite(v)}
        if len(finite) >= 2:
            hi_name, hi = max(finite.items(), key=lambda t: t[1])
            lo_name, lo = min(finite.items(), key=lambda t: t[1])
            ratio = hi / lo if lo > 0 else np.inf
            if hi > 0 and ratio > self.term_imbalance_threshold:
                found.append(
                    Finding(
                        "warning",
                        "term_imbalance",
                        f"loss-term gradient norms are imbalanced: '{hi_name}' {hi:.1e} vs "
                        f"'{lo_name}' {lo:.1e} (ratio {ratio:.1e}); the smaller term barely "
                        "steers training; consider loss balancing (GradNorm, ReLoBRaLo) or "
                        "rescaling the terms",
                    )
                )
        return norms, found
