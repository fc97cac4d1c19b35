"""Stopping without leftovers (crnet.serve.lifecycle), on real processes and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crnet.serve import lifecycle

REPO = Path(__file__).resolve().parents[3]
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def wait_for(condition, timeout_s: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def run_python(source: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)


def test_end_children_ends_an_orphan_that_ignores_sigterm() -> None:
    """A grandchild whose parent exited is adopted by the subreaper and still ended."""
    result = run_python(f"""
        import os, subprocess, sys, time
        from crnet.serve import lifecycle
        assert lifecycle.adopt_orphans()
        # a child that starts a SIGTERM-ignoring grandchild and exits at once
        subprocess.run([sys.executable, "-c", "import subprocess, sys; "
                        "subprocess.Popen([sys.executable, '-c', {STUBBORN!r}])"])
        time.sleep(0.5)
        orphans = lifecycle.children()
        ended = lifecycle.end_children(timeout_s=1.0)
        print(len(orphans), len(ended), lifecycle.children())
    """)
    assert result.returncode == 0, result.stderr
    orphans, ended, left = result.stdout.split(maxsplit=2)
    assert (orphans, ended) == ("1", "1") and left.strip() == "[]"


def test_stop_on_signals_raises_once_then_ignores() -> None:
    restore = lifecycle.stop_on_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)  # during cleanup: ignored
        time.sleep(0.1)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stop_with_parent_delivers_sigterm_when_the_parent_dies(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    child = textwrap.dedent(f"""
        import os, time
        from crnet.serve import lifecycle
        restore = lifecycle.stop_on_signals()
        lifecycle.stop_with_parent(os.getppid())
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            open({str(marker)!r}, "w").write("clean stop")
    """)
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               f"'-c', {child!r}]); time.sleep(60)"], cwd=REPO)
    time.sleep(3)  # the child armed its parent-death signal
    parent.kill()
    parent.wait()
    assert wait_for(marker.exists, 20), "the child did not stop when its parent died"
    assert marker.read_text() == "clean stop"


def test_a_parent_thread_ending_is_not_the_parents_death(tmp_path: Path) -> None:
    """Started from a worker thread that ends while its process lives on, it keeps running
    (Linux's parent-death signal would have stopped it with the thread)."""
    marker = tmp_path / "outcome"
    child = textwrap.dedent(f"""
        import os, time
        from crnet.serve import lifecycle
        restore = lifecycle.stop_on_signals()
        lifecycle.stop_with_parent(os.getppid(), interval_s=0.1)
        try:
            time.sleep(4)
            open({str(marker)!r}, "w").write("kept running")
        except KeyboardInterrupt:
            open({str(marker)!r}, "w").write("stopped")
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, threading, time
        started = []

        def start():
            started.append(subprocess.Popen([sys.executable, "-c", {child!r}]))
            time.sleep(2)  # the child is watching its parent by now

        thread = threading.Thread(target=start)
        thread.start()
        thread.join()  # the thread that started the child has ended
        started[0].wait(30)
    """)
    result = run_python(parent)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "kept running"


def test_shared_memory_files_are_only_this_servers(tmp_path: Path) -> None:
    mine = [tmp_path / f"pytrtion{os.getpid()}-a1", tmp_path / f"pytrtion{os.getpid()}-b2"]
    other = tmp_path / f"pytrtion{os.getpid() + 1}-c3"
    for path in [*mine, other]:
        path.write_bytes(b"x")
    assert lifecycle.remove_shared_memory(root=tmp_path) == mine
    assert [path.name for path in tmp_path.iterdir()] == [other.name]


def test_shared_memory_a_killed_child_mapped_is_removed() -> None:
    name = Path(f"/dev/shm/crnet-test-{os.getpid()}")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import mmap, os, time
        fd = os.open({str(name)!r}, os.O_CREAT | os.O_RDWR)
        os.ftruncate(fd, 4096)
        region = mmap.mmap(fd, 4096)
        print("mapped", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    watch = lifecycle.SharedMemoryWatch(interval_s=60)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "mapped"
        watch.snapshot()
        assert name in watch.seen
        child.kill()  # no clean-up of its own: the file stays
        child.wait()
        assert name.exists()
        assert watch.remove_left() == [name] and not name.exists()
    finally:
        child.kill()
        name.unlink(missing_ok=True)
