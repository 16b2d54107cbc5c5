"""Step time and peak memory of private training against non-private training and Opacus.

Each cell of the benchmark is one zoo model at one batch size. In a cell,
every variant (``VARIANTS``) trains its own copy of the same initial model on
the same random batch:

- ``nonprivate``: plain SGD on the mean cross-entropy;
- ``opacus-dpsgd-hooks`` and ``opacus-dpsgd-ghost``: Opacus's
  ``PrivacyEngine`` in its hooks and ghost modes (DP-SGD, flat clipping);
- ``lmdpsgd-hooks`` and ``lmdpsgd-ghost``: ``LMDPEngine`` with non-uniform
  layer weights in each mode.

Step time is the median wall-clock time of one whole step (``zero_grad``,
forward, backward, clipping, noise, optimizer update). The variants run in
rounds, one step of each per round in a rotating order, so that load from
other processes on the machine affects every variant alike. The first
``warmup_rounds`` rounds are not timed. Ratios divide by the nonprivate median
of the same cell and the same process.

Peak memory is the largest amount of tensor memory held during one step on
top of what was held when it started (parameters, optimizer state and the
batch are not counted). It is read from the allocation events that
``torch.profiler`` records with ``profile_memory=True``, in one extra step
after the timed ones. Memory that torch does not allocate through its CPU
allocator (Python objects, oneDNN scratch space) is not counted.

By default each cell runs in its own Python process, so that a cell that runs
out of memory is reported as failed instead of ending the benchmark.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmdp.errors import ConfigError

logger = logging.getLogger(__name__)

# Input shapes of the benchmark: a flat 28×28 image, a grayscale 28×28 image and a 32×32 colour image.
BENCH_MODELS: dict[str, tuple[int, ...]] = {"mlp": (784,), "cnn": (1, 28, 28), "resnet": (3, 32, 32)}
NUM_CLASSES = 10


@dataclass(frozen=True)
class Variant:
    """One way to train: the method, the library that runs it and its per-example gradient mode."""

    name: str
    method: str
    library: str
    grad_sample_mode: str | None


VARIANTS: tuple[Variant, ...] = (
    Variant("nonprivate", "nonprivate", "torch", None),
    Variant("opacus-dpsgd-hooks", "dpsgd", "opacus", "hooks"),
    Variant("opacus-dpsgd-ghost", "dpsgd", "opacus", "ghost"),
    Variant("lmdpsgd-hooks", "lmdpsgd", "lmdp", "hooks"),
    Variant("lmdpsgd-ghost", "lmdpsgd", "lmdp", "ghost"),
)
_VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run: the cells, the variants and the number of timed steps.

    A cell stops its timed rounds after ``min_repeats`` rounds once it has
    spent ``cell_time_budget_s`` seconds on them, and after ``repeats`` rounds
    in any case, so fast cells get many timed steps and slow ones few. ``num_threads`` sets ``torch.set_num_threads`` in every cell;
    ``None`` keeps torch's default.
    """

    models: tuple[str, ...] = ("mlp", "cnn", "resnet")
    batch_sizes: tuple[int, ...] = (64, 256, 1024)
    variants: tuple[str, ...] = tuple(variant.name for variant in VARIANTS)
    warmup_rounds: int = 1
    repeats: int = 40
    min_repeats: int = 3
    cell_time_budget_s: float = 15.0
    num_threads: int | None = None
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    seed: int = 0
    isolate_cells: bool = True
    include_experiment: bool = False

    def __post_init__(self) -> None:
        problems = []
        unknown_models = [name for name in self.models if name not in BENCH_MODELS]
        if not self.models or unknown_models:
            problems.append(f"models must be a non-empty subset of {list(BENCH_MODELS)}; got {list(self.models)}")
        if not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            problems.append(f"batch_sizes must be integers ≥ 1; got {list(self.batch_sizes)}")
        unknown_variants = [name for name in self.variants if name not in _VARIANTS_BY_NAME]
        if unknown_variants or "nonprivate" not in self.variants:
            problems.append(
                f"variants must include 'nonprivate' (the ratios divide by it) and come from {list(_VARIANTS_BY_NAME)}; "
                f"got {list(self.variants)}"
            )
        if self.warmup_rounds < 0:
            problems.append(f"warmup_rounds must be ≥ 0; got {self.warmup_rounds}")
        if not 1 <= self.min_repeats <= self.repeats:
            problems.append(f"need 1 ≤ min_repeats ≤ repeats; got min_repeats={self.min_repeats}, repeats={self.repeats}")
        if not self.cell_time_budget_s > 0:
            problems.append(f"cell_time_budget_s must be > 0; got {self.cell_time_budget_s}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be ≥ 1 or None for torch's default; got {self.num_threads}")
        if problems:
            raise ConfigError("Invalid benchmark config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


QUICK_CONFIG = BenchConfig(models=("mlp", "cnn"), batch_sizes=(256,), cell_time_budget_s=10.0)
"""The subset that ``lmdp bench --quick`` runs: the two cells with step-time targets."""


@dataclass(frozen=True)
class VariantMeasurement:
    """Step time and peak memory of one variant in one cell, with ratios to ``nonprivate``."""

    variant: str
    median_step_time_s: float
    step_times_s: tuple[float, ...]
    peak_step_memory_bytes: int | None
    time_ratio: float | None = None
    memory_ratio: float | None = None


@dataclass(frozen=True)
class CellResult:
    """All variants of one model at one batch size; ``error`` is set when the cell failed."""

    model: str
    batch_size: int
    measurements: tuple[VariantMeasurement, ...] = ()
    timed_rounds: int = 0
    load_average: tuple[float, ...] | None = None
    wall_time_s: float = 0.0
    error: str | None = None

    def measurement(self, variant: str) -> VariantMeasurement | None:
        return next((m for m in self.measurements if m.variant == variant), None)


@dataclass(frozen=True)
class ExperimentTiming:
    """Wall-clock time of the whole default ``lmdp run`` and of its risk-estimation phase."""

    command: str
    total_s: float | None
    risk_estimation_s: float | None
    error: str | None = None


@dataclass(frozen=True)
class TargetCheck:
    """One performance target: the measured ratio, its limit and whether it is met."""

    description: str
    model: str
    batch_size: int
    value: float | None
    limit: float

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit


@dataclass(frozen=True)
class BenchReport:
    """The cells, the targets, the machine and the versions of one benchmark run."""

    config: BenchConfig
    cells: tuple[CellResult, ...]
    targets: tuple[TargetCheck, ...]
    machine: dict
    versions: dict
    started_at: str
    wall_time_s: float
    experiment: ExperimentTiming | None = None

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "machine": self.machine,
            "versions": self.versions,
            "started_at": self.started_at,
            "wall_time_s": self.wall_time_s,
            "cells": [asdict(cell) for cell in self.cells],
            "targets": [{**asdict(target), "met": target.met} for target in self.targets],
            "experiment": None if self.experiment is None else asdict(self.experiment),
        }


# -- one cell -------------------------------------------------------------


class _Trainer:
    """One variant, ready to take steps on a fixed batch."""

    def __init__(self, zero_grad: Callable[[], None], step: Callable[[], None]):
        self.zero_grad = zero_grad
        self.step = step


def _layer_weights(taps: Sequence[str]) -> dict[str, float]:
    """Return weights spread evenly over [0.4, 1] in tap order; their values do not change the cost."""
    if len(taps) == 1:
        return {taps[0]: 1.0}
    return {tap: 0.4 + 0.6 * index / (len(taps) - 1) for index, tap in enumerate(taps)}


def _build_trainer(variant: Variant, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: BenchConfig) -> _Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if variant.library == "torch":
        return _Trainer(optimizer.zero_grad, lambda: _plain_step(model, optimizer, x, y))
    if variant.library == "opacus":
        return _build_opacus_trainer(variant, model, optimizer, x, y, config)
    return _build_lmdp_trainer(variant, model, optimizer, x, y, config)


def _plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _build_opacus_trainer(variant, model, optimizer, x, y, config: BenchConfig) -> _Trainer:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    # One loader batch of all records: Opacus's expected batch size is then len(x).
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    private = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        poisson_sampling=False,
        grad_sample_mode=variant.grad_sample_mode,
    )
    if variant.grad_sample_mode == "ghost":
        module, dp_optimizer, criterion, _ = private
    else:
        module, dp_optimizer, _ = private
        criterion = nn.CrossEntropyLoss()

    def step() -> None:
        dp_optimizer.zero_grad()
        criterion(module(x), y).backward()
        dp_optimizer.step()

    return _Trainer(dp_optimizer.zero_grad, step)


def _build_lmdp_trainer(variant, model, optimizer, x, y, config: BenchConfig) -> _Trainer:
    from lmdp.models import build_layer_map
    from lmdp.privacy import LMDPEngine

    layer_map = build_layer_map(model, model.taps, x[:2])
    # The sample rate does not change the cost: a fixed batch of len(x) records replaces a Poisson batch.
    module, dp_optimizer, _ = LMDPEngine().make_private(
        module=model,
        optimizer=optimizer,
        layer_map=layer_map,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        layer_weights=_layer_weights(layer_map.taps),
        sample_rate=0.1,
        dataset_size=10 * len(x),
        loss_reduction="sum",
        grad_sample_mode=variant.grad_sample_mode,
    )

    def step() -> None:
        dp_optimizer.zero_grad()
        dp_optimizer.backward(F.cross_entropy(module(x), y, reduction="none"))
        dp_optimizer.step()

    return _Trainer(dp_optimizer.zero_grad, step)


def peak_step_memory_bytes(step: Callable[[], None]) -> int | None:
    """Run ``step`` once under ``torch.profiler`` and return the peak tensor memory it added, in bytes.

    Returns ``None`` when this torch build exposes no allocation events.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    # NOTE: kineto_results is not a documented torch API; torch 2.13 has it, and
    # without it the memory column reads "n/a" instead of failing the cell.
    results = getattr(profiler.profiler, "kineto_results", None)
    if results is None:
        return None
    allocations = sorted((event.start_ns(), event.nbytes()) for event in results.events() if event.name() == "[memory]")
    allocated, peak = 0, 0
    for _, nbytes in allocations:
        allocated += nbytes
        peak = max(peak, allocated)
    return peak


def run_cell(model_name: str, batch_size: int, config: BenchConfig) -> CellResult:
    """Measure every variant of ``config`` on one zoo model at one batch size, in this process."""
    from lmdp.models import build_model

    started = time.perf_counter()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(batch_size, *BENCH_MODELS[model_name], generator=generator)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    torch.manual_seed(config.seed)
    initial = build_model(model_name, input_shape=BENCH_MODELS[model_name], num_classes=NUM_CLASSES)

    variants = [_VARIANTS_BY_NAME[name] for name in config.variants]
    with warnings.catch_warnings():
        # Opacus warns that secure RNG is off, and torch warns on every backward
        # pass that Opacus's hooks fire on a first layer whose input needs no gradient.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        trainers = {v.name: _build_trainer(v, copy.deepcopy(initial), x, y, config) for v in variants}
        times, rounds = _time_rounds(trainers, config)
        peaks = {}
        for name, trainer in trainers.items():
            trainer.zero_grad()
            peaks[name] = peak_step_memory_bytes(trainer.step)

    measurements = _with_ratios([
        VariantMeasurement(
            variant=name,
            median_step_time_s=statistics.median(times[name]),
            step_times_s=tuple(times[name]),
            peak_step_memory_bytes=peaks[name],
        )
        for name in trainers
    ])
    return CellResult(
        model=model_name,
        batch_size=batch_size,
        measurements=measurements,
        timed_rounds=rounds,
        load_average=_load_average(),
        wall_time_s=time.perf_counter() - started,
    )


def _time_rounds(trainers: dict[str, _Trainer], config: BenchConfig) -> tuple[dict[str, list[float]], int]:
    """Run rounds of one step per trainer, rotating the order, and return the timed steps per trainer."""
    names = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in names}
    timed_rounds, spent = 0, 0.0
    for round_index in range(config.warmup_rounds + config.repeats):
        timed = round_index >= config.warmup_rounds
        if timed and timed_rounds >= config.min_repeats and spent >= config.cell_time_budget_s:
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            trainers[name].step()
            elapsed = time.perf_counter() - start
            # Untimed: frees per-example gradients that Opacus keeps until zero_grad,
            # so that one variant's leftovers do not crowd the next one's memory.
            trainers[name].zero_grad()
            if timed:
                times[name].append(elapsed)
                spent += elapsed
        timed_rounds += int(timed)
    return times, timed_rounds


def _with_ratios(measurements: list[VariantMeasurement]) -> tuple[VariantMeasurement, ...]:
    base = next(m for m in measurements if m.variant == "nonprivate")
    result = []
    for m in measurements:
        memory_ratio = None
        if m.peak_step_memory_bytes is not None and base.peak_step_memory_bytes:
            memory_ratio = m.peak_step_memory_bytes / base.peak_step_memory_bytes
        result.append(
            VariantMeasurement(
                variant=m.variant,
                median_step_time_s=m.median_step_time_s,
                step_times_s=m.step_times_s,
                peak_step_memory_bytes=m.peak_step_memory_bytes,
                time_ratio=m.median_step_time_s / base.median_step_time_s,
                memory_ratio=memory_ratio,
            )
        )
    return tuple(result)


def _load_average() -> tuple[float, ...] | None:
    try:
        return tuple(round(value, 2) for value in os.getloadavg())
    except OSError:
        return None


# -- isolation: one process per cell ----------------------------------------

# A cell process that runs this long is stopped and reported as failed.
_CELL_TIMEOUT_S = 900


def _run_cell_isolated(model_name: str, batch_size: int, config: BenchConfig) -> CellResult:
    """Run ``run_cell`` in a new Python process and read its result back as JSON."""
    request = json.dumps({"model": model_name, "batch_size": batch_size, "config": config.to_dict()})
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "lmdp.bench"],
            input=request,
            capture_output=True,
            text=True,
            timeout=_CELL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return CellResult(model_name, batch_size, wall_time_s=time.perf_counter() - started,
                          error=f"the cell process timed out after {_CELL_TIMEOUT_S} s")
    if completed.returncode != 0:
        reason = "killed, likely out of memory" if completed.returncode == -9 else completed.stderr.strip()[-500:]
        return CellResult(model_name, batch_size, wall_time_s=time.perf_counter() - started,
                          error=f"the cell process failed with exit code {completed.returncode} ({reason})")
    return _cell_from_dict(json.loads(completed.stdout))


def _cell_from_dict(data: dict) -> CellResult:
    measurements = tuple(
        VariantMeasurement(**{**m, "step_times_s": tuple(m["step_times_s"])}) for m in data.pop("measurements")
    )
    load_average = data.pop("load_average")
    return CellResult(measurements=measurements, load_average=None if load_average is None else tuple(load_average), **data)


def _cell_process_main() -> None:
    """Read one cell request from stdin, run it and write its ``CellResult`` to stdout as JSON."""
    request = json.loads(sys.stdin.read())
    config_data = request["config"]
    config = BenchConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in config_data.items()})
    cell = run_cell(request["model"], request["batch_size"], config)
    sys.stdout.write(json.dumps(asdict(cell)))


# -- the whole benchmark ----------------------------------------------------


def run_benchmark(config: BenchConfig, *, on_cell: Callable[[CellResult], None] | None = None) -> BenchReport:
    """Measure every cell of ``config`` (model × batch size), then check the targets.

    ``on_cell`` is called after each cell, for progress output.
    """
    from lmdp.risk import library_versions

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    machine = _machine(config)
    cells = []
    for model_name in config.models:
        for batch_size in config.batch_sizes:
            logger.info("benchmark cell %s at batch size %d", model_name, batch_size)
            if config.isolate_cells:
                cell = _run_cell_isolated(model_name, batch_size, config)
            else:
                cell = run_cell(model_name, batch_size, config)
            if cell.error:
                logger.warning("benchmark cell %s at batch size %d failed: %s", model_name, batch_size, cell.error)
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell)
    experiment = time_default_experiment(num_threads=config.num_threads) if config.include_experiment else None
    return BenchReport(
        config=config,
        cells=tuple(cells),
        targets=check_targets(cells),
        machine=machine,
        versions=library_versions(),
        started_at=started_at,
        wall_time_s=time.perf_counter() - started,
        experiment=experiment,
    )


def _machine(config: BenchConfig) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": config.num_threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": _load_average(),
    }


_RUN_COMMAND = "lmdp run --out DIR --no-progress"


def time_default_experiment(*, num_threads: int | None = None) -> ExperimentTiming:
    """Time ``lmdp run`` with its default experiment in a new process, and its risk phase from the report.

    ``num_threads`` sets ``OMP_NUM_THREADS`` for that process; ``None`` keeps torch's default.
    """
    command = [sys.executable, "-c", "from lmdp.cli import main; main()", "run", "--no-progress"]
    environment = dict(os.environ)
    if num_threads is not None:
        environment["OMP_NUM_THREADS"] = str(num_threads)
    with tempfile.TemporaryDirectory(prefix="lmdp-bench-run-") as out_dir:
        started = time.perf_counter()
        completed = subprocess.run([*command, "--out", out_dir], capture_output=True, text=True, env=environment)
        total = time.perf_counter() - started
        if completed.returncode != 0:
            return ExperimentTiming(_RUN_COMMAND, total, None, error=completed.stderr.strip()[-500:])
        report = json.loads((Path(out_dir) / "report.json").read_text())
    timings = report.get("timings", {})
    risk = [seconds for name, seconds in timings.items() if name.startswith("risk")]
    return ExperimentTiming(_RUN_COMMAND, total, sum(risk) if risk else None)


# -- targets ----------------------------------------------------------------


def check_targets(cells: Sequence[CellResult]) -> tuple[TargetCheck, ...]:
    """Compare the measured ratios with the performance targets of ghost-mode LM-DP-SGD.

    The targets are three. In every cell, lmdpsgd in ghost mode takes at most
    1.05× the step time of Opacus's ghost-mode DP-SGD. At batch 256, lmdpsgd
    in the mode that ``grad_sample_mode="auto"`` picks takes at most 2× the
    nonprivate step time on the CNN and 4× on the MLP. At batch 1024, lmdpsgd
    in ghost mode uses at most 1.5× the nonprivate peak step memory. Cells
    that were not measured give no check.
    """
    from lmdp.models import build_model
    from lmdp.privacy.ghost import resolve_grad_sample_mode

    checks = []
    for cell in cells:
        ghost = cell.measurement("lmdpsgd-ghost")
        opacus_ghost = cell.measurement("opacus-dpsgd-ghost")
        if ghost and opacus_ghost:
            checks.append(TargetCheck(
                "lmdpsgd-ghost / opacus-dpsgd-ghost step time", cell.model, cell.batch_size,
                ghost.median_step_time_s / opacus_ghost.median_step_time_s, 1.05,
            ))
        limit = {"cnn": 2.0, "mlp": 4.0}.get(cell.model)
        if limit is not None and cell.batch_size == 256:
            model = build_model(cell.model, input_shape=BENCH_MODELS[cell.model], num_classes=NUM_CLASSES)
            mode = resolve_grad_sample_mode("auto", model)
            chosen = cell.measurement(f"lmdpsgd-{mode}")
            if chosen:
                checks.append(TargetCheck(
                    f"lmdpsgd ({mode}, the auto mode) / nonprivate step time", cell.model, cell.batch_size,
                    chosen.time_ratio, limit,
                ))
        if ghost and cell.batch_size == 1024:
            checks.append(TargetCheck(
                "lmdpsgd-ghost / nonprivate peak step memory", cell.model, cell.batch_size, ghost.memory_ratio, 1.5,
            ))
    return tuple(checks)


# -- Markdown ---------------------------------------------------------------


def render_markdown(report: BenchReport) -> str:
    """Render the report as Markdown: the machine, one table of cells, the targets and the run timing."""
    machine = report.machine
    lines = [
        "# lmdp step benchmark",
        "",
        f"Started {report.started_at}, {report.wall_time_s:.0f} s in all. Machine: {machine['platform']}, "
        f"{machine['cpu_count']} CPU cores, {machine['torch_threads']} torch threads, "
        f"load average at start {machine['load_average_at_start']}.",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in report.versions.items()) + ".",
        "",
        "Step time: median of the timed steps (ms). Memory: peak tensor memory added by one step (MiB). "
        "Ratios divide by `nonprivate` in the same cell.",
        "",
        "| model | batch | variant | step time (ms) | × nonprivate | peak memory (MiB) | × nonprivate | timed steps |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cell in report.cells:
        if cell.error:
            lines.append(f"| {cell.model} | {cell.batch_size} | (failed: {cell.error}) | | | | | |")
            continue
        for m in cell.measurements:
            lines.append(
                f"| {cell.model} | {cell.batch_size} | {m.variant} | {m.median_step_time_s * 1e3:.1f} | "
                f"{_format_ratio(m.time_ratio)} | {_format_mib(m.peak_step_memory_bytes)} | "
                f"{_format_ratio(m.memory_ratio)} | {len(m.step_times_s)} |"
            )
    if report.targets:
        lines += ["", "## Targets", "", "| target | model | batch | measured | limit | met |", "|---|---|---:|---:|---:|---|"]
        for target in report.targets:
            met = {None: "n/a", True: "yes", False: "**no**"}[target.met]
            lines.append(
                f"| {target.description} | {target.model} | {target.batch_size} | {_format_ratio(target.value)} | "
                f"{target.limit:g}× | {met} |"
            )
    if report.experiment is not None:
        experiment = report.experiment
        lines += ["", "## Whole experiment", ""]
        if experiment.error:
            lines.append(f"`{experiment.command}` failed: {experiment.error}")
        else:
            risk = "n/a" if experiment.risk_estimation_s is None else f"{experiment.risk_estimation_s:.0f} s"
            lines.append(f"`{experiment.command}` (default experiment): {experiment.total_s:.0f} s in all, risk estimation {risk}.")
    return "\n".join(lines) + "\n"


def _format_ratio(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def _format_mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def write_report(report: BenchReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out_dir`` (each file atomically) and return their paths."""
    from lmdp.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "json": atomic_write_json(out_dir / "bench.json", report.to_dict()),
        "markdown": atomic_write_text(out_dir / "bench.md", render_markdown(report)),
    }


if __name__ == "__main__":
    _cell_process_main()
