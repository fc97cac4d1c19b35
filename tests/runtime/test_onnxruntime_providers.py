"""ONNX Runtime's provider choice: the TensorRT execution provider only where the libnvinfer
it was built against loads (onnxruntime-gpu lists it whether or not TensorRT is there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crnet.runtime.backends import onnxruntime_backend
from crnet.runtime.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    tensorrt_ep_problem,
    tensorrt_provider_library,
)
from crnet.runtime.bundle import Bundle

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _provider_library(folder: Path, nvinfer: bytes) -> Path:
    """A stand-in for onnxruntime-gpu's capi/libonnxruntime_providers_tensorrt.so: the
    bytes around the dynamic section's NEEDED name, as in the real file."""
    library = folder / "capi" / "libonnxruntime_providers_tensorrt.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF\x00libcudart.so.12\x00" + nvinfer + b"\x00libc.so.6\x00")
    return library


def test_tensorrt_provider_is_left_out_where_libnvinfer_does_not_load(
        runtime_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No TensorRT on this machine: libnvinfer.so.10 does not load, so a backend on an
    onnxruntime-gpu that lists the provider chooses CUDA and CPU, and says why."""
    import onnxruntime

    library = _provider_library(tmp_path / "onnxruntime", b"libnvinfer.so.10")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_PROVIDERS)
    monkeypatch.setattr(onnxruntime_backend, "tensorrt_provider_library",
                        lambda onnxruntime_file: library)
    backend = OnnxRuntimeBackend(Bundle.load(runtime_bundle), "fp32")
    assert backend.providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    reason = backend.skipped_providers["TensorrtExecutionProvider"]
    assert "libnvinfer.so.10" in reason and "does not load" in reason


def test_tensorrt_provider_is_chosen_where_its_libnvinfer_loads(
        runtime_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    library = _provider_library(tmp_path / "onnxruntime", b"libnvinfer.so.10")
    loaded = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_PROVIDERS)
    monkeypatch.setattr(onnxruntime_backend, "tensorrt_provider_library",
                        lambda onnxruntime_file: library)
    monkeypatch.setattr(onnxruntime_backend, "tensorrt_ep_problem",
                        lambda path: tensorrt_ep_problem(path, load=loaded.append))
    backend = OnnxRuntimeBackend(Bundle.load(runtime_bundle), "fp32")
    chosen = backend.providers()
    assert [p if isinstance(p, str) else p[0] for p in chosen] == GPU_PROVIDERS
    assert loaded == ["libnvinfer.so.10"] and backend.skipped_providers == {}


@pytest.mark.parametrize(("named", "expected"), [
    (b"libnvinfer.so.10", "libnvinfer.so.10"), (b"libnvinfer.so.11", "libnvinfer.so.11"),
    (b"nvinfer_10.dll", "nvinfer_10.dll"),
])
def test_the_major_version_comes_from_the_provider_library(tmp_path: Path, named: bytes,
                                                           expected: str) -> None:
    library = _provider_library(tmp_path, named)
    asked = []
    assert tensorrt_ep_problem(library, load=asked.append) is None
    assert asked == [expected]


def test_provider_library_problems_are_named(tmp_path: Path) -> None:
    assert "no TensorRT provider library" in str(tensorrt_ep_problem(None))
    assert "names no libnvinfer" in str(tensorrt_ep_problem(_provider_library(tmp_path, b"")))
    assert tensorrt_provider_library(str(tmp_path / "onnxruntime" / "__init__.py")) is None
    import onnxruntime  # this machine's CPU build ships no TensorRT provider

    assert tensorrt_provider_library(onnxruntime.__file__) is None
