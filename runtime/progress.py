"""Progress reporting for long stages, with no progress-bar library.

A stage takes ``progress`` as a ``Progress`` reporter (or a bool: True is the process's
default reporter, False none) and drives it through ``track`` or ``bar``; it never imports
a progress-bar library itself. The default reporter is silent; the `crnet` command installs
a terminal one (crnet.cli.progress) for the duration of a command, so a library caller sees
no output unless it asks for some.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressBar(Protocol):
    """One running bar: advanced by ``update``, ended by ``close``."""

    def update(self, n: int = 1) -> object:
        """Count ``n`` more steps done."""

    def set_postfix_str(self, text: str) -> object:
        """Show ``text`` after the counts (e.g. the running loss)."""

    def write(self, text: str) -> object:
        """Print a line of log above the bar."""

    def close(self) -> None:
        """End the bar."""


class Progress(Protocol):
    """Makes bars: ``total`` steps (None: unknown), a short description."""

    def bar(self, total: int | None, description: str, *, leave: bool = False,
            initial: int = 0) -> ProgressBar:
        """A new bar; ``leave`` keeps it on screen when closed; ``initial`` steps done."""


class _SilentBar:
    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def set_postfix_str(self, text: str) -> None:
        """Nothing to show."""

    def write(self, text: str) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to end."""


class SilentProgress:
    """The reporter that shows nothing (the default)."""

    def bar(self, total: int | None, description: str, *, leave: bool = False,
            initial: int = 0) -> ProgressBar:
        """A bar that shows nothing."""
        return _SilentBar()


SILENT = SilentProgress()
_default: Progress = SILENT


def resolve(progress: bool | Progress | None) -> Progress:
    """The reporter of a stage's ``progress`` argument: True the default one, False or None
    the silent one, a reporter itself."""
    if progress is True:
        return _default
    if progress is False or progress is None:
        return SILENT
    return progress


@contextlib.contextmanager
def default_progress(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the reporter that ``progress=True`` means, inside the block."""
    global _default
    previous, _default = _default, progress
    try:
        yield progress
    finally:
        _default = previous


@contextlib.contextmanager
def bar(progress: bool | Progress | None, total: int | None, description: str, *,
        leave: bool = False, initial: int = 0) -> Iterator[ProgressBar]:
    """A bar of the resolved reporter, closed at the end of the block."""
    running = resolve(progress).bar(total, description, leave=leave, initial=initial)
    try:
        yield running
    finally:
        running.close()


def track(items: Iterable[T], progress: bool | Progress | None, description: str, *,
          total: int | None = None, leave: bool = False) -> Iterator[T]:
    """``items``, one bar step per item (``total`` defaults to ``len(items)`` where known)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(progress, total, description, leave=leave) as running:
        for item in items:
            yield item
            running.update(1)
