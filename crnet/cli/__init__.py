"""The `crnet` command: the command line of every stage, as its own layer.

Each subcommand is a module under crnet.cli.commands with ``add_arguments(parser)`` (its
options, built from the shared groups in crnet.cli.arguments) and ``run(args) -> int``
(turns the parsed options into the stage's arguments, calls the library function and
prints the summary). Stages themselves parse nothing and never exit; they raise CrnetError,
and report progress through crnet.runtime.progress, whose default reporter is, while a
command runs, the terminal one of crnet.cli.progress.

The top layer of the project (docs/architecture.md): it imports every package below it and
nothing imports it. Exit codes follow crnet.cli.exit_codes.run_command: 0 success, 1 an
expected error or a failed check (printed as one line), 2 a bad command line.

To add a subcommand: write crnet/cli/commands/<name>.py with ``add_arguments(parser)`` and
``run(args) -> int``, and add its line to SUBCOMMANDS below.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from crnet.cli.exit_codes import EXIT_USAGE, run_command

# subcommand -> (module with add_arguments(parser) and run(args), one-line help). Modules
# import lazily, so `crnet info` does not pay for onnxruntime, and `--help` works in the
# plain install.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("crnet.cli.commands.info", "parameter count and FLOPs of each preset"),
    "train": ("crnet.cli.commands.train", "episodic training on base-class episodes"),
    "export": ("crnet.cli.commands.export",
               "split ONNX export of a checkpoint into a bundle, with parity"),
    "lint": ("crnet.cli.commands.lint",
             "check a bundle's graphs against TensorRT's ONNX parser rules"),
    "quantize": ("crnet.cli.commands.quantize", "add fp16 or int8 variants of a bundle's graphs"),
    "eval": ("crnet.cli.commands.evaluate",
             "mIoU / FB-IoU of a variant against the PyTorch model"),
    "episodes": ("crnet.cli.commands.episodes", "the episodes crnet eval scores, as a JSON list"),
    "bench": ("crnet.cli.commands.bench", "latency, throughput and memory of runtime.Segmenter"),
    "deploy": ("crnet.cli.commands.deploy",
               "the main job: export, quantize, build, evaluate, bench, report"),
    "build": ("crnet.cli.commands.build",
              "trtexec-style engine build (ORT CPU build without TRT)"),
    "serve": ("crnet.cli.commands.serve",
              "Triton Inference Server (PyTriton) with cached supports"),
    "bench-remote": ("crnet.cli.commands.bench_remote",
                     "load a `crnet serve` server with N clients"),
    "triton-repo": ("crnet.cli.commands.triton_repo",
                    "a Triton model repository (graphs + BLS models)"),
    "synthetic": ("crnet.cli.commands.synthetic",
                  "synthetic-5i: generation speed, preview grids, a VOC-layout tree"),
    "bundle": ("crnet.cli.commands.bundle", "slim a bundle to one precision and backend; verify"),
    "model-card": ("crnet.cli.commands.model_card",
                   "the model card of a checkpoint: accuracy, support swap, examples"),
    "finetune": ("crnet.cli.commands.finetune",
                 "k-shot finetuning on labelled supports -> an adapter every backend runs"),
    "verify": ("crnet.cli.commands.verify",
               "check deployed variants against the bundle's golden references (no torch)"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: crnet <command> [options]", "       crnet --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`crnet <command> --help` describes a command's options."]
    return "\n".join(lines)


def command_module(command: str) -> ModuleType:
    """The module of a subcommand (imports only crnet.cli and light stage constants)."""
    return importlib.import_module(SUBCOMMANDS[command][0])


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of one subcommand; cheap (no torch, no onnxruntime)."""
    parser = argparse.ArgumentParser(prog=f"crnet {command}",
                                     description=SUBCOMMANDS[command][1])
    command_module(command).add_arguments(parser)
    return parser


def run_subcommand(command: str, argv: list[str] | None) -> int:
    """Parse ``argv`` with the subcommand's parser and run it (no exit-code policy: errors
    propagate, argparse exits with SystemExit). ``args.command_line`` is the command as
    given, for reports that record how they were made."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command).parse_args(words)
    args.command_line = " ".join(["crnet", command, *words])
    from crnet.cli.progress import terminal_progress
    from crnet.runtime.progress import default_progress

    with default_progress(terminal_progress()):
        return int(command_module(command).run(args) or 0)


def version() -> str:
    """The installed crnet-deploy version: the package metadata, as ``crnet.__version__``."""
    from importlib import metadata

    try:
        return metadata.version("crnet-deploy")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand; unknown commands list the known ones."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else EXIT_USAGE
    if args[0] in ("-V", "--version"):
        print(f"crnet {version()}")
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"crnet: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    # Before torch loads its OpenMP runtime: idle OpenMP workers sleep instead of spinning,
    # so torch does not take the cores from ONNX Runtime / OpenVINO running next in the same
    # process, or from another process on a shared machine. An explicit OMP_WAIT_POLICY in
    # the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return run_command(f"crnet {command}", lambda a: run_subcommand(command, a), rest)
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
