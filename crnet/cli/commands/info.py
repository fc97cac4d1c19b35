"""`crnet info`: parameter count and FLOPs of each preset at its input size."""

from __future__ import annotations

import argparse
import json

from crnet.cli.arguments import add_json
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Preset names (all by default) and --json."""
    from crnet.models.config import PRESETS

    parser.add_argument(
        "presets", nargs="*", help=f"preset names (default: all of {sorted(PRESETS)})")
    add_json(parser, flag=True)


def run(args: argparse.Namespace) -> int:
    """Print the summary of the named presets (all by default)."""
    from crnet.info import preset_summaries

    try:
        summaries = preset_summaries(args.presets)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps([
            {"name": s.name, "parameters": s.parameters, "encode_flops": s.encode_flops,
             "refine_flops": s.refine_flops, "refine_query_flops": s.refine_query_flops,
             "segment_flops": s.segment_flops, "forward_flops": s.forward_flops,
             "input_size": list(s.input_size), "feature_size": list(s.feature_size)}
            for s in summaries
        ], indent=2))
    else:
        from crnet.models.summary import format_summary

        print("\n\n".join(format_summary(s) for s in summaries))
    return 0
