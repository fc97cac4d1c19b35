"""`crnet info`: parameter count and FLOPs of each preset at its input size."""

from __future__ import annotations

import argparse
import json

from crnet.models.config import PRESETS, preset


def main(argv: list[str] | None = None) -> int:
    """Print the summary of the named presets (all by default)."""
    parser = argparse.ArgumentParser(prog="crnet info", description=__doc__)
    parser.add_argument(
        "presets", nargs="*", help=f"preset names (default: all of {sorted(PRESETS)})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        configs = [preset(name) for name in (args.presets or sorted(PRESETS))]
    except ValueError as error:
        parser.error(str(error))
    from crnet.models.summary import format_summary, summarize

    summaries = [summarize(config) for config in configs]
    if args.json:
        print(json.dumps([
            {"name": s.name, "parameters": s.parameters, "encode_flops": s.encode_flops,
             "refine_flops": s.refine_flops, "refine_query_flops": s.refine_query_flops,
             "segment_flops": s.segment_flops, "forward_flops": s.forward_flops,
             "input_size": list(s.input_size), "feature_size": list(s.feature_size)}
            for s in summaries
        ], indent=2))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    return 0
