"""`crnet deploy`: the whole path from a checkpoint to a checked, benchmarked bundle.

Export, quantize, build, evaluate, bench and report (crnet.deploy.pipeline.deploy with a
DeployOptions); exits 1 when a variant misses its accuracy gate.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crnet.cli.arguments import (
    add_checkpoint,
    add_data_group,
    add_episodes,
    add_no_progress,
    add_out,
    add_quantize_counts,
    add_shots,
    add_threads,
)
from crnet.runtime.errors import CrnetError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, --out, the data group, the variants and the budgets."""
    parser.description = ("The whole path from a checkpoint to a checked, benchmarked bundle: "
                          "export, quantize, build, evaluate, bench, report.")
    add_checkpoint(parser)
    add_out(parser, default=Path("deploy-out"), help="output directory (default deploy-out/)")
    add_episodes(parser, default=1000,
                 help="test episodes for the accuracy check (default 1000)")
    add_data_group(parser, fold=None,
                   dataset_help="calibrate on its train split (base classes of --fold), gate "
                                "and bench on its test split (default synthetic-5i)")
    add_shots(parser)
    parser.add_argument("--precisions", default="fp32,fp16,int8",
                        help="comma list of the variants to build; fp32 is one "
                             "(default fp32,fp16,int8)")
    parser.add_argument("--bench-iterations", type=int, default=None,
                        help="default: 50, or 10 for a model over 10 GFLOP per query")
    add_quantize_counts(parser, default_note="default: calibration and sensitivity 64, check "
                                             "32; 16, 16 and 8 for a model over 10 GFLOP per "
                                             "query")
    parser.add_argument("--parity-episodes", type=int, default=64)
    parser.add_argument("--finetune-episodes", type=int, default=0,
                        help="5-shot episodes on which prototype fusion and k-shot "
                             "finetuning are scored side by side for every variant "
                             "(default 0: no such row; each episode finetunes for a few "
                             "seconds on a CPU)")
    add_threads(parser, help="threads of the benchmark (default: all cores)")
    add_no_progress(parser)


def options(args: argparse.Namespace) -> Any:
    """The DeployOptions of parsed arguments."""
    from crnet.data.options import EpisodeSource
    from crnet.deploy.options import DeployOptions
    from crnet.runtime.layout import PRECISIONS

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or "fp32" not in precisions:
        raise UsageError(f"--precisions must list fp32 and any of {PRECISIONS}, got "
                         f"{precisions}")
    counts = (args.bench_iterations, args.calibration_episodes, args.sensitivity_episodes,
              args.check_episodes)
    if args.episodes < 1 or args.shots < 1 or any(c is not None and c < 1 for c in counts):
        raise UsageError("--episodes, --shots, --bench-iterations and the --*-episodes counts "
                         "must be >= 1")
    return DeployOptions(
        checkpoint=args.checkpoint, episodes=args.episodes, shots=args.shots,
        data=EpisodeSource(dataset=args.dataset, data_root=args.data_root, fold=args.fold,
                           seed=args.seed),
        bench_iterations=args.bench_iterations, precisions=tuple(precisions),
        parity_episodes=args.parity_episodes, finetune_episodes=args.finetune_episodes,
        threads=args.threads,
        progress=not args.no_progress, command=args.command_line,
        calibration_episodes=args.calibration_episodes,
        sensitivity_episodes=args.sensitivity_episodes, check_episodes=args.check_episodes)


def run(args: argparse.Namespace) -> int:
    """Deploy; print the Polygraphy hints of a missed gate; 1 when a gate is missed."""
    from crnet.deploy.pipeline import DeployError, deploy

    chosen = options(args)
    try:
        report = deploy(args.out, chosen)
    except CrnetError:
        raise
    except (ValueError, RuntimeError) as error:  # a library's rejection, reported in one line
        raise DeployError(str(error)) from error
    if not report["passed"]:
        from crnet.evaluate import print_gate_hints

        print_gate_hints(report["accuracy"], report["bundle"])
    return 0 if report["passed"] else 1
