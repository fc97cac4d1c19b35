"""The project's expected errors: one base class, and the missing-extra error (stdlib only).

Every error that a user can cause or fix (bad input, a bundle or checkpoint that does not
fit, a backend or extra that is not installed, a failed gate) derives from ``CrnetError``.
The ``crnet`` command prints such errors as one line and exits 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable

# import name -> the extra of crnet-deploy that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "export",
    "onnxscript": "export",
    "onnxconverter_common": "export",
    "safetensors": "export",
    "skimage": "export",
    "tqdm": "export",
    "PIL": "export",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "openvino": "openvino",
    "tritonclient": "serve",
    "pytriton": "serve",
    "polygraphy": "tensorrt",
}


class CrnetError(Exception):
    """Base of every expected error of crnet-deploy (bad input, bundle, backend, gate)."""


class UsageError(CrnetError):
    """A command-line value that is not valid (the ``crnet`` command exits 2 for it)."""


class MissingExtraError(CrnetError, ImportError):
    """A feature needs a package that the installed extras do not bring."""

    def __init__(self, module: str, feature: str, extra: str | None = None) -> None:
        self.module = module
        self.extra = extra or EXTRA_OF_MODULE.get(module.split(".")[0], "export")
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'crnet-deploy[{self.extra}]'"
        )


def missing_extra_from(error: ModuleNotFoundError, feature: str) -> MissingExtraError | None:
    """A MissingExtraError for an import that failed on a known optional package, else None."""
    name = (error.name or "").split(".")[0]
    if name in EXTRA_OF_MODULE:
        return MissingExtraError(name, feature)
    return None


EXIT_OK = 0
EXIT_FAILED = 1  # an expected error (CrnetError, a file-system error) or a failed check/gate
EXIT_USAGE = 2  # a bad command line (argparse, UsageError)
EXIT_UNAVAILABLE = 3  # `crnet build --target tensorrt`: TensorRT cannot build on this machine
EXIT_INTERRUPTED = 130


def run_command(prog: str, main: Callable[[list[str] | None], int | None],
                argv: list[str] | None = None) -> int:
    """Run a command's ``main(argv)`` under the project's one exit-code policy.

    0 success; 1 an expected error, printed as one line without a traceback (CrnetError,
    OSError, a missing extra) or a failed check or gate; 2 a bad command line; 3 a
    requested engine that cannot be built here (`crnet build --target tensorrt`); 130
    interrupted.
    Any other exception is a bug and keeps its traceback.
    """
    import sys

    try:
        return int(main(argv) or 0)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CrnetError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except ModuleNotFoundError as error:
        missing = missing_extra_from(error, prog)
        if missing is None:
            raise
        print(f"{prog}: error: {missing}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
