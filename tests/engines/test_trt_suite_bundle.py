"""The GPU suite's bundle copy, checked without a GPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crnet.runtime.bundle import Bundle, BundleError
from tests.engines.trt_suite_bundle import copy_without_engines


@pytest.fixture(scope="module")
def built_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle that went through `crnet build --target ort`."""
    from crnet.engines.engine_ort import build_ort_bundle

    copy = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("built") / "bundle"))
    build_ort_bundle(copy, "fp32", log=lambda *_: None)
    assert any(name.startswith("engines/") for name in Bundle.load(copy).manifest["files"])
    return copy


def test_plain_copy_without_engines_fails_verification(built_bundle: Path,
                                                       tmp_path: Path) -> None:
    """What the suite's fixture did before: the manifest still lists engines/ files."""
    copy = shutil.copytree(built_bundle, tmp_path / "plain",
                           ignore=shutil.ignore_patterns("engines"))
    with pytest.raises(BundleError, match="engines/"):
        Bundle.load(copy, verify=True)


def test_copy_without_engines_verifies(built_bundle: Path, tmp_path: Path) -> None:
    copy = copy_without_engines(built_bundle, tmp_path / "copy")
    bundle = Bundle.load(copy, verify=True)
    assert not (copy / "engines").exists()
    assert "ort_builds" not in bundle.manifest and "engines" not in bundle.manifest
    assert set(bundle.manifest["files"]) == {
        name for name in Bundle.load(built_bundle).manifest["files"]
        if not name.startswith("engines/")}


def test_summary_table_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.engines import trt_summary

    monkeypatch.setattr(trt_summary, "_ROWS", [])
    monkeypatch.setattr(trt_summary, "_CONTEXT", {})
    trt_summary.describe(tensorrt="10.8.0.43", gpu="H100")
    trt_summary.record("int8", "mIoU vs PyTorch fp32", "60.10 vs 60.50 (-0.40, gate +-1) pass")
    trt_summary.record("fp32", "outputs vs ONNX Runtime", "pass")
    text = trt_summary.render().splitlines()
    assert text[0] == "TensorRT suite: tensorrt 10.8.0.43, gpu H100"
    assert text[1] == "int8  mIoU vs PyTorch fp32     60.10 vs 60.50 (-0.40, gate +-1) pass"
    assert text[2] == "fp32  outputs vs ONNX Runtime  pass"
    monkeypatch.setenv("CRNET_TRT_SUMMARY", str(tmp_path / "summary.json"))
    written = trt_summary.write_json()
    assert written is not None and json.loads(written.read_text())["rows"][0]["precision"] == "int8"
