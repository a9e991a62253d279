"""Implicit differentiation of a solution through its optimality condition.

At a solution ``x*(a)`` of ``F(x, a) = 0`` the implicit function theorem gives
``dx*/da = -(dF/dx)^{-1} dF/da``. The reverse-mode rule below solves one linear system
with the transposed Jacobian ``dF/dx`` instead of unrolling the solver's iterations
(Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def attach_implicit_grad(optimality_fn, params, args):
    """Return ``params`` unchanged, with a VJP w.r.t. ``args`` by implicit differentiation.

    Args:
        optimality_fn: ``(params, args) -> residual pytree`` that is zero at the solution
            (the gradient of the objective for a minimiser).
        params: The solution ``x*``; gradients with respect to it are treated as zero, since
            a converged solution does not depend on the starting point.
        args: The problem data the solution depends on.

    Returns:
        ``params``, differentiable with respect to the inexact leaves of ``args``.
    """
    return _implicit(optimality_fn, params, args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _implicit(optimality_fn, params, args):
    del optimality_fn, args
    return params


def _implicit_fwd(optimality_fn, params, args):
    return params, (params, args)


def _implicit_bwd(optimality_fn, residuals, cotangent):
    params, args = residuals
    flat_x, unravel = ravel_pytree(params)

    def residual_of_x(fx):
        return ravel_pytree(optimality_fn(unravel(fx), args))[0]

    # Dense Jacobian: the second-order solvers here target problems whose parameter count
    # makes an n x n factorisation cheap next to the solve itself.
    jac_x = jax.jacfwd(residual_of_x)(flat_x)
    g = ravel_pytree(cotangent)[0].astype(jac_x.dtype)
    lam = jnp.linalg.solve(jac_x.T, g)
    _, vjp_args = jax.vjp(lambda a: ravel_pytree(optimality_fn(params, a))[0], args)
    (args_bar,) = vjp_args(-lam)
    return jax.tree.map(jnp.zeros_like, params), args_bar


_implicit.defvjp(_implicit_fwd, _implicit_bwd)
