"""The exit-code policy of every ``crnet`` command: expected errors as one line, no traceback.

0 success; 1 an expected error (a ``CrnetError``, a file-system error, a missing extra) or
a failed check or gate; 2 a bad command line; 3 a requested engine that cannot be built
here (``crnet build --target tensorrt``); 130 interrupted (SIGINT, Ctrl-C); 143 terminated
(SIGTERM).

SIGTERM takes the path of Ctrl-C: while a command runs, its handler raises ``Terminated``
(a ``KeyboardInterrupt``) in the main thread, so every ``finally`` and context manager
that cleans up after an interrupt (temporary directories, half-written files) runs before
the one-line message. Further SIGTERMs while that cleanup runs are ignored; SIGKILL still
ends the process at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from crnet.runtime.errors import CrnetError, UsageError, missing_extra_from

EXIT_OK = 0
EXIT_FAILED = 1  # an expected error (CrnetError, a file-system error) or a failed check/gate
EXIT_USAGE = 2  # a bad command line (argparse, UsageError)
EXIT_UNAVAILABLE = 3  # `crnet build --target tensorrt`: TensorRT cannot build on this machine
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a SIGTERM death


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a command ran (raised where Ctrl-C would raise)."""


@contextmanager
def sigterm_interrupts() -> Iterator[Callable[[], bool]]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread (once; later
    ones are ignored while it unwinds); the previous handler is put back afterwards. Yields
    a function that tells whether SIGTERM arrived: a library may turn the exception into
    another one (an extension module interrupted while it imports raises ImportError). In
    another thread, where Python cannot install handlers, the block runs unchanged."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        if not arrived:
            arrived.append(signum)
            raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield lambda: bool(arrived)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(prog: str, main: Callable[[list[str] | None], int | None],
                argv: list[str] | None = None) -> int:
    """Run a command's ``main(argv)`` under the project's one exit-code policy.

    0 success; 1 an expected error, printed as one line without a traceback (CrnetError,
    OSError, a missing extra) or a failed check or gate; 2 a bad command line; 3 a
    requested engine that cannot be built here (`crnet build --target tensorrt`); 130
    interrupted; 143 terminated by SIGTERM, whatever the command's unwinding raised or
    returned (see the module docstring).
    Any other exception is a bug and keeps its traceback.
    """
    with sigterm_interrupts() as terminated:
        try:
            code = int(main(argv) or 0)
        except BaseException as error:
            if terminated():
                return _terminated(prog)
            return _exit_code(prog, error)
    return _terminated(prog) if terminated() else code


def _terminated(prog: str) -> int:
    print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
    return EXIT_TERMINATED


def _exit_code(prog: str, error: BaseException) -> int:
    """The exit code of an exception a command raised, its one line printed; anything
    outside the policy (a bug, SystemExit) is raised again."""
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, CrnetError):
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED
    if isinstance(error, ModuleNotFoundError):
        missing = missing_extra_from(error, prog)
        if missing is None:
            raise error
        print(f"{prog}: error: {missing}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(error, OSError):
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    raise error
