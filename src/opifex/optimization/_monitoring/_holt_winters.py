"""Additive Holt-Winters forecasting: filter, grid fit and rolling (past-only) refits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_GRID", "fit_holt_winters", "holt_winters_forecast", "rolling_holt_winters"]

# (alpha, beta, gamma) candidates of the grid fit: level, trend and season smoothing.
DEFAULT_GRID: tuple[tuple[float, float, float], ...] = tuple(
    (a, b, g)
    for a in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    for b in (0.0, 0.01, 0.05, 0.1, 0.2)
    for g in (0.0, 0.05, 0.1, 0.2, 0.4)
)
# Smoothing used before the first fit has data: a middle-of-the-grid guess, never fitted on
# the future.
_UNFIT = (0.3, 0.05, 0.1)


def _hw_filter(y: jax.Array, smoothing: jax.Array, m: int, horizon: int) -> jax.Array:
    """Forecasts ``(T, horizon)``; row ``t`` predicts ``y[t+1 .. t+horizon]`` from ``y[:t+1]``."""
    n = y.shape[0]
    # Initial state from the first two seasons, exact for linear trend + zero-mean season:
    # the first season's mean is the trend line at its centre c = (m - 1) / 2.
    c = (m - 1) / 2
    mean1, mean2 = jnp.mean(y[:m]), jnp.mean(y[m : 2 * m])
    trend = (mean2 - mean1) / m
    season = y[:m] - (mean1 + trend * (jnp.arange(m) - c))
    level = mean1 + trend * (m - 1 - c)
    ahead = jnp.arange(1, horizon + 1)

    def body(carry, inp):
        level, trend, season = carry
        t, y_t, w = inp
        phase = t % m
        s_old = season[phase]
        new_level = w[0] * (y_t - s_old) + (1 - w[0]) * (level + trend)
        new_trend = w[1] * (new_level - level) + (1 - w[1]) * trend
        season = season.at[phase].set(w[2] * (y_t - level - trend) + (1 - w[2]) * s_old)
        forecast = new_level + ahead * new_trend + season[(t + ahead) % m]
        return (new_level, new_trend, season), forecast

    _, out = jax.lax.scan(body, (level, trend, season), (jnp.arange(m, n), y[m:], smoothing[m:]))
    out = jnp.concatenate([jnp.full((m, horizon), jnp.nan, y.dtype), out])
    # Rows before 2m - 1 depend on the initial state, which saw y[:2m]: not forecasts.
    return jnp.where((jnp.arange(n) >= 2 * m - 1)[:, None], out, jnp.nan)


def _check_series(y, m: int, minimum: int, name: str = "y") -> jax.Array:
    _int_at_least("season_length", m, 1)
    arr = jnp.asarray(y)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if arr.ndim not in (1, 2) or arr.shape[-1] < minimum:
        raise ValueError(
            f"{name} must be a series (or a batch of series) of length >= {minimum} "
            f"(two seasons of {m} plus one), got shape {arr.shape}."
        )
    return arr


def holt_winters_forecast(
    y: jax.typing.ArrayLike, smoothing, *, season_length: int, horizon: int = 1
) -> jax.Array:
    """Additive Holt-Winters forecasts made after each observation.

    With season length ``m``, level ``l``, trend ``b`` and seasonal terms ``s``::

        l_t = alpha (y_t - s_{t-m}) + (1 - alpha) (l_{t-1} + b_{t-1})
        b_t = beta (l_t - l_{t-1}) + (1 - beta) b_{t-1}
        s_t = gamma (y_t - l_{t-1} - b_{t-1}) + (1 - gamma) s_{t-m}
        yhat_{t+h|t} = l_t + h b_t + s_{t+h-m(k+1)},  k = floor((h - 1) / m)

    initialised from the first two seasons (level and trend from their means, seasonal terms
    from the first season's deviations from the trend line), so a noiseless series
    ``a + b t + s_{t mod m}`` with zero-mean ``s`` is forecast exactly for any smoothing.

    Args:
        y: ``(T,)`` series, ``T >= 2 m``.
        smoothing: ``(alpha, beta, gamma)``, or ``(T, 3)`` per step (row ``t`` updates with
            ``y[t]``), each in ``[0, 1]``.
        season_length: ``m >= 1``.
        horizon: Steps ahead ``H >= 1``.

    Returns:
        ``(T, H)``: row ``t`` holds ``yhat_{t+1|t} .. yhat_{t+H|t}``; NaN for ``t < 2m - 1``.

    Raises:
        ValueError: On a short series or smoothing of the wrong shape.

    Example:
        >>> t = jnp.arange(40.0)
        >>> y = 2.0 + 0.5 * t + jnp.tile(jnp.array([1.0, -2.0, 0.0, 1.0]), 10)
        >>> f = holt_winters_forecast(y, (0.3, 0.1, 0.2), season_length=4, horizon=2)
        >>> print(round(float(f[39, 1]), 6), round(2.0 + 0.5 * 41 - 2.0, 6))
        20.5 20.5

    References:
        Hyndman & Athanasopoulos, "Forecasting: Principles and Practice" (3rd ed.), 8.3;
        Winters, "Forecasting sales by exponentially weighted moving averages", 1960.
    """
    _int_at_least("horizon", horizon, 1)
    arr = _check_series(y, season_length, 2 * season_length)
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {arr.shape}.")
    w = jnp.asarray(smoothing, arr.dtype)
    if w.shape == (3,):
        w = jnp.broadcast_to(w, (arr.shape[0], 3))
    if w.shape != (arr.shape[0], 3):
        raise ValueError(f"smoothing must have shape (3,) or ({arr.shape[0]}, 3), got {w.shape}.")
    return _jit_filter(arr, w, season_length, horizon)


_jit_filter = jax.jit(_hw_filter, static_argnums=(2, 3))


@jax.jit
def _argmin_grid(y, grid, m_marker):
    """Per series of ``y (K, L)``, the grid row with the least one-step SSE over ``t >= 2m``.

    The recursion of :func:`_hw_filter` with every (series, candidate) pair as one batch
    dimension of the carry, accumulating the squared error instead of storing forecasts:
    the same numbers, one small scan to compile. The one-step forecast of ``y_t`` is read
    from the state before ``y_t`` updates it.
    """
    m = m_marker.shape[0]
    k, n = y.shape
    c = (m - 1) / 2
    mean1, mean2 = jnp.mean(y[:, :m], axis=1), jnp.mean(y[:, m : 2 * m], axis=1)
    trend = (mean2 - mean1) / m
    season = y[:, :m] - (mean1[:, None] + trend[:, None] * (jnp.arange(m) - c))
    level = mean1 + trend * (m - 1 - c)
    shape = (k, grid.shape[0])
    carry = (
        jnp.broadcast_to(level[:, None], shape),
        jnp.broadcast_to(trend[:, None], shape),
        jnp.broadcast_to(season[:, None, :], (*shape, m)),
        jnp.zeros(shape, y.dtype),
    )
    alpha, beta, gamma = grid[:, 0], grid[:, 1], grid[:, 2]

    def body(carry, inp):
        level, trend, season, sse = carry
        t, y_t = inp
        phase = t % m
        s_old = season[..., phase]
        err = y_t[:, None] - (level + trend + s_old)
        sse = sse + jnp.where(t >= 2 * m, err * err, 0.0)
        new_level = alpha * (y_t[:, None] - s_old) + (1 - alpha) * (level + trend)
        new_trend = beta * (new_level - level) + (1 - beta) * trend
        new_s = gamma * (y_t[:, None] - level - trend) + (1 - gamma) * s_old
        return (new_level, new_trend, season.at[..., phase].set(new_s), sse), None

    (*_, sse), _ = jax.lax.scan(body, carry, (jnp.arange(m, n), y[:, m:].T))
    return grid[jnp.argmin(jnp.where(jnp.isfinite(sse), sse, jnp.inf), axis=-1)]


def fit_holt_winters(y: jax.typing.ArrayLike, *, season_length: int, grid=DEFAULT_GRID):
    """Smoothing ``(alpha, beta, gamma)`` minimising the one-step squared error on ``y``.

    A grid search (every candidate filtered at once with ``vmap``): the SSE surface of
    Holt-Winters is flat and multimodal, where a grid is robust and compiles once.

    Args:
        y: ``(L,)`` series or ``(K, L)`` batch, ``L >= 2 m + 1``.
        season_length: ``m >= 1``.
        grid: Candidate ``(alpha, beta, gamma)`` triples in ``[0, 1]``.

    Returns:
        ``(3,)``, or ``(K, 3)`` for a batch.

    Raises:
        ValueError: On a short series or a grid value outside ``[0, 1]``.

    Example:
        >>> y = jnp.tile(jnp.array([1.0, 5.0, 3.0]), 8)
        >>> w = fit_holt_winters(y, season_length=3)
        >>> w.shape
        (3,)
    """
    arr = _check_series(y, season_length, 2 * season_length + 1)
    g = np.asarray(grid, dtype=float)
    if g.ndim != 2 or g.shape[1] != 3 or g.shape[0] == 0 or np.any((g < 0) | (g > 1)):
        raise ValueError(f"grid must be (G, 3) triples in [0, 1], got shape {g.shape}.")
    batch = arr[None] if arr.ndim == 1 else arr
    best = _argmin_grid(batch, jnp.asarray(g, arr.dtype), jnp.zeros(season_length))
    return best[0] if arr.ndim == 1 else best


def rolling_holt_winters(
    y: jax.typing.ArrayLike,
    *,
    season_length: int,
    horizon: int,
    fit_window: int,
    refit_every: int,
    grid=DEFAULT_GRID,
) -> tuple[jax.Array, jax.Array]:
    """Holt-Winters forecasts whose smoothing is refitted on the past only.

    At steps ``k = fit_window, fit_window + refit_every, ...`` the smoothing is fitted on
    ``y[k - fit_window : k]`` and used to update with ``y[k], y[k+1], ...`` until the next
    refit; before the first fit a fixed guess is used. Row ``t`` of the forecasts therefore
    depends on ``y[: t + 1]`` only.

    Args:
        y: ``(T,)`` series.
        season_length: ``m >= 1``.
        horizon: Steps ahead ``H >= 1``.
        fit_window: Length of each fitting window, ``>= 2 m + 1``.
        refit_every: Steps between refits, ``>= 1``.
        grid: As in :func:`fit_holt_winters`.

    Returns:
        ``(forecasts (T, H), smoothing (T, 3))``.

    Example:
        >>> y = jnp.tile(jnp.array([1.0, 5.0, 3.0]), 10)
        >>> f, w = rolling_holt_winters(y, season_length=3, horizon=1, fit_window=9,
        ...                             refit_every=6)
        >>> print(round(float(f[29, 0]), 6))
        1.0
    """
    _int_at_least("fit_window", fit_window, 2 * season_length + 1)
    _int_at_least("refit_every", refit_every, 1)
    arr = _check_series(y, season_length, 2 * season_length)
    n = arr.shape[0]
    smoothing = np.tile(np.asarray(_UNFIT), (n, 1))
    starts = np.arange(fit_window, n, refit_every)
    if starts.size:
        host = np.asarray(arr)
        windows = np.stack([host[k - fit_window : k] for k in starts])
        fits = np.asarray(fit_holt_winters(windows, season_length=season_length, grid=grid))
        for k, w in zip(starts, fits, strict=True):
            smoothing[k:] = w
    w = jnp.asarray(smoothing, arr.dtype)
    return holt_winters_forecast(arr, w, season_length=season_length, horizon=horizon), w


def _fail(name: str, value, rule: str) -> None:
    raise ValueError(f"{name} must be {rule}, got {value!r}.")


def _int_at_least(name: str, value, lo: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= lo):
        _fail(name, value, f"an int >= {lo}")


def _positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        _fail(name, value, "a number > 0")
