"""crnet.runtime.files: durable atomic writes, the umask read without being changed, JSON
reading that never tracebacks, regular-file hashing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crnet.runtime.files import (
    current_umask,
    read_json_file,
    sha256_regular_file,
    write_bytes_atomic,
)


def test_atomic_writes_fsync_the_file_and_its_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording(descriptor: int) -> None:
        mode = os.fstat(descriptor).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    write_bytes_atomic(tmp_path / "out.json", b"{}")
    assert (tmp_path / "out.json").read_bytes() == b"{}"
    assert "file" in synced, "the data was not flushed before the rename"
    if hasattr(os, "O_DIRECTORY"):
        assert synced.index("dir") > synced.index("file"), "the rename was not synced"


def test_the_umask_is_read_without_being_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the umask to 0, even for a moment, lets other threads create world-writable
    files; os.umask must never be called."""
    expected = os.umask(0o027)
    os.umask(0o027)
    try:
        def forbidden(mask: int) -> int:
            raise AssertionError(f"os.umask({mask:o}) was called")

        monkeypatch.setattr(os, "umask", forbidden)
        assert current_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(expected)


def test_the_umask_fallback_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without /proc, a probe file's mode gives the umask (still without os.umask)."""
    real_open = open

    def no_proc(path: object, *args: object, **kwargs: object) -> object:
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    expected = _proc_umask()
    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(os, "umask", lambda mask: (_ for _ in ()).throw(
        AssertionError("os.umask called")))
    assert current_umask() == expected


def _proc_umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no /proc/self/status Umask line on this system")


def test_published_bundles_do_not_call_os_umask(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.export.to_onnx import _publishable

    (tmp_path / "a.onnx").write_bytes(b"x")
    monkeypatch.setattr(os, "umask", lambda mask: (_ for _ in ()).throw(
        AssertionError("os.umask called")))
    _publishable(tmp_path)
    assert stat.S_IMODE((tmp_path / "a.onnx").stat().st_mode) == 0o666 & ~_proc_umask()


@pytest.mark.parametrize("content", [b"\xff\xfe", b"[" * 100_000, b"{", b""])
def test_read_json_file_raises_value_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(ValueError):
        read_json_file(tmp_path / "x.json")


def test_read_json_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        read_json_file(tmp_path)


def test_only_regular_files_are_hashed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_regular_file(tmp_path / "f") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ValueError, match="regular file|directory"):
        sha256_regular_file(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ValueError, match="regular file"):
            sha256_regular_file(tmp_path / "fifo")
