"""Locating the shared reference data."""

import pytest

from opifex import _data


def test_env_var_overrides(tmp_path, monkeypatch):
    (tmp_path / "nist_strd").mkdir()
    (tmp_path / "nist_strd" / "X.dat").write_text("x")
    monkeypatch.setenv(_data.ENV_VAR, str(tmp_path))
    assert _data.data_dir() == tmp_path
    assert _data.data_path("nist_strd", "X.dat").read_text() == "x"
    with pytest.raises(FileNotFoundError, match=r"missing: .*Y\.dat"):
        _data.data_path("nist_strd", "Y.dat")


def test_env_var_must_be_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(_data.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        _data.data_dir()


def test_default_is_shared_data_beside_project(monkeypatch):
    monkeypatch.delenv(_data.ENV_VAR, raising=False)
    try:
        path = _data.data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"shared data not present: {err}")
    assert path.name == "data" and path.parent.name == "shared"
    assert (path / "nist_strd").is_dir()
