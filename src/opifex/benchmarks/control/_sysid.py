"""System identification on real data: Cascaded Tanks and Silverbox (nonlinearbenchmark.org).

Each case fits an opifex model by simulation (output-error) least squares with
Levenberg-Marquardt and, in the same run, the ARX least-squares baseline; both are scored by
the free-run (simulation) RMSE on the official test segment, where the model may see only
the first few measured test outputs (5 for the tanks, 50 for Silverbox) to estimate its
initial state.

- Cascaded Tanks (Schoukens & Noel 2017; Ts = 4 s, 1024 train / 1024 test samples): a
  continuous-time grey box with Torricelli outflows ``dx1 = -k1 sqrt(x1) + k4 u + k6``,
  ``dx2 = k2 sqrt(x1) - k3 sqrt(x2)``, ``y = x2 + offset``, integrated by RK4 (two steps per
  sample), tank levels clipped at identified maxima, a fraction ``k5`` of the upper tank's
  overflow reaching the lower tank. Published: linear 0.59 V, best grey box 0.191 V.
- Silverbox (Wigren & Schoukens 2013; a Duffing-like electronic oscillator): a polynomial
  NARX (4 output and 4 input lags, quadratic and cubic terms in the last output, a constant)
  fitted by least squares and refined by simulation error. Multisine test and the arrow
  test without extrapolation (first 32000 samples), in mV.

Options (``--option name=value``): ``tanks_iterations`` (default 300), ``silverbox_iterations``
(default 20). ``--quick`` fits short segments with a few iterations: a smoke run of every code
path, not a measurement of accuracy.
"""

from __future__ import annotations

import time

import numpy as np

from opifex.benchmarks._harness import Context, Record

PEER = "ARX least squares"
TANKS_FILE = ("sysid", "cascaded_tanks", "dataBenchmark.csv")
TANKS_SOURCE = "forgi86/sysid-neural-continuous@956aa7e examples/CTS/data/dataBenchmark.csv"
SILVERBOX_FILE = ("sysid", "silverbox", "SNLS80mV.csv")
SILVERBOX_SOURCE = "forgi86/pytorch-ident@f00d79f examples/statespace/silverbox/SilverboxFiles"


def arx_baseline(y_train, u_train, y_test, u_test, *, na: int, nb: int, n_init: int, dt=1.0):
    """ARX least squares fitted on the training record, simulated on the test record from
    the initial state estimated from its first ``n_init`` outputs.

    Returns:
        ``(fitted, prediction (T, 1), rmse)``.
    """
    from opifex.optimization.control.system_id import ARX, SystemIdentifier, rmse

    model = ARX(na, nb, bias=True, dt=dt)
    fitted = SystemIdentifier(model=model, loss="one_step").fit(y_train, u_train)
    pred = np.asarray(fitted.predict(u_test, initial_outputs=y_test[:n_init]))
    return fitted, pred, float(rmse(np.reshape(y_test, pred.shape), pred))


def _tanks_model():
    import jax.numpy as jnp

    from opifex.optimization.control._sysid_base import rk4_step
    from opifex.optimization.control.system_id import GreyBox

    def sqrt_level(x):
        return jnp.sqrt(jnp.maximum(x, 1e-6))

    def vector_field(x, u, p):
        k = p["k"]
        inflow = k[3] * u[0] + k[5]
        return jnp.stack(
            [-k[0] * sqrt_level(x[0]) + inflow, k[1] * sqrt_level(x[0]) - k[2] * sqrt_level(x[1])]
        )

    def step(x, u, p):
        # Overflow is a hard limit of each level; part of the upper tank's spill reaches the
        # lower tank (k5), the rest leaves the system.
        x_new = rk4_step(vector_field, x, u, p, 4.0, 2)
        spill = jnp.maximum(x_new[0] - p["level_max"][0], 0.0)
        upper = jnp.clip(x_new[0], 0.0, p["level_max"][0])
        lower = jnp.clip(x_new[1] + p["k"][4] * spill, 0.0, p["level_max"][1])
        return jnp.stack([upper, lower])

    start = {
        "k": jnp.array([0.05, 0.05, 0.05, 0.03, 0.5, 0.0]),
        "level_max": jnp.array([10.0, 10.0]),
        "offset": jnp.zeros(1),
    }
    return GreyBox(
        step,
        start,
        state_dim=2,
        input_dim=1,
        dt=4.0,
        continuous=False,
        output_fn=lambda x, p: x[1:2] + p["offset"],
        output_dim=1,
        initial_state_fn=lambda y0, p: jnp.concatenate([y0, y0]) - p["offset"][0],
    )


def _read_csv(ctx: Context, parts, source, reader=np.genfromtxt, **kwargs) -> np.ndarray:
    from opifex._data import data_path

    path = data_path(*parts)
    ctx.console.print(f"[dim]data: {path} ({source})[/dim]")
    return reader(path, delimiter=",", **kwargs)


def _plot(ctx: Context, name: str, title: str, t, measured, curves, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t, measured, color="black", lw=1.2, label="measured")
    for label, values in curves.items():
        ax.plot(t, values, lw=1.0, label=label)
    ax.set(title=title, xlabel="sample", ylabel=unit)
    ax.legend(loc="best", fontsize=8)
    ctx.save_figure(fig, name)


def _tanks(ctx: Context) -> list[Record]:
    from opifex.optimization.control.system_id import SystemIdentifier, fit_percent, rmse

    data = _read_csv(ctx, TANKS_FILE, TANKS_SOURCE, names=True)
    n = 64 if ctx.quick else len(data)
    u_train, y_train = data["uEst"][:n], data["yEst"][:n]
    u_test, y_test = data["uVal"][:n], data["yVal"][:n]
    iterations = ctx.option("tanks_iterations", 3 if ctx.quick else 300, int)

    t0 = time.perf_counter()
    _, arx_pred, arx_rmse = arx_baseline(y_train, u_train, y_test, u_test, na=5, nb=5, n_init=5)
    arx_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    ident = SystemIdentifier(model=_tanks_model(), max_iterations=iterations)
    fitted = ident.fit(y_train, u_train)
    fit_time = time.perf_counter() - t0
    pred = np.asarray(fitted.predict(u_test, initial_outputs=y_test[:5]))[:, 0]
    train_pred = np.asarray(fitted.predict(u_train, x0=fitted.initial_states[0]))[:, 0]
    _plot(
        ctx,
        "cascaded_tanks_test",
        "Cascaded Tanks: test simulation",
        np.arange(n),
        y_test,
        {"grey box (opifex LM)": pred, PEER: arx_pred[:, 0]},
        "V",
    )
    return [
        Record(
            "cascaded tanks: test simulation RMSE, grey box",
            float(rmse(y_test, pred)),
            "V",
            target="<= 0.30",
            peer=PEER,
            peer_value=arx_rmse,
        ),
        Record(
            "cascaded tanks: test fit, grey box",
            float(fit_percent(y_test, pred)),
            "%",
            peer=PEER,
            peer_value=float(fit_percent(y_test, arx_pred[:, 0])),
        ),
        Record(
            "cascaded tanks: train simulation RMSE, grey box", float(rmse(y_train, train_pred)), "V"
        ),
        Record(
            "cascaded tanks: fit time incl. compile, grey box",
            fit_time,
            "s",
            peer=PEER,
            peer_value=arx_time,
        ),
    ]


def _silverbox(ctx: Context) -> list[Record]:
    from opifex.optimization.control.system_id import ARX, SystemIdentifier, rmse

    # loadtxt reads the 131072 rows several times faster than genfromtxt, to the same values.
    data = _read_csv(
        ctx, SILVERBOX_FILE, SILVERBOX_SOURCE, reader=np.loadtxt, skiprows=1, usecols=(0, 1)
    )
    u, y = data[:, 0], data[:, 1]
    block_u, block_y = u[40650:127400], y[40650:127400]
    split = int(0.75 * len(block_u))
    train = (block_y[:split], block_u[:split])
    tests = {
        "multisine": (block_y[split:], block_u[split:], "<= 1.5"),
        "arrow no-extrapolation": (y[100:32100], u[100:32100], "<= 1.0"),
        "arrow full": (y[100:40575], u[100:40575], None),
    }
    if ctx.quick:
        train = (train[0][:500], train[1][:500])
        tests = {k: (yy[:300], uu[:300], tgt) for k, (yy, uu, tgt) in tests.items()}
    iterations = ctx.option("silverbox_iterations", 1 if ctx.quick else 20, int)

    t0 = time.perf_counter()
    arx = SystemIdentifier(model=ARX(4, 4, bias=True), loss="one_step").fit(*train)
    arx_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = ARX(4, 4, degree=3, nonlinear_lags=1, bias=True)
    fitted = SystemIdentifier(model=model, max_iterations=iterations).fit(*train)
    fit_time = time.perf_counter() - t0

    records = []
    for name, (y_test, u_test, target) in tests.items():
        pred = np.asarray(fitted.predict(u_test, initial_outputs=y_test[:50]))[:, 0]
        base = np.asarray(arx.predict(u_test, initial_outputs=y_test[:50]))[:, 0]
        records.append(
            Record(
                f"silverbox {name}: test simulation RMSE, polynomial NARX",
                1e3 * float(rmse(y_test, pred)),
                "mV",
                target=target,
                peer=PEER,
                peer_value=1e3 * float(rmse(y_test, base)),
            )
        )
        if name == "multisine":
            window = slice(0, min(600, len(y_test)))
            _plot(
                ctx,
                "silverbox_multisine_test",
                "Silverbox multisine test: simulation (first samples)",
                np.arange(len(y_test))[window],
                1e3 * y_test[window],
                {"NARX (opifex LM)": 1e3 * pred[window], PEER: 1e3 * base[window]},
                "mV",
            )
    records.append(
        Record(
            "silverbox: fit time incl. compile, polynomial NARX",
            fit_time,
            "s",
            peer=PEER,
            peer_value=arx_time,
        )
    )
    return records


def run(ctx: Context) -> list[Record]:
    """Cascaded Tanks and Silverbox records (see the module docstring)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return _tanks(ctx) + _silverbox(ctx)
