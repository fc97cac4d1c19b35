"""`crnet verify BUNDLE`: check deployed variants against the bundle's golden references.

Torch-free: runs in the plain install on any device. Each variant (backend x precision)
runs the bundle's golden episodes through runtime.Segmenter and is judged by
crnet.runtime.golden.check_segmenter against the PyTorch reference recorded at export.
Exit codes: 0 every variant passed; 1 a variant failed its gate (named in the output) or
an error; 4 the bundle has no golden references (``--record`` adds them, with the
[export] extra). ``--record`` is the torch side, crnet.export.golden.add_golden.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crnet.cli.arguments import (
    add_backend,
    add_bundle,
    add_checkpoint,
    add_force,
    add_json,
    add_precision,
    add_threads,
)

EXIT_NO_GOLDEN = 4
"""The exit code for a bundle without golden references (older bundles)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """BUNDLE, --backend, --precision, --quick, --threads, --json; --record."""
    from crnet.cli.arguments import backend_choices
    from crnet.runtime.layout import PRECISIONS

    parser.description = (
        "Run deployed variants on the golden episodes recorded in the bundle and judge "
        "each against the PyTorch reference masks, without torch. Exit 0: every variant "
        "passed its gate; 1: a variant failed (named) or an error; "
        f"{EXIT_NO_GOLDEN}: the bundle has no golden references (add them with --record).")
    add_bundle(parser)
    add_backend(parser, default=None, choices=backend_choices(),
                help="the backend to check (default: every installed CPU backend "
                     "that runs the bundle's graphs)")
    add_precision(parser, default=None, choices=list(PRECISIONS),
                  help="the variant to check (default: every precision the bundle has)")
    parser.add_argument("--quick", action="store_true",
                        help="only the first five golden episodes, as "
                             "Segmenter(verify='quick') runs (default: every one)")
    add_threads(parser)
    add_json(parser, help="also write the results as JSON here")
    record = parser.add_argument_group("recording (needs the [export] extra and torch)")
    record.add_argument("--record", action="store_true",
                        help="record golden references into a bundle that has none (from "
                             "its checkpoint copy, or --checkpoint), then verify")
    add_checkpoint(record, help="with --record: the checkpoint the bundle was exported "
                                "from (default: the bundle's copy of it)")
    add_force(record, help="with --record: replace golden references already there")


def run(args: argparse.Namespace) -> int:
    """Record if asked, check every chosen variant, print the table; the exit code."""
    from crnet.runtime.bundle import Bundle
    from crnet.runtime.errors import UsageError
    from crnet.runtime.files import check_writable_file
    from crnet.runtime.golden import NoGoldenError, load_golden

    if (args.checkpoint is not None or args.force) and not args.record:
        raise UsageError("--checkpoint and --force apply to --record only")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.json:
        check_writable_file(args.json, "--json")
    if args.record:
        from crnet.export.golden import add_golden

        entry = add_golden(args.bundle, args.checkpoint, replace=args.force)
        print(f"recorded {entry['episodes']} golden episodes ({entry['bytes'] / 1e6:.1f} MB, "
              f"reference mIoU {entry['reference_miou']:.2f}) into {args.bundle}")
    bundle = Bundle.load(args.bundle)
    try:
        golden = load_golden(bundle)
    except NoGoldenError as error:
        print(f"crnet verify: {error}", file=sys.stderr)
        return EXIT_NO_GOLDEN
    variants = chosen_variants(bundle, args.backend, args.precision)
    checks = [check_variant(bundle, golden, backend, precision, args)
              for backend, precision in variants]
    print(format_table(checks))
    failed = [check.variant for check in checks if not check.passed]
    print(f"\n{len(checks)} variant(s) on {golden.entry.get('episodes')} golden episodes "
          f"of {bundle.root}: " + (f"FAIL {', '.join(failed)}" if failed else "all passed"))
    if args.json:
        from crnet.runtime.files import write_json_atomic

        write_json_atomic(args.json, {"bundle": str(bundle.root), "passed": not failed,
                                      "failed": failed, "golden": golden.entry,
                                      "results": [check.to_dict() for check in checks]})
    return 1 if failed else 0


def chosen_variants(bundle: Any, backend: str | None, precision: str | None
                    ) -> list[tuple[str, str]]:
    """(backend, precision) pairs: the given ones, else every installed CPU backend that
    runs the bundle's graphs (the torch reference excluded) x every precision held."""
    from crnet.runtime.backends.base import REFERENCE_BACKEND, backends_where
    from crnet.runtime.bundle import BundleError

    if precision is not None and precision not in bundle.precisions:
        raise BundleError(f"bundle {bundle.root} has no {precision} variant (has "
                          f"{', '.join(bundle.precisions)})")
    precisions = [precision] if precision is not None else bundle.precisions
    if backend is not None:
        backends = [backend]
    else:
        backends = [name for name in backends_where("runs_on_cpu", installed=True)
                    if name != REFERENCE_BACKEND]
        if not backends:
            raise BundleError("no CPU backend is installed (onnxruntime or openvino); "
                              "pass --backend NAME")
    return [(name, chosen) for name in backends for chosen in precisions]


def check_variant(bundle: Any, golden: Any, backend: str, precision: str,
                  args: argparse.Namespace) -> Any:
    """One variant on the golden episodes (runtime.golden.check_segmenter)."""
    from crnet.runtime import Segmenter
    from crnet.runtime.golden import QUICK_EPISODES, check_segmenter

    options = {"threads": args.threads} if args.threads is not None else {}
    episodes = QUICK_EPISODES if args.quick else None
    print(f"checking {precision} on {backend} ...", flush=True)
    with Segmenter(bundle.root, backend=backend, precision=precision, **options) as segmenter:
        return check_segmenter(segmenter, golden, episodes)


def format_table(checks: list[Any]) -> str:
    """One row per variant: agreement, mIoU against the reference and the labels, gate."""
    lines = [f"{'backend':<12} {'precision':<9} {'episodes':>8} {'agree %':>8} "
             f"{'mIoU/ref':>8} {'mIoU':>7} {'ref mIoU':>8} {'delta':>7} {'gate':>5}  result"]
    for check in checks:
        lines.append(
            f"{check.backend:<12} {check.precision:<9} {check.episodes:>8} "
            f"{check.agreement:8.2f} {check.miou_vs_reference:8.2f} {check.miou:7.2f} "
            f"{check.reference_miou:8.2f} {check.delta_miou:+7.2f} "
            f"{check.max_abs_delta_miou:5.2f}  {'pass' if check.passed else 'FAIL'}")
    return "\n".join(lines)
