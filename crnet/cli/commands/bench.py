"""`crnet bench BUNDLE`: latency, throughput and memory of runtime.Segmenter.

Three measurements of crnet.bench: one variant (latency.run_bench with a BenchOptions; exits
1 when the soak's memory growth is too large), every CPU path side by side (``--compare``,
bench.compare) and evaluation time beside a CPU hog (``--under-load``, bench.under_load).
"""

from __future__ import annotations

import argparse
from typing import Any

from crnet.cli.arguments import (
    add_batch,
    add_bundle,
    add_data_group,
    add_json,
    add_no_progress,
    add_runtime_group,
    add_shots,
    add_warmup,
    at_least,
)
from crnet.runtime.errors import CrnetError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bundle, the runtime group, counts, the data group and the three modes."""
    from crnet.bench.latency import SOAK_DEFAULT

    parser.description = ("Benchmark a bundle through runtime.Segmenter; exits 1 when the "
                          "soak's memory growth is too large.")
    add_bundle(parser)
    add_runtime_group(parser, threads_help="intra-op threads for the backend, torch and the "
                                           "matmul peak (default: all cores)")
    add_json(parser, help="write the report here")
    parser.add_argument("--iterations", type=int, default=100,
                        help="timed segment calls (default 100)")
    add_warmup(parser, default=10, help="untimed calls before each timing (default 10)")
    add_shots(parser)
    parser.add_argument("--compare-torch", action=argparse.BooleanOptionalAction, default=None,
                        help="time CRNet.forward in torch too (default: when torch imports)")
    parser.add_argument("--soak", type=int, nargs="?", const=SOAK_DEFAULT, default=0,
                        metavar="N", help=f"N segment calls watching memory "
                                          f"(default N {SOAK_DEFAULT})")
    add_batch(parser, sizes=True, help="also time segment_batch with these batch sizes and "
                                       "print queries/s for each, e.g. --batch 1,4,8")
    add_data_group(parser, dataset_help="whose test episodes give the support and queries "
                                        "(default synthetic-5i)")
    parser.add_argument("--compare", action="store_true",
                        help="time every installed CPU path side by side (torch, onnxruntime "
                             "fp32/int8, openvino f32/bf16/int8) in one process "
                             "(crnet/bench/compare.py); --backend/--precision are ignored")
    parser.add_argument("--under-load", action="store_true",
                        help="per-episode evaluation time quiet and beside a CPU hog on one "
                             "core, alternating (crnet/bench/under_load.py)")
    parser.add_argument("--episodes-per-round", type=int, default=5,
                        help="--under-load: episodes per quiet or loaded block")
    parser.add_argument("--rounds", type=int, default=8, help="--under-load: rounds")
    add_no_progress(parser)


def options(args: argparse.Namespace) -> Any:
    """The BenchOptions of parsed arguments."""
    from crnet.bench.latency import BenchOptions
    from crnet.data.options import EpisodeSource

    return BenchOptions(
        backend=args.backend, precision=args.precision, iterations=args.iterations,
        warmup=args.warmup, threads=args.threads, shots=args.shots,
        compare_torch=args.compare_torch, soak_calls=args.soak, batch_sizes=args.batch,
        progress=not args.no_progress,
        data=EpisodeSource(dataset=args.dataset, data_root=args.data_root, fold=args.fold,
                           seed=args.seed))


def run(args: argparse.Namespace) -> int:
    """Run the chosen measurement, print it and write --json."""
    from crnet.runtime.files import check_writable_file, write_json_atomic

    at_least("--iterations", args.iterations, 1)
    at_least("--warmup", args.warmup, 0)
    at_least("--threads", args.threads, 1)
    at_least("--soak", args.soak, 0)
    chosen = options(args)  # checks the data selection too
    if args.json is not None:
        check_writable_file(args.json, "--json")  # before the run, not after it
    from crnet.runtime.bundle import Bundle

    Bundle.load(args.bundle, verify=False)  # a bad manifest: its BundleError (exit 1) first
    if args.compare:
        report, text = compare(args)
    elif args.under_load:
        report, text = under_load(args)
    else:
        from crnet.bench.latency import format_report, run_bench
        from crnet.runtime.backends.base import BackendError
        from crnet.runtime.bundle import BundleError

        try:
            report = run_bench(args.bundle, chosen)
        except (BundleError, BackendError):
            raise
        except ValueError as error:  # a bad option value found while setting the bench up
            raise UsageError(str(error)) from error
        text = format_report(report)
    print(text)
    if args.json is not None:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 1 if "soak" in report and not report["soak"]["passed"] else 0


def under_load(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """`--under-load`: the report of bench.under_load and its text."""
    from crnet.bench.under_load import format_under_load, run_under_load

    at_least("--episodes-per-round", args.episodes_per_round, 1)
    at_least("--rounds", args.rounds, 1)
    try:
        report = run_under_load(args.bundle, threads=args.threads,
                                episodes_per_round=args.episodes_per_round,
                                rounds=args.rounds, fold=args.fold, seed=args.seed,
                                progress=not args.no_progress)
    except ValueError as error:  # a library's rejection, reported in one line
        raise CrnetError(str(error)) from error
    return report, format_under_load(report)


def compare(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """`--compare`: the report of bench.compare and its text."""
    from crnet.bench.compare import format_compare, run_compare

    try:
        report = run_compare(args.bundle, threads=args.threads, iterations=args.iterations,
                             warmup=args.warmup, shots=args.shots, fold=args.fold,
                             seed=args.seed, torch=args.compare_torch is not False,
                             progress=not args.no_progress)
    except ValueError as error:  # a library's rejection, reported in one line
        raise CrnetError(str(error)) from error
    return report, format_compare(report)
