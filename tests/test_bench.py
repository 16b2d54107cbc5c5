"""Smoke runs of the step benchmark and checks of its memory probe and target table."""

import json

import pytest
import torch
from click.testing import CliRunner

from lmdp.bench import (
    VARIANTS,
    BenchConfig,
    CellResult,
    VariantMeasurement,
    check_targets,
    peak_step_memory_bytes,
    render_markdown,
    run_benchmark,
    run_cell,
    write_report,
)
from lmdp.cli import main
from lmdp.errors import ConfigError

ALL_VARIANTS = tuple(variant.name for variant in VARIANTS)


def test_peak_memory_counts_live_tensors():
    def step():
        first = torch.ones(1000, 1000)  # 4,000,000 bytes
        second = first * 2  # another 4,000,000 while both are alive
        del first
        del second

    peak = peak_step_memory_bytes(step)
    assert peak >= 8_000_000
    assert peak < 8_500_000


def test_cell_measures_every_variant():
    config = BenchConfig(models=("mlp",), batch_sizes=(32,), warmup_rounds=1, repeats=2, min_repeats=1, isolate_cells=False)
    cell = run_cell("mlp", 32, config)
    assert cell.error is None
    assert [m.variant for m in cell.measurements] == list(ALL_VARIANTS)
    assert cell.timed_rounds == 2
    for m in cell.measurements:
        assert len(m.step_times_s) == 2
        assert m.median_step_time_s > 0
        assert m.peak_step_memory_bytes > 0
    assert cell.measurement("nonprivate").time_ratio == 1.0
    assert cell.measurement("nonprivate").memory_ratio == 1.0
    # Hooks mode stores 32 per-example gradients of the MLP's 235,146
    # parameters (about 30 MB); ghost mode stores none.
    assert cell.measurement("lmdpsgd-hooks").peak_step_memory_bytes > 30_000_000
    assert cell.measurement("lmdpsgd-ghost").peak_step_memory_bytes < 10_000_000


def make_cell(model, batch_size, times, memory):
    measurements = [
        VariantMeasurement(
            variant=name,
            median_step_time_s=times[name],
            step_times_s=(times[name],),
            peak_step_memory_bytes=memory[name],
            time_ratio=times[name] / times["nonprivate"],
            memory_ratio=memory[name] / memory["nonprivate"],
        )
        for name in times
    ]
    return CellResult(model=model, batch_size=batch_size, measurements=tuple(measurements))


def test_targets_from_measured_ratios():
    times = {"nonprivate": 1.0, "opacus-dpsgd-ghost": 2.0, "lmdpsgd-ghost": 2.2, "lmdpsgd-hooks": 3.0}
    memory = {"nonprivate": 100, "opacus-dpsgd-ghost": 120, "lmdpsgd-ghost": 140, "lmdpsgd-hooks": 900}
    cells = [make_cell("cnn", 256, times, memory), make_cell("mlp", 1024, times, memory)]
    checks = {(c.description.split(" ")[0], c.model, c.batch_size): c for c in check_targets(cells)}

    ghost_vs_opacus = checks[("lmdpsgd-ghost", "cnn", 256)]
    assert ghost_vs_opacus.value == pytest.approx(1.1)
    assert ghost_vs_opacus.met is False
    # The auto mode picks ghost for the CNN, whose dense layers hold most parameters.
    auto = checks[("lmdpsgd", "cnn", 256)]
    assert auto.value == pytest.approx(2.2)
    assert auto.limit == 2.0
    assert auto.met is False
    memory_check = [c for c in check_targets(cells) if "memory" in c.description]
    assert len(memory_check) == 1
    assert memory_check[0].model == "mlp"
    assert memory_check[0].value == pytest.approx(1.4)
    assert memory_check[0].met is True


def test_report_files_and_table(tmp_path):
    config = BenchConfig(models=("cnn",), batch_sizes=(4,), variants=("nonprivate", "lmdpsgd-ghost"),
                         warmup_rounds=0, repeats=1, min_repeats=1, isolate_cells=False)
    report = run_benchmark(config)
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["config"]["models"] == ["cnn"]
    assert [m["variant"] for m in data["cells"][0]["measurements"]] == ["nonprivate", "lmdpsgd-ghost"]
    markdown = paths["markdown"].read_text()
    assert "| cnn | 4 | lmdpsgd-ghost |" in markdown
    assert markdown == render_markdown(report)


def test_config_rejects_unknown_model():
    with pytest.raises(ConfigError, match="models must be"):
        BenchConfig(models=("vgg",))
    with pytest.raises(ConfigError, match="must include 'nonprivate'"):
        BenchConfig(variants=("lmdpsgd-ghost",))


def test_cli_bench_runs_isolated_cell(tmp_path):
    result = CliRunner().invoke(
        main,
        ["bench", "--models", "mlp", "--batch-sizes", "8", "--repeats", "1", "--warmup", "0",
         "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "| mlp | 8 | lmdpsgd-ghost |" in result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["cells"][0]["error"] is None
    assert len(data["cells"][0]["measurements"]) == len(ALL_VARIANTS)


def test_cli_bench_rejects_bad_batch_sizes(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--batch-sizes", "64,big", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output
