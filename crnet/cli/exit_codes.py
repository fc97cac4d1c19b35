"""The exit-code policy of every ``crnet`` command: expected errors as one line, no traceback.

0 success; 1 an expected error (a ``CrnetError``, a file-system error, a missing extra) or
a failed check or gate; 2 a bad command line; 3 a requested engine that cannot be built
here (``crnet build --target tensorrt``); 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from crnet.runtime.errors import CrnetError, UsageError, missing_extra_from

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
