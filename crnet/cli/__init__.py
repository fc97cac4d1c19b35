"""The `crnet` command: one subcommand per stage, each a thin `main(argv)` in its module.

The top layer of the project (docs/architecture.md): it imports every package below it and
nothing imports it. Exit codes follow crnet.cli.exit_codes.run_command: 0 success, 1 an
expected error or a failed check (printed as one line), 2 a bad command line.
"""

from __future__ import annotations

import importlib
import os
import sys

from crnet.cli.exit_codes import EXIT_USAGE, run_command

# subcommand -> (module with main(argv), one-line help). Modules import lazily so that
# `crnet info` does not pay for onnxruntime, and `--help` works in the plain install.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("crnet.info", "parameter count and FLOPs of each preset"),
    "train": ("crnet.models.train", "episodic training on base-class episodes"),
    "export": (
        "crnet.export.to_onnx", "split ONNX export of a checkpoint into a bundle, with parity"),
    "lint": ("crnet.export.lint", "check a bundle's graphs against TensorRT's ONNX parser rules"),
    "quantize": ("crnet.calibration.quantize", "add fp16 or int8 variants of a bundle's graphs"),
    "eval": ("crnet.evaluate", "mIoU / FB-IoU of a variant against the PyTorch model"),
    "bench": ("crnet.bench.latency", "latency, throughput and memory of runtime.Segmenter"),
    "deploy": (
        "crnet.deploy.pipeline", "the main job: export, quantize, build, evaluate, bench, report"),
    "build": (
        "crnet.engines.build_engine", "trtexec-style engine build (ORT CPU build without TRT)"),
    "serve": ("crnet.serve.server", "Triton Inference Server (PyTriton) with cached supports"),
    "bench-remote": ("crnet.bench.remote", "load a `crnet serve` server with N clients"),
    "triton-repo": ("crnet.serve.triton_repo", "a Triton model repository (graphs + BLS models)"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: crnet <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`crnet <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand's main; unknown commands list the known ones."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"crnet: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    # Before torch loads its OpenMP runtime: idle OpenMP workers sleep instead of spinning,
    # so torch does not take the cores from ONNX Runtime / OpenVINO running next in the same
    # process, or from another process on a shared machine. An explicit OMP_WAIT_POLICY in
    # the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    def run(arguments: list[str] | None) -> int:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        return int(module.main(arguments) or 0)

    try:
        return run_command(f"crnet {command}", run, rest)
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
