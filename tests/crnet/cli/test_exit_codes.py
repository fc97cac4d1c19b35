"""The exit-code policy: SIGTERM takes Ctrl-C's path, exits 143 with one line, and the
temporary directories of a killed quantize or deploy are gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crnet.cli.exit_codes import EXIT_INTERRUPTED, EXIT_TERMINATED, run_command
from crnet.runtime.files import scratch_directory

SCRATCH_PREFIXES = ("crnet-int8-", "crnet-calibrate-")


def test_sigterm_unwinds_like_an_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    made: list[Path] = []

    def command(argv: list[str] | None) -> int:
        with scratch_directory("crnet-int8-") as scratch:
            made.append(scratch)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this returns
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert run_command("crnet quantize", command) == EXIT_TERMINATED == 143
    assert capsys.readouterr().err == "crnet quantize: terminated (SIGTERM)\n"
    assert made and not made[0].exists()
    assert signal.getsignal(signal.SIGTERM) is before  # put back after the command


def test_ctrl_c_still_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    def command(argv: list[str] | None) -> int:
        raise KeyboardInterrupt

    assert run_command("crnet deploy", command) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "crnet deploy: interrupted\n"


def terminate_when_scratch_appears(command: list[str], tmp: Path, timeout: float = 240.0
                                   ) -> tuple[int, str, list[str]]:
    """Run ``crnet ...`` with TMPDIR=``tmp``; SIGTERM it once a crnet-int8-/crnet-calibrate-
    directory exists there; (exit code, stderr, the directories left in the temp dir)."""
    environment = {**os.environ, "TMPDIR": str(tmp)}
    process = subprocess.Popen([sys.executable, "-m", "crnet", *command], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        while not any(entry.name.startswith(SCRATCH_PREFIXES) for entry in tmp.iterdir()):
            if process.poll() is not None or time.monotonic() - started > timeout:
                raise AssertionError(f"no scratch directory appeared (exit {process.poll()})")
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err, sorted(entry.name for entry in tmp.iterdir()
                                           if entry.is_dir())


def check_terminated(code: int, err: str, left: list[str], prog: str) -> None:
    """Exit 143 with one line; no directory left (crnet's scratch directories, and those
    of the libraries it drives, such as ONNX Runtime's quantization pre-processing)."""
    assert code == 143, err
    assert err.splitlines() == [f"{prog}: terminated (SIGTERM)"]
    assert left == []


def test_sigterm_during_quantize(tmp_path: Path, tiny_bundle: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (tmp_path / "tmp").mkdir()
    code, err, left = terminate_when_scratch_appears(
        ["quantize", str(bundle), "--precision", "int8", "--no-progress"], tmp_path / "tmp")
    check_terminated(code, err, left, "crnet quantize")
    assert not list(bundle.glob("*.int8.onnx"))


def test_sigterm_during_deploy(tmp_path: Path, tiny_bundle: Path,
                               tiny_checkpoint: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(tiny_bundle, out / "bundle")  # the export stage reuses it
    (tmp_path / "tmp").mkdir()
    code, err, left = terminate_when_scratch_appears(
        ["deploy", "--out", str(out), "--checkpoint", str(tiny_checkpoint),
         "--precisions", "fp32,int8", "--episodes", "1", "--no-progress"], tmp_path / "tmp")
    check_terminated(code, err, left, "crnet deploy")
    assert not (out / "report.md").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
