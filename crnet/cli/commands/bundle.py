"""`crnet bundle slim|verify BUNDLE`: a bundle cut to one device's needs, and its check.

``slim`` writes a new bundle holding only what one precision on one backend needs
(crnet.runtime.slim.slim_bundle: that precision's graphs, the backend's builds, no
checkpoint unless asked, the manifest re-signed) and prints the sizes before and after;
``verify`` loads a bundle with every listed file's sha256 checked
(crnet.runtime.bundle.Bundle.load) and says what it holds. Both are torch-free and run in
the plain install.
"""

from __future__ import annotations

import argparse

from crnet.cli.arguments import add_backend, add_bundle, add_out, add_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two actions, each with its bundle and options."""
    from crnet.runtime.slim import SLIM_BACKENDS

    parser.description = ("Bundles for a device: `slim` copies only what one precision on "
                          "one backend needs into a new, re-signed bundle; `verify` checks "
                          "every file of a bundle against its manifest.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    slim = actions.add_parser(
        "slim", help="a new bundle with one precision for one backend",
        description="Write a new bundle holding only the graphs of --precision, the "
                    "--backend's builds of them (ONNX Runtime CPU builds, TensorRT plans) "
                    "and, with --keep-checkpoint, the checkpoint copy; its manifest is "
                    "re-signed and it is verified before it appears at --out.")
    add_bundle(slim)
    add_precision(slim, required=True, help="the one variant the device runs")
    add_backend(slim, choices=SLIM_BACKENDS,
                help="the backend the device runs it on (default auto: keeps the ONNX "
                     "Runtime builds and TensorRT plans of that precision)")
    add_out(slim, required=True,
            help="the new bundle's directory (must not exist, or be empty)")
    slim.add_argument("--keep-checkpoint", action="store_true",
                      help="keep the checkpoint copy (the torch reference needs it; no "
                           "deployed backend does)")
    verify = actions.add_parser("verify", help="check every file against the manifest",
                                description="Load a bundle with every listed file's sha256 "
                                            "checked; print what it holds.")
    add_bundle(verify)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action and print its summary."""
    if args.action == "slim":
        return slim(args)
    return verify(args)


def slim(args: argparse.Namespace) -> int:
    """`crnet bundle slim`: write the slim bundle, print what it kept and the sizes."""
    from crnet.runtime.slim import format_size, slim_bundle

    result = slim_bundle(args.bundle, args.out, args.precision, args.backend,
                         keep_checkpoint=args.keep_checkpoint)
    print(f"slim bundle for {result.precision} on {result.backend}: {result.out}")
    for name, size in result.kept.items():
        print(f"  kept     {name} ({format_size(size)})")
    for name, size in result.removed.items():
        print(f"  left out {name} ({format_size(size)})")
    if result.dropped_sections:
        print(f"  manifest sections about left-out files dropped: "
              f"{', '.join(result.dropped_sections)}")
    saved = result.size_before - result.size_after
    print(f"size: {format_size(result.size_before)} -> {format_size(result.size_after)} "
          f"({format_size(saved)} less, {len(result.kept)} files); verified")
    return 0


def verify(args: argparse.Namespace) -> int:
    """`crnet bundle verify`: hash every listed file; print the precisions and the size."""
    from crnet.runtime.bundle import Bundle
    from crnet.runtime.slim import format_size

    bundle = Bundle.load(args.bundle, verify=True)
    files = bundle.manifest["files"]
    size = sum((bundle.root / name).stat().st_size for name in files)
    slim = bundle.manifest.get("slim")
    origin = (f"; slimmed for {slim.get('precision')} on {slim.get('backend')}"
              if isinstance(slim, dict) else "")
    print(f"{bundle.root}: verified {len(files)} files ({format_size(size)}), precisions "
          f"{', '.join(bundle.precisions)}{origin}")
    return 0
