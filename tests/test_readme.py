"""The README quick start runs as written and prints what it says it prints."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    np.testing.assert_allclose(namespace["sol"].params, [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(namespace["fit"].params, [2.0, -1.5], atol=1e-10)
    assert namespace["dy"].shape == (50,)
    # The Poisson manufactured solution reaches 1e-4 by Adam then BFGS (the integrator's own
    # tests run shorter configurations and rely on this one for the accuracy claim).
    assert namespace["result"].relative_l2 < 1e-4
    assert [s["name"] for s in namespace["result"].stages] == ["adam", "bfgs"]
    assert namespace["result"].validation.ok
    np.testing.assert_allclose(namespace["mpc_sol"].control, [-1.0])
    np.testing.assert_array_equal(namespace["du0_dx0"], 0.0)
    np.testing.assert_allclose(namespace["optimized_params"]["w"], [1.0, -2.0, 0.5], atol=1e-5)


def test_readme_has_exactly_the_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set-up", 1)[1].split("## ", 1)[0]
    commands = re.findall(r"^(make \w+)", setup, flags=re.M)
    assert commands == ["make demo", "make test"]
