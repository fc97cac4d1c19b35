"""`crnet build --print-trtexec` prints commands only for graphs the bundle has."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crnet.cli import main


def test_a_variant_the_bundle_lacks_is_refused(tiny_bundle: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tiny_bundle), "--precision", "int8", "--print-trtexec"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"crnet build: error: bundle {tiny_bundle} has no int8 variant; precisions with both "
        f"graphs present: fp32 (`crnet quantize {tiny_bundle} --precision int8` adds it)"]


@pytest.mark.parametrize("precision", ["int8", "all"])
def test_a_listed_variant_whose_graph_is_gone_is_refused(
        precision: str, tiny_bundle: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest names int8 graphs that are not on disk (deleted, or a copy that left
    them out): no trtexec line for them."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["variants"]["int8"] = {"backbone": "backbone.int8.onnx",
                                    "refine": "refine.int8.onnx", "how": {}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main(["build", str(bundle), "--precision", precision, "--print-trtexec"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"crnet build: error: bundle {bundle} lists a int8 variant but lacks "
        f"{bundle / 'backbone.int8.onnx'}, {bundle / 'refine.int8.onnx'}; precisions with "
        f"both graphs present: fp32 (`crnet quantize {bundle} --precision int8` makes it "
        "again)"]
    assert main(["build", str(bundle), "--precision", "fp32", "--print-trtexec"]) == 0
    assert "backbone.fp32.onnx" in capsys.readouterr().out
