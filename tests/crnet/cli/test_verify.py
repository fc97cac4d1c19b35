"""`crnet verify BUNDLE`: every CPU variant against the golden references, exit 1 naming a
failed variant, exit 4 for a bundle without them, --record, and the plain install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crnet.cli import main
from crnet.cli.commands.verify import EXIT_NO_GOLDEN
from tests.runtime.test_golden import break_int8, copy_bundle, drop_golden


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with decisive masks and all three precisions (fp32, fp16, int8)."""
    from crnet.calibration.fp16 import quantize_fp16
    from crnet.calibration.options import Fp16Options
    from tests.runtime.bundles import export_int8_bundle

    bundle = export_int8_bundle(tmp_path_factory.mktemp("verify"))
    quantize_fp16(bundle, Fp16Options(check_episodes=0, progress=False))
    return bundle


def test_every_variant_passes(full_bundle: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "verify.json"
    assert main(["verify", str(full_bundle), "--backend", "onnxruntime",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.startswith("onnxruntime ")]
    assert [row[1] for row in rows] == ["fp32", "fp16", "int8"]
    assert all(row[-1] == "pass" for row in rows)
    assert "3 variant(s) on 20 golden episodes" in text and "all passed" in text
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["failed"] == []
    assert [r["precision"] for r in report["results"]] == ["fp32", "fp16", "int8"]


def test_the_default_is_every_installed_cpu_backend(full_bundle: Path) -> None:
    """In a process of its own (it loads OpenVINO where installed)."""
    from crnet.runtime.backends.base import REFERENCE_BACKEND, backends_where

    result = subprocess.run([sys.executable, "-m", "crnet", "verify", str(full_bundle),
                             "--quick"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    backends = [name for name in backends_where("runs_on_cpu", installed=True)
                if name != REFERENCE_BACKEND]
    rows = [line.split()[:3] for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in backends]
    assert rows == [[name, precision, "5"] for name in backends
                    for precision in ("fp32", "fp16", "int8")]


def test_a_broken_int8_variant_fails_by_name(full_bundle: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bundle = copy_bundle(full_bundle, tmp_path / "bundle")
    break_int8(bundle)
    out = tmp_path / "verify.json"
    assert main(["verify", str(bundle), "--backend", "onnxruntime", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "FAIL int8 on onnxruntime" in text
    verdicts = {line.split()[1]: line.split()[-1] for line in text.splitlines()
                if line.startswith("onnxruntime ")}
    assert verdicts == {"fp32": "pass", "fp16": "pass", "int8": "FAIL"}
    assert json.loads(out.read_text())["failed"] == ["int8 on onnxruntime"]
    # one precision asked for: only that one runs
    assert main(["verify", str(bundle), "--backend", "onnxruntime", "--precision",
                 "fp32"]) == 0


def test_a_bundle_without_golden_references(full_bundle: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bundle = copy_bundle(full_bundle, tmp_path / "bundle")
    drop_golden(bundle)
    assert main(["verify", str(bundle), "--backend", "onnxruntime"]) == EXIT_NO_GOLDEN == 4
    err = capsys.readouterr().err
    assert "has no golden references" in err and "--record" in err
    assert len(err.strip().splitlines()) == 1

    assert main(["verify", str(bundle), "--backend", "onnxruntime", "--precision", "int8",
                 "--record"]) == 0
    assert "recorded 20 golden episodes" in capsys.readouterr().out
    assert main(["verify", str(bundle), "--backend", "onnxruntime", "--precision", "int8"]) == 0


def test_bad_command_lines(full_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(full_bundle), "--checkpoint", "x.safetensors"]) == 2
    assert "--checkpoint and --force apply to --record only" in capsys.readouterr().err
    assert main(["verify", str(full_bundle), "--threads", "0"]) == 2
    assert main(["verify", str(full_bundle) + "-missing"]) == 1
    assert "bundle directory not found" in capsys.readouterr().err


@pytest.mark.slow
def test_the_plain_install_verifies_a_fresh_bundle(
        full_bundle: Path, tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path,
        tmp_path: Path) -> None:
    """No torch in the venv: `crnet verify` passes every variant there, and names the
    broken one."""
    from tests.venvs import plain_venv, run

    bin_dir = plain_venv(tmp_path_factory, crnet_wheel)
    result = run([str(bin_dir / "crnet"), "verify", str(full_bundle)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 variant(s) on 20 golden episodes" in result.stdout
    has_torch = run([str(bin_dir / "python"), "-c", "import torch"], cwd=tmp_path)
    assert has_torch.returncode != 0
    bundle = copy_bundle(full_bundle, tmp_path / "bundle")
    break_int8(bundle)
    result = run([str(bin_dir / "crnet"), "verify", str(bundle)], cwd=tmp_path)
    assert result.returncode == 1 and "FAIL int8 on onnxruntime" in result.stdout
