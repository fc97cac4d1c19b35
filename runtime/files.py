"""Small file helpers shared by every stage: atomic writes, sha256, locks (stdlib only).

Atomic writes go to a temporary file beside the target, which is flushed to disk (fsync)
before it is renamed over the target; the directory is synced after the rename, so a
crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_TIMEOUT_S = 60.0  # how long a writer waits for another one before giving up


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_regular_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a regular file; ValueError for a FIFO, device, socket or directory
    (opened without blocking and checked before a byte is read, so a FIFO cannot hang)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except IsADirectoryError:
        raise ValueError("is a directory, expected a regular file") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"is not a regular file (mode {stat.filemode(mode)}); only "
                             "regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    digest = hashlib.sha256()
    with os.fdopen(descriptor, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> Any:
    """Parse a JSON file; ValueError (not a traceback) for non-UTF-8, invalid or too
    deeply nested JSON, for a path that is not a regular file, and for a file larger than
    ``max_bytes`` (checked before it is read or parsed)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a JSON file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)  # not blocking: a FIFO is refused, never waited on
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{path} is not a regular file (mode "
                             f"{stat.filemode(status.st_mode)}), expected a JSON file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        size = status.st_size
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{path} is {size} bytes, more than the {max_bytes} this "
                             "reader accepts")
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # grew while it was read
        raise ValueError(f"{path} is more than the {max_bytes} bytes this reader accepts")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a valid file") from None


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk where the platform allows it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(descriptor)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to disk (before it is renamed into place)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """os.replace, then fsync of the target's directory (and the source's, if another)."""
    os.replace(source, target)
    _fsync_directory(Path(target).parent)
    if Path(source).parent.resolve() != Path(target).parent.resolve():
        _fsync_directory(Path(source).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; fsync it and rename it over ``path`` only on
    success (then sync the directory)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                         dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    os.chmod(temporary_path, 0o666 & ~current_umask())  # mkstemp makes owner-only files
    try:
        yield temporary_path
        fsync_path(temporary_path)
        replace_durably(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would set it, for a moment,
    for every thread): /proc/self/status on Linux, else a probe file's mode."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    try:
        with tempfile.TemporaryDirectory(prefix="umask-probe-") as directory:
            probe = os.path.join(directory, "probe")
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return 0o666 & ~stat.S_IMODE(os.stat(probe).st_mode)  # the kernel applied it
    except OSError:
        return 0o022


def check_writable_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Raise UsageError early when ``path`` cannot become a file (it is a directory, or its
    parent is a file), so a long run does not fail at its very end."""
    from crnet.runtime.errors import UsageError

    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{what} {target} is a directory; expected a file path")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {target}: {parent} is not a directory")
            break
    return target


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], what: str = "write",
                   timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Waits up to ``timeout`` seconds for another holder (process or thread), then raises
    TimeoutError naming the holder's pid. The lock dies with its holder (a killed process
    never leaves a stale lock).
    """
    path = Path(path)
    handle = open(path, "a+b")  # noqa: SIM115 - closed in finally
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read(64).decode("ascii", "replace").strip() or "unknown"
                raise TimeoutError(
                    f"another crnet process (pid {holder}) holds {path} (to {what}) for over "
                    f"{timeout:.0f} s; wait for it to finish, or remove {path.name} if no "
                    "such process runs")
            time.sleep(0.05)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()).encode())
            handle.flush()
            yield
        finally:
            _unlock(handle)
    finally:
        handle.close()


def _try_lock(handle: Any) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: Any) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # cannot tell: assume alive, never remove
    return True


def clean_stale_directories(parent: str | os.PathLike[str], prefix: str, suffix: str = "",
                            *, legacy_age_s: float = 86400.0) -> list[Path]:
    """Remove leftover temporary directories of killed runs; return what was removed.

    Only directories in ``parent`` named ``{prefix}{pid}-{random}{suffix}`` (as
    ``scratch_directory`` and the export name them), owned by this user, whose ``pid`` no
    longer runs, are removed; a name without a pid (older versions) only when it was
    last modified more than ``legacy_age_s`` ago. Nothing else is touched.
    """
    import shutil

    removed: list[Path] = []
    parent = Path(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(suffix)) or \
                len(name) <= len(prefix) + len(suffix):
            continue
        middle = name[len(prefix):len(name) - len(suffix) if suffix else None]
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and
                                              info.st_uid != os.getuid()):
            continue
        pid_text, dash, _ = middle.partition("-")
        if dash and pid_text.isdigit():
            stale = not pid_alive(int(pid_text))
        else:
            stale = time.time() - info.st_mtime > legacy_age_s
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_owned_directory(parent: str | os.PathLike[str], prefix: str, suffix: str = "") -> Path:
    """mkdtemp named ``{prefix}{pid}-{random}{suffix}`` so a later run can tell whether its
    creator still runs (``clean_stale_directories``)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=suffix, dir=parent))


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A temporary directory in the system temp dir, removed afterwards; leftovers of
    killed runs with the same prefix are cleaned first (only dead-pid ones)."""
    import shutil

    parent = Path(tempfile.gettempdir())
    clean_stale_directories(parent, prefix)
    directory = make_owned_directory(parent, prefix)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def exchange_paths(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where
    the platform or file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                       rename_exchange)
    if result != 0:
        return False
    _fsync_directory(Path(second).parent)
    return True
