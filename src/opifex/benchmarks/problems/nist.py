"""NIST StRD nonlinear regression problems: parser, models and certified values.

The 19 problems of lower and average difficulty from the NIST Statistical Reference
Datasets (https://www.itl.nist.gov/div898/strd/nls/nls_main.shtml), read unmodified from
``<data>/nist_strd/<Name>.dat`` (copied from lmfit/lmfit-py @ fe389bbb, ``NIST_STRD/``).
Each model is a JAX residual ``r(b, (x, y)) = model(b, x) - y`` (``log y`` for Nelson), so
the data travel in ``args``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from opifex._data import data_path

SOURCE = "lmfit/lmfit-py @ fe389bbbd1fe936cd73742bd81fc6fce7ac92858, NIST_STRD/*.dat"

_TWO_PI = 2.0 * np.pi


def _misra1a(b, x):
    return b[0] * (1 - jnp.exp(-b[1] * x))


def _misra1b(b, x):
    return b[0] * (1 - (1 + b[1] * x / 2) ** (-2))


def _misra1c(b, x):
    return b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5))


def _misra1d(b, x):
    return b[0] * b[1] * x / (1 + b[1] * x)


def _chwirut(b, x):
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def _danwood(b, x):
    return b[0] * x ** b[1]


def _enso(b, x):
    return (
        b[0]
        + b[1] * jnp.cos(_TWO_PI * x / 12)
        + b[2] * jnp.sin(_TWO_PI * x / 12)
        + b[4] * jnp.cos(_TWO_PI * x / b[3])
        + b[5] * jnp.sin(_TWO_PI * x / b[3])
        + b[7] * jnp.cos(_TWO_PI * x / b[6])
        + b[8] * jnp.sin(_TWO_PI * x / b[6])
    )


def _gauss(b, x):
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def _hahn1(b, x):
    num = b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3
    return num / (1 + b[4] * x + b[5] * x**2 + b[6] * x**3)


def _kirby2(b, x):
    return (b[0] + b[1] * x + b[2] * x**2) / (1 + b[3] * x + b[4] * x**2)


def _lanczos(b, x):
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _mgh17(b, x):
    return b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4])


def _nelson(b, x):
    return b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1])


def _roszman1(b, x):
    return b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / jnp.pi


_MODELS: dict[str, Callable] = {
    "Misra1a": _misra1a,
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _lanczos,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": _danwood,
    "Misra1b": _misra1b,
    "Kirby2": _kirby2,
    "Hahn1": _hahn1,
    "Nelson": _nelson,
    "MGH17": _mgh17,
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Gauss3": _gauss,
    "Misra1c": _misra1c,
    "Misra1d": _misra1d,
    "Roszman1": _roszman1,
    "ENSO": _enso,
}

#: The 19 problems, lower difficulty first then average, as NIST lists them.
NIST_PROBLEMS: list[str] = list(_MODELS)


def _log_y_residual(model):
    def residual(b, args):
        x, y = args
        return model(b, x) - jnp.log(y)

    return residual


def _plain_residual(model):
    def residual(b, args):
        x, y = args
        return model(b, x) - y

    return residual


_RESIDUALS: dict[str, Callable] = {
    name: (_log_y_residual if name == "Nelson" else _plain_residual)(model)
    for name, model in _MODELS.items()
}


@dataclass(frozen=True)
class NistProblem:
    """One NIST StRD problem as read from its ``.dat`` file.

    Attributes:
        name: Dataset name (``"Misra1a"``).
        path: The file read.
        x: Predictor values, ``[N]`` (``[N, 2]`` for Nelson).
        y: Response values, ``[N]``.
        starts: The two NIST start points, ``[2, P]``.
        certified: Certified parameter values, ``[P]``.
        certified_std: Their certified standard deviations, ``[P]``.
        certified_rss: Certified residual sum of squares.
        residual: ``r(b, (x, y))`` as a JAX function.
    """

    name: str
    path: Path
    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray
    certified: np.ndarray
    certified_std: np.ndarray
    certified_rss: float
    residual: Callable

    @property
    def args(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``, the ``args`` of :attr:`residual`."""
        return self.x, self.y


_PARAM = re.compile(r"^\s*b(\d+)\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
_RSS = re.compile(r"^\s*Residual Sum of Squares:\s*(\S+)")
_NOBS = re.compile(r"^\s*Number of Observations:\s*(\d+)")
_DATA = re.compile(r"^Data:\s+y\b")


def parse_nist(text: str, name: str = "?") -> dict:
    """Parse the text of a NIST StRD nonlinear ``.dat`` file.

    Returns:
        A dict with ``starts [2, P]``, ``certified [P]``, ``certified_std [P]``,
        ``certified_rss``, ``x``, ``y``.

    Raises:
        ValueError: If a section is missing or the data count disagrees with the header.
    """
    lines = text.splitlines()
    params: dict[int, list[float]] = {}
    rss = nobs = None
    data_at = None
    for i, line in enumerate(lines):
        if (m := _PARAM.match(line)) is not None:
            params[int(m.group(1))] = [float(v) for v in m.groups()[1:]]
        elif (m := _RSS.match(line)) is not None:
            rss = float(m.group(1))
        elif (m := _NOBS.match(line)) is not None:
            nobs = int(m.group(1))
        elif _DATA.match(line):
            data_at = i
    if not params or rss is None or nobs is None or data_at is None:
        raise ValueError(
            f"{name}: not a NIST StRD nonlinear file (parameters found: {sorted(params)}, "
            f"RSS: {rss}, observations: {nobs}, data header: {data_at})."
        )
    if sorted(params) != list(range(1, len(params) + 1)):
        raise ValueError(f"{name}: parameters must be b1..bP, got b{sorted(params)}.")
    table = np.array([params[k] for k in sorted(params)], dtype=np.float64)
    rows = [ln.split() for ln in lines[data_at + 1 :] if ln.strip()]
    data = np.array(rows, dtype=np.float64)
    if data.shape[0] != nobs:
        raise ValueError(f"{name}: header says {nobs} observations, found {data.shape[0]}.")
    x = data[:, 1] if data.shape[1] == 2 else data[:, 1:]
    return {
        "starts": table[:, :2].T.copy(),
        "certified": table[:, 2].copy(),
        "certified_std": table[:, 3].copy(),
        "certified_rss": rss,
        "x": x,
        "y": data[:, 0].copy(),
    }


def load_nist(name: str) -> NistProblem:
    """Read problem ``name`` (one of :data:`NIST_PROBLEMS`) from the shared data folder.

    Raises:
        ValueError: For an unknown name.
        FileNotFoundError: If the data file is missing (naming the path looked at).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown NIST problem {name!r}; choose one of {NIST_PROBLEMS}.")
    path = data_path("nist_strd", f"{name}.dat")
    parsed = parse_nist(path.read_text(), name)
    return NistProblem(name=name, path=path, residual=_RESIDUALS[name], **parsed)


def log_relative_error(estimate, certified) -> np.ndarray:
    """NIST's LRE ``-log10(|b - b_cert| / |b_cert|)``: correct significant digits, in [0, 15]."""
    estimate = np.asarray(estimate, dtype=np.float64)
    certified = np.asarray(certified, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(estimate - certified) / np.abs(certified)
        lre = -np.log10(rel)
    lre = np.where(np.isnan(lre), 0.0, lre)
    return np.clip(lre, 0.0, 15.0)


__all__ = [
    "NIST_PROBLEMS",
    "SOURCE",
    "NistProblem",
    "load_nist",
    "log_relative_error",
    "parse_nist",
]
