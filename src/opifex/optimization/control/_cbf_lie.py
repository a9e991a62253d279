"""Barrier conditions as linear rows in the input: Lie derivatives by automatic differentiation.

For ``dx/dt = f(x) + g(x) u`` and a barrier of relative degree 1 the condition
``L_f h + L_g h u + alpha(h) >= 0`` (Ames et al. 2017, Def. 5) is the row
``a = L_g h = grad h' g``, ``b = -(L_f h + alpha(h))``. For relative degree 2 the
high-order barrier of Xiao & Belta (2019, Def. 4) uses ``psi_1 = L_f h + alpha_1(h)`` and the
row of ``L_f psi_1 + L_g psi_1 u + alpha_2(psi_1) >= 0``; ``grad psi_1`` holds the second
derivatives of ``h`` and comes from differentiating ``psi_1`` once more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def class_k(alpha: float | Callable) -> Callable:
    """``alpha`` as a class-K function: a positive number ``c`` means ``h -> c h``."""
    if callable(alpha):
        return alpha
    return lambda h: alpha * h


def lie_row(f, g, h, alpha, x, args):
    """``(a, b, h(x))`` of the relative-degree-1 condition ``a u >= b``."""
    value, grad = jax.value_and_grad(h)(x, args)
    return grad @ g(x, args), -(grad @ f(x, args) + alpha(value)), value


def barrier_rows(
    f: Callable, g: Callable, barriers: Sequence[Any], x: jax.Array, args: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Stack the rows ``A u >= b`` of every barrier; also return the barrier values ``h(x)``."""
    rows, rhs, values = [], [], []
    for cbf in barriers:
        alpha1 = class_k(cbf.alpha)
        if cbf.relative_degree == 1:
            a, b, value = lie_row(f, g, cbf.h, alpha1, x, args)
        else:

            def psi1(xx, aa, h=cbf.h, alpha1=alpha1):
                value, grad = jax.value_and_grad(h)(xx, aa)
                return grad @ f(xx, aa) + alpha1(value)

            alpha2 = class_k(cbf.alpha if cbf.alpha2 is None else cbf.alpha2)
            a, b, _ = lie_row(f, g, psi1, alpha2, x, args)
            value = cbf.h(x, args)
        rows.append(a)
        rhs.append(b)
        values.append(value)
    return jnp.stack(rows), jnp.stack(rhs), jnp.stack(values)
