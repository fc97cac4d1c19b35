"""`crnet bench-remote URL --clients N --requests M`: load a `crnet serve` server.

The load is crnet.bench.remote.bench_remote; prints throughput, p50/p99 latency and errors
per client count (and writes them as JSON with ``--json``); exits 1 when a request failed.
"""

from __future__ import annotations

import argparse
import sys

from crnet.cli.arguments import add_json
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's URL, client counts, requests, image size and time limit."""
    parser.add_argument("url", help="host:port (HTTP) or grpc://host:port of `crnet serve`")
    parser.add_argument("--clients", type=int, nargs="+", default=[1],
                        help="concurrent clients; several values run one after another")
    parser.add_argument("--requests", type=int, default=200, help="segment calls per client")
    parser.add_argument("--size", type=int, nargs=2, default=(321, 321),
                        metavar=("HEIGHT", "WIDTH"), help="query and support image size")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="stop each run after this long")
    add_json(parser, help="write the results here")


def run(args: argparse.Namespace) -> int:
    """One run per client count, one table row each."""
    from crnet.bench.remote import bench_remote
    from crnet.runtime.files import write_json_atomic

    if min(args.clients) < 1 or args.requests < 1:
        raise UsageError("--clients and --requests must be at least 1")
    runs = []
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8}")
    for clients in args.clients:
        result = bench_remote(args.url, clients, args.requests, tuple(args.size),
                              args.max_seconds)
        runs.append(result)
        print(f"{clients:>7} {result['completed']:>8} {result['errors']:>6} "
              f"{result['throughput_rps']:>8.1f} {result['p50_ms'] or float('nan'):>8.2f} "
              f"{result['p99_ms'] or float('nan'):>8.2f}", flush=True)
        for error in result["first_errors"]:
            print(f"  error: {error}", file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, {"runs": runs})
    return 1 if any(result["errors"] for result in runs) else 0
