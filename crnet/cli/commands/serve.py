"""`crnet serve BUNDLE`: Triton Inference Server (through PyTriton) with cached supports.

The server is crnet.serve.server (models, support store, metrics); needs the ``serve``
extra: ``pip install -e ".[serve]"`` (nvidia-pytriton).
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from crnet.cli.arguments import (
    add_bundle,
    add_runtime_group,
    add_store_arguments,
    at_least,
)
from crnet.runtime.errors import UsageError

if TYPE_CHECKING:
    from crnet.serve.server import ServeOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bundle, the runtime group, ports and the support store's bounds."""
    from crnet.serve.server import DEFAULT_HOST, DEFAULT_STORE_METRICS_PORT
    from crnet.serve.support_store import DEFAULT_TTL_S

    parser.description = ("Serve a bundle with Triton Inference Server (through PyTriton): "
                          "crnet_support caches a support set, crnet_segment segments a query "
                          "against it.")
    add_bundle(parser)
    add_runtime_group(parser, threads_help="onnxruntime intra-op threads (default: its own)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address every endpoint listens on (default {DEFAULT_HOST}: "
                             "this machine only; the endpoints have no authentication, so "
                             "open them to other machines, e.g. --host 0.0.0.0, only on a "
                             "trusted network)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002, help="Triton's metrics")
    parser.add_argument("--store-metrics-port", type=int, default=DEFAULT_STORE_METRICS_PORT,
                        help="the support store's Prometheus metrics (-1: off)")
    add_store_arguments(parser, instances=2,
                        instances_help="concurrent instances of crnet_segment (default 2)")
    parser.add_argument("--store-ttl-s", type=float, default=DEFAULT_TTL_S,
                        help="drop a support set unused this long (0: never)")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's log level")
    parser.add_argument("--outlive-parent", action="store_true",
                        help="keep serving when the process that started it exits (default: "
                             "stop cleanly, as on SIGTERM)")
    add_limit_arguments(parser)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The bounds on one request, checked before any work (docs/serving.md)."""
    from crnet.serve import limits
    from crnet.serve.http_front import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT_S

    group = parser.add_argument_group(
        "request limits", "a request over one is refused with a client error (HTTP 400, or 413 "
        "for a body over the size bound) before any work")
    group.add_argument("--max-id-chars", type=int, default=limits.DEFAULT_MAX_ID_CHARS,
                       help="bytes of a support_id (default %(default)s; ids are 32 hex "
                            "digits)")
    group.add_argument("--max-pixels", type=int, default=limits.DEFAULT_MAX_PIXELS,
                       help="height x width of any query or support image (default "
                            "%(default)s: 4096x4096)")
    group.add_argument("--max-shots", type=int, default=limits.DEFAULT_MAX_SHOTS,
                       help="support images (K) in one crnet_support request (default "
                            "%(default)s)")
    group.add_argument("--max-request-mb", type=float, default=limits.DEFAULT_MAX_REQUEST_MB,
                       help="MiB of all input tensors of one request (default %(default)s); "
                            "a larger HTTP body or gRPC message (this plus 1 MiB) is refused "
                            "before it is read")
    group.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                       help="HTTP connections open at once, and gRPC calls in progress at "
                            "once; more are refused at once (default %(default)s)")
    group.add_argument("--client-timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                       help="drop an HTTP client silent this long, mid-request or idle "
                            "(default %(default)s)")


def options(args: argparse.Namespace) -> ServeOptions:
    """The ServeOptions of parsed arguments (what serve() and PyTriton are given)."""
    from crnet.serve.limits import RequestLimits
    from crnet.serve.server import ServeOptions

    for flag, value in (("--max-id-chars", args.max_id_chars),
                        ("--max-pixels", args.max_pixels), ("--max-shots", args.max_shots),
                        ("--max-connections", args.max_connections)):
        at_least(flag, value, 1)
    for flag, number in (("--max-request-mb", args.max_request_mb),
                         ("--client-timeout-s", args.client_timeout_s)):
        if not number > 0:
            raise UsageError(f"{flag} must be > 0, got {number}")
    return ServeOptions(
        bundle=args.bundle, backend=args.backend, precision=args.precision,
        threads=args.threads, host=args.host, http_port=args.http_port,
        grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        store_metrics_port=args.store_metrics_port, instances=args.instances,
        store_max_entries=args.store_max_entries, store_max_mb=args.store_max_mb,
        store_ttl_s=args.store_ttl_s, log_verbose=args.log_verbose,
        outlive_parent=args.outlive_parent, max_connections=args.max_connections,
        client_timeout_s=args.client_timeout_s,
        limits=RequestLimits(args.max_id_chars, args.max_pixels, args.max_shots,
                             args.max_request_mb))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; prints where it listens at start."""
    from crnet.serve.server import serve, serving_problem

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    problem = serving_problem(args.bundle)
    if problem is not None:
        raise UsageError(problem)
    # SIGTERM, SIGINT and the death of the parent process all stop it cleanly (serve()).
    serve(options(args))
    return 0
