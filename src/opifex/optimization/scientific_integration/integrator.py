"""``ScientificComputingIntegrator``: one physics-informed training run, checked and measured.

The run is a sequence of stages: Adam (optionally with loss balancing), then a second-order
solver (dense self-scaled BFGS by default, or L-BFGS), then optionally a NysNewton-CG
polish. Each stage is compiled once and advanced in chunks of ``log_every`` iterations;
between chunks the host records the loss, the time (compile time kept apart) and, when a
reference solution is given, the relative L2 error, and updates the progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from opifex.optimization.core import Status
from opifex.optimization.scientific_integration._training import (
    BALANCING,
    Stage,
    adam_stage,
    solver_stage,
)
from opifex.optimization.scientific_integration.benchmarking import ScientificBenchmarkValidator
from opifex.optimization.scientific_integration.conservation import (
    ConservationCheckResult,
    ConservationLaw,
)
from opifex.optimization.scientific_integration.physics_loss import PhysicsInformedLoss
from opifex.optimization.scientific_integration.profiling import PhysicsProfiler, ProfileReport
from opifex.optimization.scientific_integration.validation import (
    NumericalValidationResult,
    NumericalValidator,
)
from opifex.optimization.second_order._bfgs import bfgs_solver
from opifex.optimization.second_order._lbfgs import lbfgs_solver
from opifex.optimization.second_order._newton_cg import nys_newton_cg_solver

SECOND_ORDER = ("bfgs", "lbfgs", "none")
POLISH = ("none", "nncg")


def _check(cond: bool, name: str, value, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {rule}, got {value!r}.")


def _count(name: str, value, lo: int = 0) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    _check(ok, name, value, f"an int >= {lo}")


@dataclass(frozen=True, kw_only=True)
class ScientificIntegrationConfig:
    """Settings of a :class:`ScientificComputingIntegrator` run.

    Attributes:
        adam_steps: Adam iterations first (0 skips the stage).
        adam_learning_rate: Adam step size.
        loss_balancing: ``"none"``, ``"annealing"`` (Wang, Teng & Perdikaris 2021),
            ``"relobralo"`` (Bischof & Kraus 2021) or ``"ntk"`` (Wang, Yu & Perdikaris 2022),
            applied to the Adam stage.
        balancing_every: Iterations between weight updates of annealing and NTK balancing.
        second_order: ``"bfgs"`` (dense, self-scaled), ``"lbfgs"`` or ``"none"``.
        second_order_steps: Iterations of the second-order stage.
        lbfgs_memory: Curvature pairs kept by L-BFGS.
        polish: ``"none"`` or ``"nncg"`` (NysNewton-CG after the second-order stage).
        polish_steps: NysNewton-CG iterations.
        nncg_rank: Rank of the Nyström sketch.
        nncg_mu: Damping of NysNewton-CG.
        gtol: Gradient tolerance of the second-order stages.
        log_every: Iterations per chunk (progress, history, error evaluation).
        validate: Run the :class:`NumericalValidator` on the final parameters.
        progress: Show a progress bar.
    """

    adam_steps: int = 1000
    adam_learning_rate: float = 1e-3
    loss_balancing: str = "none"
    balancing_every: int = 100
    second_order: str = "bfgs"
    second_order_steps: int = 5000
    lbfgs_memory: int = 100
    polish: str = "none"
    polish_steps: int = 0
    nncg_rank: int = 60
    nncg_mu: float = 1e-2
    gtol: float = 0.0
    log_every: int = 100
    validate: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        _count("adam_steps", self.adam_steps)
        _check(self.adam_learning_rate > 0, "adam_learning_rate", self.adam_learning_rate, "> 0")
        _check(
            self.loss_balancing in BALANCING,
            "loss_balancing",
            self.loss_balancing,
            f"one of {BALANCING}",
        )
        _count("balancing_every", self.balancing_every, 1)
        _check(
            self.second_order in SECOND_ORDER,
            "second_order",
            self.second_order,
            f"one of {SECOND_ORDER}",
        )
        _count("second_order_steps", self.second_order_steps)
        _count("lbfgs_memory", self.lbfgs_memory, 1)
        _check(self.polish in POLISH, "polish", self.polish, f"one of {POLISH}")
        _count("polish_steps", self.polish_steps)
        _count("nncg_rank", self.nncg_rank, 1)
        _check(self.nncg_mu > 0, "nncg_mu", self.nncg_mu, "> 0")
        _check(self.gtol >= 0, "gtol", self.gtol, ">= 0")
        _count("log_every", self.log_every, 1)
        total = self.adam_steps + self.second_order_steps * (self.second_order != "none")
        total += self.polish_steps * (self.polish != "none")
        _check(total > 0, "the total number of iterations", total, "> 0 (all stages are empty)")


class TrainingDivergedError(RuntimeError):
    """A run produced a non-finite loss or iterate; ``result.params`` is the last finite one."""

    def __init__(self, message: str, result: ScientificTrainingResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ScientificTrainingResult:
    """Outcome of :meth:`ScientificComputingIntegrator.train`.

    Attributes:
        params: Final (always finite) parameters.
        history: Dict of equal-length arrays: ``iteration``, ``seconds`` (run time, compile
            excluded), ``loss``, ``relative_l2`` (NaN without a reference), ``stage``.
        stages: Per stage: name, iterations, status name, run and compile seconds.
        relative_l2: Final relative L2 error against the reference (None without one).
        validation: Numerical validation of the final parameters (None if disabled).
        conservation: Check of each conservation law on the final outputs.
    """

    params: Any
    history: dict
    stages: tuple[dict, ...]
    relative_l2: float | None
    validation: NumericalValidationResult | None
    conservation: tuple[ConservationCheckResult, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        return float(sum(s["seconds"] for s in self.stages))

    def time_to_error(self, target: float) -> float | None:
        """Run seconds until the recorded error first fell to ``target`` (None if never)."""
        err = np.asarray(self.history["relative_l2"])
        hit = np.nonzero(err <= target)[0]
        return float(np.asarray(self.history["seconds"])[hit[0]]) if hit.size else None


class ScientificComputingIntegrator:
    """Train a physics-informed model with validation, profiling and conservation checks.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from opifex.optimization.scientific_integration import (
        ...     PhysicsInformedLoss, ResidualTerm, ScientificComputingIntegrator,
        ...     ScientificIntegrationConfig, apply_mlp, init_mlp, partial)
        >>> pde = lambda u, x, f: partial(u, x, 0, 2)[2] - f   # u'' = f on [0, 1]
        >>> loss = PhysicsInformedLoss(apply_mlp, (
        ...     ResidualTerm("pde", pde), ResidualTerm("bc", lambda u, x, _: u(x))))
        >>> x = jnp.linspace(0.0, 1.0, 16)[:, None]
        >>> batch = {"pde": {"points": x, "targets": -jnp.pi**2 * jnp.sin(jnp.pi * x[:, 0])},
        ...          "bc": {"points": jnp.array([[0.0], [1.0]]), "targets": None}}
        >>> config = ScientificIntegrationConfig(adam_steps=100, adam_learning_rate=1e-2,
        ...     second_order_steps=200, progress=False, validate=False)
        >>> result = ScientificComputingIntegrator(config=config).train(
        ...     loss, init_mlp(jax.random.PRNGKey(0), (1, 8, 1)), batch,
        ...     reference=(x, jnp.sin(jnp.pi * x[:, 0])))
        >>> bool(result.relative_l2 < 1e-2)
        True
    """

    def __init__(
        self,
        config: ScientificIntegrationConfig | None = None,
        *,
        validator: NumericalValidator | None = None,
    ):
        if config is not None and not isinstance(config, ScientificIntegrationConfig):
            raise TypeError(
                f"config must be a ScientificIntegrationConfig, got {type(config).__name__}."
            )
        self.config = config or ScientificIntegrationConfig()
        self.validator = validator or NumericalValidator()

    def stages(self, loss: PhysicsInformedLoss) -> list[Stage]:
        """The configured stages for ``loss`` (each compiled on first use)."""
        c = self.config
        out = []
        if c.adam_steps:
            out.append(
                adam_stage(
                    loss,
                    c.adam_steps,
                    c.adam_learning_rate,
                    balancing=c.loss_balancing,
                    update_every=c.balancing_every,
                )
            )
        if c.second_order == "bfgs" and c.second_order_steps:
            solver = bfgs_solver(loss.loss, max_iterations=c.second_order_steps, gtol=c.gtol)
            out.append(solver_stage("bfgs", solver, c.second_order_steps))
        elif c.second_order == "lbfgs" and c.second_order_steps:
            solver = lbfgs_solver(
                loss.loss,
                memory_size=c.lbfgs_memory,
                max_iterations=c.second_order_steps,
                gtol=c.gtol,
            )
            out.append(solver_stage("lbfgs", solver, c.second_order_steps))
        if c.polish == "nncg" and c.polish_steps:
            solver = nys_newton_cg_solver(
                loss.loss,
                max_iterations=c.polish_steps,
                gtol=c.gtol,
                rank=c.nncg_rank,
                mu=c.nncg_mu,
            )
            out.append(solver_stage("nncg", solver, c.polish_steps))
        return out

    def train(
        self,
        loss: PhysicsInformedLoss,
        params,
        batch,
        *,
        reference: tuple[Any, Any] | None = None,
        conservation_laws: Sequence[ConservationLaw] = (),
        outputs_fn: Callable | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> ScientificTrainingResult:
        """Run the configured stages on ``loss`` from ``params``.

        Args:
            loss: The physics-informed objective.
            params: Initial network parameters.
            batch: Training points per term (validated by ``loss.check_batch``).
            reference: Optional ``(points, values)``: the relative L2 error is recorded
                after every chunk.
            conservation_laws: Laws checked on ``outputs_fn(params)`` at the end.
            outputs_fn: ``params -> outputs`` for the conservation checks (default: the
                network on the reference points).
            callback: Called with each history record (a dict) as it is made.

        Returns:
            A :class:`ScientificTrainingResult`.

        Raises:
            ValueError: On bad training points, reference data or residual shapes (before
                any training).
            TrainingDivergedError: If the loss or parameters become non-finite; the error
                carries the last finite parameters and the validator's findings.
        """
        if not isinstance(loss, PhysicsInformedLoss):
            raise TypeError(f"loss must be a PhysicsInformedLoss, got {type(loss).__name__}.")
        batch = loss.check_batch(batch, params)
        evaluate = None
        if reference is not None:
            ref_points, ref_values = self._check_reference(reference)
            ref_norm = float(np.linalg.norm(ref_values))
            predict = jax.jit(loss.apply)

            def evaluate(p):
                pred = np.asarray(predict(p, ref_points))
                return float(np.linalg.norm(pred.reshape(ref_values.shape) - ref_values) / ref_norm)

        history = {"iteration": [], "seconds": [], "loss": [], "relative_l2": [], "stage": []}
        stage_info, elapsed, offset = [], 0.0, 0
        stages = self.stages(loss)
        total = sum(s.steps for s in stages)
        with _progress(self.config.progress) as bar:
            task = bar.add_task("training", total=total) if bar else None
            for stage in stages:
                t0 = time.perf_counter()
                carry = stage.start(params, batch)
                carry = stage.chunk(carry, batch, 0)  # compiles the chunk loop
                jax.block_until_ready(carry.value)
                compile_s, run_s, done = time.perf_counter() - t0, 0.0, 0
                while done < stage.steps and bool(carry.alive):
                    t0 = time.perf_counter()
                    n = min(self.config.log_every, stage.steps - done)
                    carry = stage.chunk(carry, batch, n)
                    jax.block_until_ready(carry.value)
                    run_s += time.perf_counter() - t0
                    done_now = stage.count(carry)
                    if bar:
                        bar.update(
                            task,
                            advance=done_now - done,
                            description=f"{stage.name} loss {float(carry.value):.3e}",
                        )
                    done = done_now
                    record = {
                        "iteration": offset + done,
                        "seconds": elapsed + run_s,
                        "loss": float(carry.value),
                        "relative_l2": evaluate(carry.params) if evaluate else float("nan"),
                        "stage": stage.name,
                    }
                    for key, value in record.items():
                        history[key].append(value)
                    if callback:
                        callback(record)
                    if done_now == 0 and not bool(carry.alive):
                        break
                carry = stage.finish(carry, batch)
                params = carry.params
                status = Status(int(carry.status))
                if status == Status.RUNNING and done >= stage.steps:
                    status = Status.MAX_STEPS
                stage_info.append(
                    {
                        "name": stage.name,
                        "iterations": done,
                        "status": status.name,
                        "seconds": run_s,
                        "compile_seconds": compile_s,
                    }
                )
                elapsed += run_s
                offset += done
                if status == Status.NONFINITE:
                    self._diverged(loss, params, batch, history, stage_info, stage.name)
        hist = {k: np.asarray(v) for k, v in history.items()}
        validation = None
        if self.config.validate:
            validation = self.validate(loss, params, batch)
        checks = ()
        if conservation_laws:
            if outputs_fn is None and reference is None:
                raise ValueError("conservation_laws need outputs_fn or reference points.")
            outputs = outputs_fn(params) if outputs_fn else loss.apply(params, ref_points)
            checks = tuple(law.check(outputs) for law in conservation_laws)
        final = evaluate(params) if evaluate else None
        return ScientificTrainingResult(params, hist, tuple(stage_info), final, validation, checks)

    def validate(self, loss: PhysicsInformedLoss, params, batch) -> NumericalValidationResult:
        """Numerical validation of ``params`` on ``loss`` (per-term gradient norms included)."""
        return self.validator.validate(
            loss.loss, params, batch, term_losses_fn=loss.term_losses, term_names=list(loss.names)
        )

    def profile(self, loss: PhysicsInformedLoss, params, batch) -> ProfileReport:
        """Compile time, step time, FLOPs, memory and collocation points per second of one
        loss-and-gradient evaluation."""
        points = sum(int(part["points"].shape[0]) for part in batch.values())
        step = jax.value_and_grad(loss.loss)
        return PhysicsProfiler().profile(step, params, batch, num_points=points)

    def _diverged(self, loss, params, batch, history, stage_info, stage_name):
        validation = self.validate(loss, params, batch)
        result = ScientificTrainingResult(
            params,
            {k: np.asarray(v) for k, v in history.items()},
            tuple(stage_info),
            None,
            validation,
        )
        findings = "\n".join(f"  {f}" for f in validation.findings) or "  (none)"
        raise TrainingDivergedError(
            f"training went non-finite in stage {stage_name!r}; stopped with the last finite "
            f"parameters kept (error.result.params). Validator findings at those parameters:\n"
            f"{findings}\nTry a smaller adam_learning_rate, loss balancing, or float64.",
            result,
        )

    @staticmethod
    def _check_reference(reference):
        if not (isinstance(reference, tuple) and len(reference) == 2):
            raise ValueError("reference must be a (points, values) tuple.")
        validator = ScientificBenchmarkValidator()
        points = np.asarray(reference[0])
        values = np.asarray(reference[1])
        validator.relative_l2(values, values)  # rejects non-finite reference values, by index
        bad = ~np.isfinite(points)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])[:10].tolist()
            raise ValueError(f"reference points contain non-finite rows at indices {rows}.")
        if points.shape[0] != values.shape[0]:
            raise ValueError(
                f"reference points and values differ in length: {points.shape[0]} vs "
                f"{values.shape[0]}."
            )
        return jnp.asarray(points), values

    @staticmethod
    def plot(results: dict[str, ScientificTrainingResult], path: str | Path, *, title: str = ""):
        """Loss and relative L2 error against run time for one or more labelled results."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if isinstance(results, ScientificTrainingResult):
            results = {"run": results}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, res in results.items():
            h = res.history
            axes[0].semilogy(h["seconds"], h["loss"], label=label)
            if np.isfinite(h["relative_l2"]).any():
                axes[1].semilogy(h["seconds"], h["relative_l2"], label=label)
        axes[0].set(xlabel="run time [s]", ylabel="loss", title="loss")
        axes[1].set(xlabel="run time [s]", ylabel="relative L2 error", title="error")
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


class _progress:
    """A rich progress bar, or nothing when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
