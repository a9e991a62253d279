"""Where the shared reference data lives (``../shared/data`` beside the project root)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "OPIFEX_DATA"


def data_dir() -> Path:
    """Return the reference-data folder.

    ``$OPIFEX_DATA`` wins; otherwise ``../shared/data`` relative to the project root (found
    from this file for an editable install, then from the working directory).

    Raises:
        FileNotFoundError: Naming every place looked at, when none exists.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${ENV_VAR}={env} is not a folder.")
        return path
    candidates = [
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
        Path.cwd() / ".." / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"reference data not found (looked in {looked}); set ${ENV_VAR} to the data folder."
    )


def data_path(*parts: str) -> Path:
    """Return ``data_dir()/parts...``, raising ``FileNotFoundError`` if it does not exist."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"reference data file missing: {path}")
    return path
