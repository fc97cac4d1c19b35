"""One cached support shared by the threads of a Segmenter or RemoteSegmenter, and the
rule that keeps a thread from segmenting with another thread's support (stdlib only).

Each thread remembers (thread-locally) the token of the support it last set. A thread that
has set one only segments with that same support: when another thread has replaced it,
``for_this_thread`` raises SupportReplacedError instead of handing over the other thread's
support. A thread that never set one uses whatever is current (one thread sets the
support, others segment with it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

from crnet.runtime.preprocess import InputError

T = TypeVar("T")


class NoSupportError(InputError):
    """segment() called before set_support()."""


class SupportReplacedError(InputError):
    """segment() without a support of its own in a thread whose set_support() another
    thread has since replaced: the cached support is one per segmenter."""


@dataclass(frozen=True)
class _Installed(Generic[T]):
    """The cached support, with a token unique to the set_support() call that set it and
    the name of the thread that called it."""

    support: T
    token: object
    thread: str


class SupportSlot(Generic[T]):
    """A segmenter's one cached support, and which thread set it (module docstring).

    ``missing`` and ``advice`` finish the NoSupportError and SupportReplacedError messages:
    what to call first, and how to give each thread its own support.
    """

    def __init__(self, missing: str, advice: str) -> None:
        self._installed: _Installed[T] | None = None
        self._lock = threading.Lock()
        self._mine = threading.local()
        self._missing, self._advice = missing, advice

    @property
    def current(self) -> T | None:
        """The cached support, whoever set it; None when there is none."""
        installed = self._installed
        return None if installed is None else installed.support

    def install(self, support: T) -> None:
        """Make ``support`` the cached one, set by the calling thread."""
        token = object()
        with self._lock:
            self._installed = _Installed(support, token, threading.current_thread().name)
        self._mine.token = token

    def clear(self) -> None:
        """Forget the calling thread's support. One another thread has set since is
        left in place (it is not this thread's to clear)."""
        mine = getattr(self._mine, "token", None)
        with self._lock:
            installed = self._installed
            if installed is not None and (mine is None or installed.token is mine):
                self._installed = None
        self._mine.token = None

    def for_this_thread(self) -> T:
        """The support a call without a support of its own uses in the calling thread."""
        installed = self._installed  # one read: the support and its owner together
        if installed is None:
            raise NoSupportError(f"no support set: {self._missing}")
        mine = getattr(self._mine, "token", None)
        if mine is not None and installed.token is not mine:
            here = threading.current_thread().name
            raise SupportReplacedError(
                f"thread {here!r} set a support, but thread {installed.thread!r} has "
                f"since replaced it with its own (one support is cached); {self._advice}")
        return installed.support
