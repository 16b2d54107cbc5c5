"""Time and peak memory of risk estimation per layer, against the time to train the shadow model.

Data: the Fashion-MNIST subset shipped with lmdp (28×28, real images),
split into 2,000 members and 2,000 non-members by default. The CNN of the
zoo is trained non-privately on the members (this is the shadow training
that is timed), and that trained model is then measured:

- capture: ``capture_representations`` of one tap over all 4,000 records;
- fit: fitting every attack of that tap (reference statistics, probes,
  classifiers) on the reference, train and calibrate parts;
- evaluate: scoring the evaluation part, bootstrap CIs and the
  permutation null (``evaluate_level_attacks`` for that tap alone).

Peak memory is the growth of the process's peak resident set size (VmHWM)
during each stage. The peak is reset before each stage through
/proc/self/clear_refs, which only Linux has, so elsewhere the column shows
"n/a". The last line times the whole of ``measure_risk`` over all taps, as
phase A runs it.

Run: python benchmarks/bench_risk.py [--members 2000] [--shadow-steps 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lmdp.attacks import AttackConfig, evaluate_level_attacks, fit_level_attacks, split_records
from lmdp.data import load_dataset, split_experiment
from lmdp.models import build_layer_map, build_model
from lmdp.representations import CaptureConfig, capture_representations
from lmdp.risk import RiskConfig, measure_risk
from lmdp.training import TrainingConfig, train


def rss_mib(field: str) -> float | None:
    """Return a memory field of /proc/self/status (VmRSS, VmHWM) in MiB, or None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; return False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(stage):
    """Run ``stage()`` and return (result, seconds, peak growth in MiB or None)."""
    can_reset = reset_peak()
    before = rss_mib("VmRSS")
    started = time.perf_counter()
    result = stage()
    seconds = time.perf_counter() - started
    peak = rss_mib("VmHWM")
    growth = None if not can_reset or before is None or peak is None else max(0.0, peak - before)
    return result, seconds, growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000, help="members and non-members each (default 2000)")
    parser.add_argument("--shadow-steps", type=int, default=1000, help="shadow training steps (default 1000)")
    parser.add_argument("--sample-rate", type=float, default=0.032, help="shadow sample rate (default 0.032: 64 of 2,000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)

    data = load_dataset("fashion-mnist-builtin")
    n = arguments.members
    splits = split_experiment(data, seed=arguments.seed, n_public=10, n_members=n, n_non_members=n, n_test=10)
    print(f"lmdp risk benchmark: {n} members + {n} non-members, Fashion-MNIST subset {data.input_shape}, CNN")
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")

    torch.manual_seed(arguments.seed)
    model = build_model("cnn", input_shape=data.input_shape, num_classes=data.num_classes)
    x, y = torch.tensor(splits.members.x), torch.tensor(splits.members.y)
    recipe = TrainingConfig(
        method="nonprivate", steps=arguments.shadow_steps, sample_rate=arguments.sample_rate,
        learning_rate=1e-3, optimizer="adam", seed=arguments.seed,
    )
    layer_map = build_layer_map(model, model.taps, x[:1])
    _, train_seconds, train_memory = measure(lambda: train(model, x, y, config=recipe, layer_map=layer_map))
    accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    print(f"shadow training: {arguments.shadow_steps} non-private steps at sample_rate {arguments.sample_rate} "
          f"(train accuracy {accuracy:.3f}): {train_seconds:.1f} s")

    inputs = np.concatenate([splits.members.x, splits.non_members.x])
    labels = np.concatenate([splits.members.y, splits.non_members.y]).astype(np.int64)
    is_member = np.r_[np.ones(n, dtype=bool), np.zeros(n, dtype=bool)]
    attack_config = AttackConfig(seed=arguments.seed)
    split = split_records(labels, is_member, reference_fraction=attack_config.reference_fraction,
                          fit_fraction=attack_config.fit_fraction, seed=attack_config.seed)

    header = f"{'layer':<8} {'width':>6} {'capture s':>10} {'MiB':>6} {'fit s':>8} {'MiB':>6} {'evaluate s':>11} {'MiB':>6} {'AUC':>6}"
    print("\n" + header)
    total = 0.0
    for tap in model.taps:
        captured, capture_seconds, capture_memory = measure(
            lambda: capture_representations(model, inputs, taps=(tap,), config=CaptureConfig())
        )
        fitted, fit_seconds, fit_memory = measure(
            lambda: fit_level_attacks(captured, labels, is_member, split, num_classes=10, config=attack_config)
        )
        evaluation = captured.subset(split.evaluate)
        assessment, evaluate_seconds, evaluate_memory = measure(
            lambda: evaluate_level_attacks(
                fitted, evaluation, labels[split.evaluate], is_member[split.evaluate],
                setting="held_out", config=attack_config, split_sizes=split.sizes(),
            )
        )
        total += capture_seconds + fit_seconds + evaluate_seconds
        print(f"{tap:<8} {captured.features[tap].shape[1]:>6} {capture_seconds:>10.2f} {_mib(capture_memory):>6} "
              f"{fit_seconds:>8.2f} {_mib(fit_memory):>6} {evaluate_seconds:>11.2f} {_mib(evaluate_memory):>6} "
              f"{assessment.layers[0].auc:>6.3f}")
    print("(each row also refits and scores the output level, which the full run does once)")

    config = RiskConfig(attack=attack_config)
    profile, risk_seconds, risk_memory = measure(
        lambda: measure_risk(model, splits.members, splits.non_members, taps=model.taps, config=config)
    )
    print(f"\nmeasure_risk over all {len(model.taps)} taps and the output: {risk_seconds:.1f} s, "
          f"peak growth {_mib(risk_memory)} MiB (sum of per-layer rows: {total:.1f} s)")
    print(f"shadow training: {train_seconds:.1f} s; risk estimation / training = {risk_seconds / train_seconds:.2f}")


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
