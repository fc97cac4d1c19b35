"""`crnet eval`: score deployed variants against the PyTorch fp32 model, with the gates.

The library side is crnet.evaluate (evaluate_variants, print_gate_hints); exits 1 when a
variant misses its gate.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from crnet.cli.arguments import (
    add_bundle,
    add_checkpoint,
    add_data_group,
    add_episodes,
    add_finetune_group,
    add_json,
    add_no_progress,
    add_runtime_group,
    add_shots,
    finetune_overrides,
)
from crnet.runtime.errors import UsageError

if TYPE_CHECKING:
    from crnet.evaluate import EvalOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Bundle or checkpoint, the runtime group, the data group, counts and --json."""
    from crnet.runtime.backends.base import REFERENCE_BACKEND

    parser.description = "Score a deployed variant against the PyTorch fp32 model."
    add_bundle(parser, positional=False,
               help="bundle directory (default: the torch backend on the bundled trained "
                    "checkpoint)")
    add_checkpoint(parser, help="checkpoint for the torch backend without a bundle")
    add_runtime_group(parser, backend=REFERENCE_BACKEND, precision_choices=(), threads=False,
                      precision_help="fp32, fp16, int8, a comma list, or 'all' (one table)")
    add_data_group(parser, sampler=True)
    add_shots(parser)
    add_episodes(parser, default=1000)
    add_json(parser, help="write the result JSON here")
    parser.add_argument("--inference-precision", choices=["f32", "bf16"], default=None,
                        help="openvino only: the inference precision hint (default f32; "
                             "bf16 only on CPUs that have it)")
    parser.add_argument("--finetune", action="store_true",
                        help="also finetune on each episode's K >= 2 supports and score "
                             "fusion and finetuning side by side (crnet.models.finetune)")
    add_finetune_group(parser)
    add_no_progress(parser)


def options(args: argparse.Namespace) -> EvalOptions:
    """The checked EvalOptions of parsed arguments."""
    from crnet.data.options import EpisodeSource
    from crnet.evaluate import EvalOptions, backend_option_problem

    if args.shots < 1:
        raise UsageError(f"--shots must be >= 1, got {args.shots}")
    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    problem = backend_option_problem(args.backend, args.inference_precision,
                                     has_bundle=args.bundle is not None)
    if problem is not None:
        raise UsageError(problem)
    return EvalOptions(
        bundle=args.bundle, checkpoint=args.checkpoint, backend=args.backend,
        precision=args.precision,
        data=EpisodeSource(dataset=args.dataset, data_root=args.data_root, fold=args.fold,
                           seed=args.seed, sampler=args.sampler),
        shots=args.shots, episodes=args.episodes,
        inference_precision=args.inference_precision, progress=not args.no_progress)


def finetune_options(args: argparse.Namespace) -> dict[str, object] | None:
    """The finetune overrides of --finetune (None without it); finetune flags need it."""
    from crnet.cli.arguments import FINETUNE_FLAGS

    overrides = finetune_overrides(args)
    if not args.finetune:
        given = [dest for dest in FINETUNE_FLAGS if getattr(args, dest) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} applies with --finetune only")
        return None
    if args.shots < 2:
        raise UsageError(f"--finetune needs --shots >= 2, got {args.shots}")
    return overrides


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table (and gate hints); 1 when a variant misses its gate."""
    from crnet.data.evaluation import format_table
    from crnet.evaluate import evaluate_variants, print_gate_hints
    from crnet.runtime.files import check_writable_file, write_json_atomic

    chosen = options(args)
    finetune = finetune_options(args)
    if args.json is not None:
        check_writable_file(args.json, "--json")
    if finetune is not None:
        from crnet.bench.finetune import evaluate_finetune, format_finetune_table

        records = evaluate_finetune(chosen, finetune)
        print(format_finetune_table(records))
    else:
        records = evaluate_variants(chosen)
        print(format_table(records))
    for record in records:
        if record.get("is_reference") and record.get("mode", "fusion") == "fusion":
            print(f"note: no gate applies to {record['backend']} {record['precision']}: it is "
                  "the reference (the PyTorch fp32 model scored against itself)")
    if records[0].get("absent_classes"):
        print(f"note: classes {records[0]['absent_classes']} had no episode and count 0 in "
              f"the mIoU (mean over the fold's classes); use more --episodes")
    if args.json is not None:
        payload = records[0] if len(records) == 1 else {"variants": records}
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    failed = [r["precision"] for r in records if r["passed"] is False]
    if args.bundle is not None:
        print_gate_hints(records, Path(args.bundle))
    return 1 if failed else 0
