"""Command-line values that used to be accepted silently or end in a traceback: each is
refused up front with a message (exit 2), before any long work starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`crnet ARGV` in-process: its exit code and stderr."""
    from crnet import cli

    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("opset", ["7", "17", "999"])
def test_export_refuses_an_opset_it_cannot_write(tmp_path: Path, opset: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["export", "--out", str(tmp_path / "b"), "--opset", opset, "--preset",
                      "crnet-lite", "--random-weights", "--no-progress"], capsys)
    assert code == 2 and f"opset {opset} is not supported" in err
    assert not (tmp_path / "b").exists()


def test_export_bundle_refuses_an_unsupported_opset(tmp_path: Path) -> None:
    from crnet.export.to_onnx import ExportError, export_bundle

    with pytest.raises(ExportError, match="opset 7"):
        export_bundle(tmp_path / "b", opset=7, progress=False)


def test_build_refuses_zero_ort_threads(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["build", str(tmp_path), "--target", "ort", "--ort-threads", "0"], capsys)
    assert code == 2 and "--ort-threads must be at least 1" in err


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16", "--keep-fp32-ops", "Bogus"], "Bogus"),
    (["--precision", "fp16", "--check-episodes", "-5"], "--check-episodes"),
    (["--precision", "int8", "--calibration-episodes", "0"], "--calibration-episodes"),
])
def test_quantize_refuses_bad_values(tmp_path: Path, argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["quantize", str(tmp_path / "absent"), *argv], capsys)
    assert code == 2 and message in err


@pytest.mark.parametrize("command", ["lint", "eval", "bench"])
def test_json_to_a_directory_is_refused_before_the_run(tmp_path: Path, command: str,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--json DIR fails at once (exit 2), not with a traceback after the whole run."""
    from crnet import cli

    (tmp_path / "out").mkdir()
    argv = {"lint": ["lint", str(tmp_path / "absent")],
            "eval": ["eval", "--episodes", "1"],
            "bench": ["bench", str(tmp_path / "absent")]}[command]
    code = cli.main([*argv, "--json", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is a directory" in err, err


def test_onnxruntime_errors_become_backend_errors(tiny_bundle: Path) -> None:
    from crnet.runtime import Segmenter
    from crnet.runtime.backends.base import BackendError

    with Segmenter(tiny_bundle, backend="onnxruntime", threads=1) as segmenter:
        with pytest.raises(BackendError, match="image"):
            segmenter.backend.run_backbone(np.zeros((1, 3, 10, 10), np.float32))
        with pytest.raises(BackendError, match="support_feat"):
            segmenter.backend.run_refine(np.zeros((1, 1, 2, 2), np.float32),
                                         np.zeros((1, 1, 2, 2), np.float32),
                                         np.zeros((1, 1, 2, 2), np.float32))
