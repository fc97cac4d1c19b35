"""Stopping `crnet serve` without leftovers: signals, parent death, orphans, shared memory.

Triton runs each Python-backend model instance in a ``triton_python_backend_stub``
process, a child of tritonserver, with its tensors in ``/dev/shm`` regions named after
this process (``pytrtion<pid>-...``, PyTriton's spelling). A stub busy with a request when
tritonserver stops can outlive it, and the regions of a killed server stay in /dev/shm.
So the serving process

* becomes a child subreaper (Linux): a stub whose tritonserver is gone is reparented to
  it, not to init, and ``end_children`` can still end it;
* sends itself SIGTERM when its own parent exits (``stop_with_parent``), which stops it
  the way Ctrl-C does;
* after PyTriton's own stop, ends every child still running (SIGTERM, then SIGKILL) and
  removes the shared-memory files named after its pid (``remove_shared_memory``) and
  the other /dev/shm files its processes mapped and left (``SharedMemoryWatch``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

PR_SET_CHILD_SUBREAPER = 36
SHM_DIR = Path("/dev/shm")


def _prctl(option: int, value: int) -> bool:
    """prctl(option, value) through libc; False where there is none (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants; False where unsupported."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def stop_with_parent(parent: int, interval_s: float = 0.5) -> threading.Thread:
    """Send SIGTERM to this process once the process ``parent`` has exited (this process
    is then reparented: its parent pid changes), polled every ``interval_s`` seconds on a
    daemon thread. Linux's PR_SET_PDEATHSIG is not used: it fires when the parent *thread*
    that started this process ends, and a server started from a worker thread would take
    that for its parent's death."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="crnet-parent-watch", daemon=True)
    thread.start()
    return thread


def stop_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt once (Triton.serve() stops on it); later
    ones are ignored so that they cannot cut the cleanup short. Returns a function that
    puts the previous handlers back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt(f"signal {signum}")

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def children(pid: int | None = None) -> list[int]:
    """The pids whose parent is ``pid`` (this process by default), from /proc."""
    parent = os.getpid() if pid is None else pid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            # the command name may hold spaces and parentheses: fields follow the last ')'
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int | None = None) -> list[int]:
    """Children, their children, ... of ``pid`` (this process by default)."""
    found: list[int] = []
    frontier = [os.getpid() if pid is None else pid]
    while frontier:
        level = [child for parent in frontier for child in children(parent)]
        found += level
        frontier = level
    return found


def process_running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_name(pid: int) -> str:
    """The command name of ``pid`` ("?" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def end_children(timeout_s: float = 5.0) -> list[str]:
    """SIGTERM every descendant still running, SIGKILL those left after ``timeout_s``,
    reap the ones that are this process's children; "name (pid)" of each one ended."""
    targets = [pid for pid in descendants() if process_running(pid)]
    ended = [f"{process_name(pid)} ({pid})" for pid in targets]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(process_running(pid) for pid in targets) and time.monotonic() < deadline:
        for pid in targets:
            _reap(pid)
        time.sleep(0.05)
    for pid in targets:
        if process_running(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for pid in targets:
        for _ in range(100):
            _reap(pid)
            if not process_running(pid):
                break
            time.sleep(0.01)
    return ended


def shared_memory_files(pid: int | None = None, root: Path = SHM_DIR) -> list[Path]:
    """The Python backend's shared-memory files of the server in process ``pid``."""
    owner = os.getpid() if pid is None else pid
    return sorted(root.glob(f"pytrtion{owner}-*")) + sorted(root.glob(f"pytriton{owner}-*"))


def remove_shared_memory(pid: int | None = None, root: Path = SHM_DIR) -> list[Path]:
    """Delete the files ``shared_memory_files`` lists; the files removed."""
    removed = []
    for path in shared_memory_files(pid, root):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def mapped_shared_memory(pids: Iterable[int]) -> set[Path]:
    """The /dev/shm files the processes ``pids`` have mapped (from /proc/<pid>/maps)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                start = line.find(f" {SHM_DIR}/")
                if start >= 0:
                    found.add(Path(line[start + 1:].removesuffix(" (deleted)")))
    return found


class SharedMemoryWatch:
    """Remembers every /dev/shm file this process and its descendants map (PyTriton's
    tensor store creates ``psm_*`` segments in the stubs' helper processes), sampled every
    ``interval_s`` seconds on a daemon thread, so that those left after a stop can go."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.seen: set[Path] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._interval_s = interval_s
        threading.Thread(target=self._run, name="crnet-shm-watch", daemon=True).start()

    def _run(self) -> None:
        while not self._done.wait(self._interval_s):
            self.snapshot()

    def snapshot(self) -> None:
        """Add the files mapped now."""
        mapped = mapped_shared_memory([os.getpid(), *descendants()])
        with self._lock:
            self.seen |= mapped

    def remove_left(self) -> list[Path]:
        """Stop sampling; delete the remembered files that still exist; those deleted."""
        self._done.set()
        removed = []
        with self._lock:
            for path in sorted(self.seen):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        return removed
