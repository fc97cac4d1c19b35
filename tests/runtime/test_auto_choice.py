"""backend="auto": the measured rule of runtime.segmenter.auto_choice, and describe()."""

from __future__ import annotations

from pathlib import Path

import pytest

import runtime.segmenter as segmenter_module
from runtime.backends import BackendError, backend_class
from runtime.bundle import Bundle
from runtime.segmenter import auto_choice


def _unavailable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_class(name), "is_available",
                        classmethod(lambda cls: (False, "not installed (test)")))


def test_cpu_auto_takes_onnxruntime_and_says_why(runtime_bundle: Path) -> None:
    from runtime import Segmenter

    if backend_class("tensorrt").has_engines(Bundle.load(runtime_bundle), "fp32"):
        pytest.skip("this bundle has TensorRT engines")
    with Segmenter(runtime_bundle, backend="auto", threads=1) as segmenter:
        choice = segmenter.describe()["choice"]
    assert choice["requested"] == "auto" and choice["picked"] == "onnxruntime"
    assert "OpenVINO" in choice["why"]


def test_named_backend_passes_through(runtime_bundle: Path) -> None:
    bundle = Bundle.load(runtime_bundle)
    assert auto_choice("torch", bundle, "fp32") == ("torch", "asked for by name")
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        auto_choice("cuda", bundle, "fp32")


def test_int8_without_onnx_takes_openvino(runtime_bundle: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not backend_class("openvino").is_available()[0]:
        pytest.skip("openvino is not installed")
    monkeypatch.setattr(segmenter_module, "_imports", lambda module: module != "onnx")
    name, why = auto_choice("auto", Bundle.load(runtime_bundle), "int8")
    assert name == "openvino" and "S8S8" in why
    # fp32 keeps onnxruntime: the rule is about int8 kernels only.
    assert auto_choice("auto", Bundle.load(runtime_bundle), "fp32")[0] == "onnxruntime"


def test_fallbacks_when_onnxruntime_is_missing(runtime_bundle: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = Bundle.load(runtime_bundle)
    _unavailable("onnxruntime", monkeypatch)
    _unavailable("openvino", monkeypatch)
    assert auto_choice("auto", bundle, "fp32")[0] == "torch"
    with pytest.raises(BackendError, match="no backend can run int8"):
        auto_choice("auto", bundle, "int8")
    monkeypatch.undo()
    if backend_class("openvino").is_available()[0]:
        _unavailable("onnxruntime", monkeypatch)
        assert auto_choice("auto", bundle, "int8")[0] == "openvino"
