"""engines/engine_trt.py without a GPU: inspector parsing and the timing cache. The
timing-cache tests run on test doubles (tests/trt_doubles.py, checked against the real
bindings' signatures): they prove the control flow, not a GPU build."""

from __future__ import annotations

from pathlib import Path

from crnet.engines.build_settings import BuildSettings
from crnet.engines.engine_trt import (
    _load_timing_cache,
    _save_timing_cache,
    layer_precision,
    silent_fp32_warning,
    summarize_layers,
)
from tests.trt_doubles import FakeBuilderConfigDouble


def test_layer_precision_reads_tensorrt_10_combined_field() -> None:
    layer = {"Inputs": [{"Format/Datatype": "Row major linear FP16 format"}],
             "Outputs": [{"Format/Datatype": "Half"}]}
    assert layer_precision(layer) == "fp16"


def test_layer_precision_reads_tensorrt_11_split_fields() -> None:
    """TensorRT 11's inspector reports "Format" and "Datatype" separately."""
    fp16 = {"Inputs": [{"Format": "Row major linear", "Datatype": "FP16"}],
            "Outputs": [{"Format": "Row major linear", "Datatype": "Half"}]}
    int8 = {"Inputs": [{"Format": "Channel major, channel % 32 == 0", "Datatype": "Int8"}],
            "Outputs": [{"Format": "Row major linear", "Datatype": "Float"}]}
    fp32 = {"Inputs": [{"Format": "Row major linear", "Datatype": "FP32"}], "Outputs": []}
    assert layer_precision(fp16) == "fp16"
    assert layer_precision(int8) == "int8"
    assert layer_precision(fp32) == "fp32"
    counts = summarize_layers({"Layers": [fp32] * 20})
    assert counts == {"fp32": 20}
    assert silent_fp32_warning("fp16", counts) is not None


def _settings(tmp_path: Path, cache: bytes | None) -> BuildSettings:
    timing = tmp_path / "timing.cache"
    if cache is not None:
        timing.write_bytes(cache)
    return BuildSettings(onnx=tmp_path / "m.onnx", engine=tmp_path / "m.plan",
                         timing_cache=timing)


def test_timing_cache_from_another_device_is_checked_and_replaced(tmp_path: Path) -> None:
    """set_timing_cache's result is read: a rejected cache is replaced by a new one."""
    config = FakeBuilderConfigDouble(accept_cache=False)
    logged: list[str] = []
    state = _load_timing_cache(config, _settings(tmp_path, b"foreign"), logged.append)
    assert config.set_timing_cache_calls[0] == (b"foreign", True)  # as trtexec: ignore mismatch
    assert config.get_timing_cache() is not None and config.get_timing_cache().data == b""
    assert "rejected" in state and not state.startswith("read ")
    assert any("timing cache" in line for line in logged)


def test_timing_cache_accepted(tmp_path: Path) -> None:
    config = FakeBuilderConfigDouble(accept_cache=True)
    state = _load_timing_cache(config, _settings(tmp_path, b"good"), print)
    assert state == "read 4 bytes" and config.get_timing_cache().data == b"good"


def test_missing_timing_cache_after_build_does_not_raise(tmp_path: Path) -> None:
    settings = _settings(tmp_path, b"old")
    config = FakeBuilderConfigDouble()  # get_timing_cache() answers None
    logged: list[str] = []
    assert _save_timing_cache(config, settings, logged.append) is False
    assert settings.timing_cache.read_bytes() == b"old"
    assert any("timing cache" in line for line in logged)
    config.timing_cache = config.create_timing_cache(b"new")
    assert _save_timing_cache(config, settings, logged.append) is True
    assert settings.timing_cache.read_bytes() == b"new"
