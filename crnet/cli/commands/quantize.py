"""`crnet quantize BUNDLE --precision fp16|int8`: add a variant of both graphs to a bundle.

    crnet quantize BUNDLE --precision fp16
    crnet quantize BUNDLE --precision int8 [--calibration-method entropy|percentile|minmax]
                   [--calibration-episodes 64] [--recalibrate] [--target-delta 0.5]

The command over crnet.calibration.fp16 and crnet.calibration.int8 (their options:
crnet.calibration.options). int8 is calibrated on *base-class* train-split episodes of the
checkpoint's fold only, never the test split; the ranges are saved in the bundle and
reused by later runs unless ``--recalibrate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crnet.cli.arguments import (
    add_bundle,
    add_data_group,
    add_no_progress,
    add_precision,
    add_quantize_counts,
    at_least,
)
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bundle, --precision, the fp16 and int8 settings, the data group."""
    from crnet.calibration.options import (
        CALIBRATION_METHODS,
        DEFAULT_CALIBRATION_EPISODES,
        DEFAULT_CALIBRATION_METHOD,
        DEFAULT_CALIBRATION_SHOTS,
        DEFAULT_CONFIRM_LAYERS,
        FP16_KEEP_FP32_OPS,
        LOCAL_MAX_FP32_LAYERS,
    )
    from crnet.calibration.sensitivity import RANK_METHODS

    parser.description = ("Add an FP16 or INT8 (explicit Q/DQ, TensorRT rules) variant of both "
                          "graphs to a bundle, calibrated on base-class episodes.")
    add_bundle(parser)
    add_precision(parser, choices=["fp16", "int8"], required=True,
                  help="the variant to add: fp16 or int8")
    parser.add_argument("--keep-fp32-ops", default=",".join(FP16_KEEP_FP32_OPS),
                        help="fp16: comma list of op types kept in fp32 "
                             f"(default {','.join(FP16_KEEP_FP32_OPS)})")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None,
                        help=f"int8 (default: the saved ranges' method, else "
                             f"{DEFAULT_CALIBRATION_METHOD})")
    add_quantize_counts(parser, calibration=None, sensitivity=64, check=32,
                        default_note=f"defaults: calibration {DEFAULT_CALIBRATION_EPISODES}, "
                                     "sensitivity 64, check 32 (0: skip)")
    parser.add_argument("--calibration-shots", type=int, default=DEFAULT_CALIBRATION_SHOTS)
    add_data_group(parser, fold=None, seed=None,
                   fold_help="whose base classes calibrate (default: the checkpoint's fold)",
                   dataset_help="episodes that calibrate and check the variant: its train "
                                "split, base classes of --fold (default synthetic-5i)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="int8: calibrate again even if the bundle has saved ranges")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="int8: quantize every layer, skip the sensitivity analysis")
    parser.add_argument("--target-delta", type=float, default=0.5,
                        help="int8: |delta mIoU| to reach on held-out base-class episodes")
    parser.add_argument("--exclude-layer", action="append", default=[], metavar="GRAPH:WEIGHT",
                        help="int8: keep this layer in fp32 (repeatable)")
    parser.add_argument("--sensitivity-rank", default="auto", choices=RANK_METHODS,
                        help="int8: rank layers end to end (full), by each layer's own output "
                             "error with the top few confirmed end to end (local), or full up "
                             "to 40 layers, else local (auto, the default)")
    parser.add_argument("--sensitivity-confirm", type=int, default=DEFAULT_CONFIRM_LAYERS,
                        metavar="N", help="int8, local ranking: top layers re-measured end to "
                                          f"end (default {DEFAULT_CONFIRM_LAYERS})")
    parser.add_argument("--max-fp32-layers", type=int, default=None, metavar="N",
                        help="int8: keep at most N layers in fp32 (default: no cap with the "
                             f"full ranking, {LOCAL_MAX_FP32_LAYERS} with the local one)")
    add_no_progress(parser)


def keep_fp32_ops(text: str) -> tuple[str, ...]:
    """The op types of --keep-fp32-ops; UsageError names any that ONNX does not know."""
    import onnx

    from crnet.calibration.options import FP16_KEEP_FP32_OPS

    ops = tuple(op.strip() for op in text.split(",") if op.strip())
    unknown = [op for op in ops if not onnx.defs.has(op)]
    if unknown:
        raise UsageError(f"--keep-fp32-ops: {unknown} are not ONNX operator types (e.g. "
                         f"{','.join(FP16_KEEP_FP32_OPS)})")
    return ops


def options(args: argparse.Namespace) -> Any:
    """The Fp16Options or Int8Options of parsed arguments, checked with the flags' names."""
    from crnet.calibration.options import Fp16Options, Int8Options, SensitivityOptions
    from crnet.data.options import EpisodeSource

    ops = keep_fp32_ops(args.keep_fp32_ops)
    for flag, value, low in (("--check-episodes", args.check_episodes, 0),
                             ("--calibration-episodes", args.calibration_episodes, 1),
                             ("--calibration-shots", args.calibration_shots, 1),
                             ("--sensitivity-episodes", args.sensitivity_episodes, 1),
                             ("--target-delta", args.target_delta, 0),
                             ("--sensitivity-confirm", args.sensitivity_confirm, 0),
                             ("--max-fp32-layers", args.max_fp32_layers, 0)):
        at_least(flag, value, low)
    data = EpisodeSource(dataset=args.dataset, data_root=args.data_root, fold=args.fold)
    progress = not args.no_progress
    if args.precision == "fp16":
        return Fp16Options(keep_fp32_ops=ops, check_episodes=args.check_episodes, data=data,
                           progress=progress)
    return Int8Options(
        calibration_method=args.calibration_method,
        calibration_episodes=args.calibration_episodes,
        calibration_shots=args.calibration_shots, recalibrate=args.recalibrate,
        exclude_layers=tuple(args.exclude_layer), data=data, progress=progress,
        sensitivity=SensitivityOptions(
            enabled=not args.no_sensitivity, episodes=args.sensitivity_episodes,
            target_delta=args.target_delta, rank=args.sensitivity_rank,
            confirm_layers=args.sensitivity_confirm, max_fp32_layers=args.max_fp32_layers))


def run(args: argparse.Namespace) -> int:
    """Add the variant; print what was written and how."""
    chosen = options(args)
    from crnet.calibration.precision import quantize_bundle
    from crnet.calibration.variants import QuantizeError
    from crnet.runtime.bundle import BundleError

    try:
        manifest = quantize_bundle(args.bundle, args.precision, chosen)
    except BundleError:
        raise
    except ValueError as error:  # onnx / onnxruntime reject a graph with a ValueError
        raise QuantizeError(str(error)) from error
    how = manifest["variants"][args.precision]["how"]
    print(summary(args.bundle, args.precision, how))
    return 0


def summary(bundle_dir: Path, precision: str, how: dict[str, Any]) -> str:
    """Human-readable lines about a freshly written variant."""
    from crnet.runtime.bundle import graph_file

    lines = [f"wrote {graph_file('backbone', precision)}, {graph_file('refine', precision)} "
             f"into {bundle_dir} in {how.get('seconds', 0):.1f} s"]
    if precision == "fp16":
        lines.append(f"kept in fp32: {', '.join(how['kept_fp32_ops'])}")
        if "check" in how:
            check = how["check"]
            lines.append(f"on {check['episodes']} base-class episodes: delta mIoU "
                         f"{check['delta_miou']:+.3f}, mean |prob diff| "
                         f"{check['probability_mae']:.2e}")
    else:
        calibration = how["calibration"]
        verb = "reused" if calibration["reused"] else "calibrated"
        lines.append(f"ranges {verb}: {calibration['method']} on {calibration['episodes']} "
                     f"episodes of {calibration.get('data', 'synthetic-5i')} -> "
                     f"{calibration['ranges_file']}")
        if how["sensitivity"].get("rank_method"):
            lines.append(f"sensitivity: {how['sensitivity']['rank_method']} ranking of "
                         f"{how['sensitivity']['layers']} layers in "
                         f"{how['sensitivity']['seconds']:.1f} s")
        lines.append(f"kept in fp32: {', '.join(how['kept_fp32_layers']) or 'no layer'}")
        for step in how["sensitivity"].get("steps", []):
            lines.append(f"  excluded {len(step['excluded'])}: delta mIoU "
                         f"{step['delta_miou']:+.3f}, mean |prob diff| "
                         f"{step['probability_mae']:.2e}")
    return "\n".join(lines)
