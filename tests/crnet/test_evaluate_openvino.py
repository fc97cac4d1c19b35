from __future__ import annotations

import json
from pathlib import Path

import pytest

from crnet.cli import main as crnet_main
from crnet.runtime.backends.base import backend_class
from tests.runtime.bundles import export_tiny_bundle

pytestmark = pytest.mark.openvino  # run in their own process: tests/test_openvino_isolated.py


def test_inference_precision_is_for_openvino_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert crnet_main(["eval", "--bundle", "x", "--backend", "onnxruntime",
                       "--inference-precision", "bf16"]) == 2
    assert "--backend openvino only" in capsys.readouterr().err


def test_eval_on_openvino_names_the_backend(tmp_path: Path) -> None:
    if not backend_class("openvino").is_available()[0]:
        pytest.skip("openvino is not installed")
    bundle = export_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "eval.json"
    assert crnet_main(["eval", "--bundle", str(bundle), "--backend", "openvino",
                       "--episodes", "2", "--inference-precision", "f32", "--no-progress",
                       "--json", str(out)]) in (0, 1)
    record = json.loads(out.read_text())
    record = record[0] if isinstance(record, list) else record
    assert record["backend"] == "openvino-f32" and record["precision"] == "fp32"
    assert record["reference_miou"] >= 0
