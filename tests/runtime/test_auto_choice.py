"""backend="auto": the measured rule of runtime.segmenter.auto_choice, and describe().

The rule is exercised on its inputs (which backends report themselves available, and the
gates recorded in the bundle) without loading OpenVINO into this process: auto_choice only
asks ``is_available``, which is replaced here where OpenVINO must count as installed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

import crnet.runtime.segmenter as segmenter_module
from crnet.runtime.backends import BackendError, backend_class
from crnet.runtime.bundle import Bundle, record_gates
from crnet.runtime.segmenter import auto_choice


def _available(name: str, present: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "installed (test)" if present else "not installed (test)"
    monkeypatch.setattr(backend_class(name), "is_available",
                        classmethod(lambda cls: (present, reason)))


@pytest.fixture
def measured_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped order, both CPU backends reported installed, no TensorRT."""
    monkeypatch.setattr(segmenter_module, "CPU_ORDER", ("openvino", "onnxruntime"))
    _available("openvino", True, monkeypatch)
    _available("onnxruntime", True, monkeypatch)
    _available("tensorrt", False, monkeypatch)


@pytest.fixture
def bundle_copy(runtime_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny bundle whose fp16 and int8 variants name the fp32 graphs (the
    rule reads only the manifest; nothing here runs them)."""
    root = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))
    manifest = json.loads((root / "manifest.json").read_text())
    for precision in ("fp16", "int8"):
        manifest["variants"][precision] = dict(manifest["variants"]["fp32"])
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _gate(backend: str, precision: str, passed: bool, delta: float = 0.1) -> dict[str, Any]:
    return {"backend": backend, "precision": precision, "passed": passed,
            "delta_miou": delta, "max_abs_delta_miou": 1.0, "episodes": 50,
            "dataset": "synthetic-5i", "split": "test", "fold": 0, "shots": 1}


def test_the_shipped_order_is_openvino_then_onnxruntime() -> None:
    # what README.md "auto on a CPU" measured (the conftest fixture narrows it for other tests)
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(segmenter_module))
    shipped = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "CPU_ORDER")
    assert shipped == ("openvino", "onnxruntime")


def test_an_ungated_bundle_takes_the_fastest_and_says_it_is_ungated(
        bundle_copy: Path, measured_order: None) -> None:
    name, why = auto_choice("auto", Bundle.load(bundle_copy), "fp32")
    assert name == "openvino"
    assert "records no accuracy gate for fp32" in why and "ungated" in why


def test_a_passed_gate_is_taken_and_quoted(bundle_copy: Path, measured_order: None) -> None:
    record_gates(bundle_copy, [_gate("openvino", "int8", True, -0.66),
                               _gate("onnxruntime", "int8", True, 0.46)])
    name, why = auto_choice("auto", Bundle.load(bundle_copy), "int8")
    assert name == "openvino"
    assert "passed the bundle's gate (-0.66 mIoU vs PyTorch, gate 1.00, 50 episodes)" in why


def test_a_failed_or_missing_gate_is_passed_over(bundle_copy: Path,
                                                 measured_order: None) -> None:
    record_gates(bundle_copy, [_gate("openvino", "int8", False, -1.5),
                               _gate("onnxruntime", "int8", True)])
    name, why = auto_choice("auto", Bundle.load(bundle_copy), "int8")
    assert name == "onnxruntime" and "passed over: openvino (failed its gate)" in why
    # a backend with no record, where another has one, is not taken either
    record_gates(bundle_copy, [_gate("onnxruntime", "fp32", True)])
    name, why = auto_choice("auto", Bundle.load(bundle_copy), "fp32")
    assert name == "onnxruntime" and "openvino (not gated)" in why


def test_no_passing_backend_runs_the_fastest_with_a_warning(
        bundle_copy: Path, measured_order: None, caplog: pytest.LogCaptureFixture) -> None:
    record_gates(bundle_copy, [_gate("openvino", "fp16", False),
                               _gate("onnxruntime", "fp16", False)])
    with caplog.at_level(logging.WARNING, logger="crnet.runtime.segmenter"):
        name, why = auto_choice("auto", Bundle.load(bundle_copy), "fp16")
    assert name == "openvino" and "running it ungated" in why
    assert "no installed backend passed the fp16 gate" in caplog.text


def test_records_of_replaced_graphs_are_ignored(bundle_copy: Path,
                                                measured_order: None) -> None:
    record_gates(bundle_copy, [_gate("onnxruntime", "fp32", True)])
    assert set(Bundle.load(bundle_copy).gate_results("fp32")) == {"onnxruntime"}
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    graph = manifest["variants"]["fp32"]["refine"]
    manifest["files"][graph] = "0" * 64  # as if re-exported: the record judged other graphs
    manifest_path.write_text(json.dumps(manifest))
    bundle = Bundle.load(bundle_copy, verify=False)
    assert bundle.gate_results("fp32") == {}
    assert "ungated" in auto_choice("auto", bundle, "fp32")[1]


def test_ungated_records_and_absent_variants_are_not_written(runtime_bundle: Path,
                                                            tmp_path: Path) -> None:
    root = Path(shutil.copytree(runtime_bundle, tmp_path / "fp32-only"))
    record_gates(root, [{**_gate("onnxruntime", "fp32", True), "passed": None},
                        _gate("onnxruntime", "int8", True)])
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["gates"] == {}


def test_cpu_auto_describes_its_choice(runtime_bundle: Path) -> None:
    from crnet.runtime import Segmenter

    if backend_class("tensorrt").has_engines(Bundle.load(runtime_bundle), "fp32"):
        pytest.skip("this bundle has TensorRT engines")
    with Segmenter(runtime_bundle, backend="auto", threads=1) as segmenter:
        choice = segmenter.describe()["choice"]
    # openvino is kept out of this process (tests/conftest.py), so onnxruntime is next
    assert choice["requested"] == "auto" and choice["picked"] == "onnxruntime"
    assert "crnet bench --compare" in choice["why"]


def test_named_backend_passes_through(runtime_bundle: Path) -> None:
    bundle = Bundle.load(runtime_bundle)
    assert auto_choice("torch", bundle, "fp32") == ("torch", "asked for by name")
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        auto_choice("cuda", bundle, "fp32")


def test_fallbacks_when_no_cpu_backend_imports(runtime_bundle: Path, measured_order: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = Bundle.load(runtime_bundle)
    _available("onnxruntime", False, monkeypatch)
    assert auto_choice("auto", bundle, "int8")[0] == "openvino"
    _available("openvino", False, monkeypatch)
    assert auto_choice("auto", bundle, "fp32")[0] == "torch"
    with pytest.raises(BackendError, match="no backend can run int8"):
        auto_choice("auto", bundle, "int8")
