"""`crnet export`: a checkpoint -> a bundle of split ONNX graphs, checked for parity.

The library function is crnet.export.to_onnx.export_bundle; ``python export/to_onnx.py``
hands over to this command.
"""

from __future__ import annotations

import argparse
import sys

from crnet.cli.arguments import (
    add_checkpoint,
    add_episodes,
    add_fold,
    add_force,
    add_no_progress,
    add_out,
    add_preset,
    add_seed,
)
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint (or --preset --random-weights), --out, opset and the parity check."""
    from crnet.export.to_onnx import DEFAULT_OPSET, DEFAULT_OUT, MIN_OPSET, PARITY_EPISODES

    parser.description = ("Export a CRNet checkpoint to a bundle of split ONNX graphs "
                          "(backbone + refine), check parity with PyTorch and lint for "
                          "TensorRT.")
    add_checkpoint(parser, help="checkpoint .safetensors (default: the bundled trained "
                                "crnet-lite, models/weights/crnet-lite-fold0.safetensors)")
    add_preset(parser, help="with --random-weights: the preset to build")
    parser.add_argument("--random-weights", action="store_true",
                        help="export an untrained model of --preset (tests, CI)")
    add_out(parser, default=DEFAULT_OUT, help=f"bundle directory (default: {DEFAULT_OUT}/)")
    add_force(parser, help="replace the bundle at --out (only a bundle: any other "
                           "non-empty directory is refused)")
    parser.add_argument("--allow-unverified-checkpoint", action="store_true",
                        help="load a checkpoint whose .json records no sha256 (its weights "
                             "cannot be verified); recorded in the manifest as "
                             "source_checkpoint.verified = false")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset of the graphs ({MIN_OPSET} or newer; default "
                             f"{DEFAULT_OPSET})")
    add_episodes(parser, default=PARITY_EPISODES,
                 help="synthetic-5i episodes for the parity check")
    add_fold(parser, default=None,
             help="parity fold (default: the checkpoint's training fold, else 0)")
    add_seed(parser, help="random-weights and parity seed")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Export, then print where the bundle went, its parity and its lint findings."""
    from crnet.export.to_onnx import ExportError, check_opset, export_bundle

    if args.random_weights != bool(args.preset):
        raise UsageError("--preset and --random-weights go together")
    if args.random_weights and args.checkpoint is not None:
        raise UsageError("--checkpoint and --random-weights exclude each other")
    try:
        check_opset(args.opset)
    except ExportError as error:
        raise UsageError(str(error)) from None

    from crnet.export.parity import ParityError

    try:
        model = None
        if args.random_weights:
            import torch

            from crnet.models.config import preset
            from crnet.models.crnet import CRNet

            torch.manual_seed(args.seed)
            model = CRNet(preset(args.preset)).eval()
        manifest = export_bundle(
            args.out, args.checkpoint, model=model, force=args.force, opset=args.opset,
            parity_episodes=args.episodes, parity_fold=args.fold, parity_seed=args.seed,
            progress=not args.no_progress,
            allow_unverified_checkpoint=args.allow_unverified_checkpoint)
    except ParityError as error:
        print(f"crnet export: parity FAILED\n{error}", file=sys.stderr)
        return 1
    parity, lint = manifest["parity"], manifest["lint"]
    print(f"wrote {args.out}/ in {manifest['export_seconds']:.1f} s: "
          + ", ".join(sorted(manifest["files"])))
    print(f"parity on {parity['episodes']} episodes: max |logit diff| "
          f"{parity['max_abs_logit_diff']:.2e}, foreground agreement "
          f"{100 * parity['foreground_agreement']:.3f}%, |delta mIoU| "
          f"{parity['delta_miou']:.4f} -> {'PASS' if parity['passed'] else 'FAIL'}")
    print(f"TensorRT lint: {lint['errors']} error(s), {lint['warnings']} warning(s)")
    return 0
