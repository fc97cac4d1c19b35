"""Fresh virtual environments with crnet-deploy's wheel, for tests of an install.

The wheel is built once per session from a clean copy of the tree (setuptools reuses an
in-tree build/ directory, stale files included); each environment installs it with the
extras a test names and nothing else of this interpreter's packages. ``plain_venv`` and
``tiny_bundle`` are built once per test process and shared by the modules that use them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IGNORED = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
           ".ruff_cache", "deploy-out", "runs", "bundle", "notes")


def clean_environment() -> dict[str, str]:
    """This process's environment without PYTHONPATH/PYTHONHOME, so a venv's interpreter
    runs its own installed copy of crnet-deploy, not this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run(command: list[str], cwd: Path, timeout: float = 1200,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run in ``clean_environment()``, capturing text output."""
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env=clean_environment(), timeout=timeout, **kwargs)


def build_wheel(work: Path) -> Path:
    """crnet-deploy's wheel, built from a clean copy of the tree into ``work``."""
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                 str(work / "wheels"), str(source)], cwd=work)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "wheels").glob("crnet_deploy-*.whl")
    return wheel


def make_venv(directory: Path, wheel: Path, extras: str = "") -> Path:
    """A fresh venv with ``wheel[extras]`` installed; returns its bin directory."""
    venv.EnvBuilder(with_pip=True).create(directory)
    bin_dir = directory / "bin"
    requirement = f"{wheel}[{extras}]" if extras else str(wheel)
    installed = run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                     requirement], cwd=directory)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return bin_dir


_SHARED: dict[str, Path] = {}


def plain_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """The plain install (``wheel``, no extras), built once per test process and shared by
    the modules that test it (a session fixture defined in two modules would build two)."""
    if "plain" not in _SHARED:
        _SHARED["plain"] = make_venv(tmp_path_factory.mktemp("plain-install") / "venv", wheel)
    return _SHARED["plain"]


def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bundle (tests/runtime/bundles.py), exported once per test process
    for the tests outside tests/runtime (whose conftest has its own ``runtime_bundle``)."""
    if "bundle" not in _SHARED:
        from tests.runtime.bundles import export_tiny_bundle

        _SHARED["bundle"] = export_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")
    return _SHARED["bundle"]
