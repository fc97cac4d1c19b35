"""`crnet lint BUNDLE...`: check ONNX graphs against TensorRT's ONNX parser rules.

The rules and the checks are crnet.export.lint's; exits 1 when a graph has errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crnet.cli.arguments import add_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Bundles or .onnx files, --json OUT, --no-info."""
    from crnet.export import trt_ops

    parser.description = ("Check ONNX graphs against TensorRT's ONNX parser rules (no TensorRT "
                          f"needed). Rules from: {trt_ops.SOURCE}.")
    parser.add_argument("paths", nargs="+", metavar="BUNDLE",
                        help="bundle directory (every graph its manifest lists) or .onnx file")
    add_json(parser, help="also write the report as JSON here")
    parser.add_argument("--no-info", action="store_true", help="hide info-level findings")


def run(args: argparse.Namespace) -> int:
    """Lint every path, print one table and the totals; 1 when there are errors."""
    from crnet.export.lint import INFO, format_table, lint_paths
    from crnet.runtime.files import check_writable_file, write_json_atomic

    if args.json:
        check_writable_file(args.json, "--json")
    total = lint_paths([Path(raw) for raw in args.paths])
    shown = [f for f in total.findings if not (args.no_info and f.severity == INFO)]
    print(format_table(shown))
    print(f"\n{len(total.graphs)} graph(s): {len(total.errors)} error(s), "
          f"{len(total.warnings)} warning(s) — {'FAIL' if total.errors else 'OK'}")
    if args.json:
        write_json_atomic(args.json, total.to_dict())
    return 1 if total.errors else 0
