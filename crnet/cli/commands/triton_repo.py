"""`crnet triton-repo BUNDLE --out DIR`: a Triton model repository for a GPU server.

The repository is crnet.serve.triton_repo.write_repo's (graph models plus the two BLS
models that keep the contract of `crnet serve`).
"""

from __future__ import annotations

import argparse

from crnet.cli.arguments import add_bundle, add_out, add_runtime_group, add_store_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bundle, --out, the graph models' platform and precision, the store's bounds."""
    from crnet.serve.triton_repo import PLATFORMS

    parser.description = ("Write a Triton model repository of a bundle: graph models plus "
                          "the crnet_support and crnet_segment BLS models.")
    add_bundle(parser)
    add_out(parser, required=True, help="model repository to write")
    add_runtime_group(parser, backend="onnxruntime", backends=sorted(PLATFORMS), threads=False)
    add_store_arguments(parser, instances=1, instances_help="instances of each model (default 1)")
    parser.add_argument("--cpu", action="store_true", help="graph models on CPU (KIND_CPU)")
    parser.add_argument("--store-dir", default="/dev/shm/crnet-supports",
                        help="support store directory on the server")


def run(args: argparse.Namespace) -> int:
    """Write the repository; print what went where."""
    from crnet.runtime.errors import UsageError
    from crnet.serve.triton_repo import write_repo

    try:
        written = write_repo(args.bundle, args.out, args.backend, args.precision,
                             args.store_dir, args.store_max_entries, args.store_max_mb,
                             args.instances, gpu=not args.cpu)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    print(f"wrote {len(written)} files to {args.out}: "
          + ", ".join(sorted({path.relative_to(args.out).parts[0] for path in written})))
    return 0
