"""TensorRT backend: the engine-JSON and profile checks (pure Python, run everywhere) and,
where tensorrt imports and a GPU is present, engines built from the test bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from crnet.runtime import InputError, Segmenter
from crnet.runtime.backends.base import BackendError
from crnet.runtime.backends.tensorrt_backend import (
    EngineMismatchError,
    ProfileError,
    TensorRTBackend,
    check_engine_info,
    check_profile,
    engine_paths,
)
from crnet.runtime.bundle import Bundle, update_manifest

INFO = {"tensorrt_version": "10.3.0.26", "compute_capability": "8.7", "gpu_name": "Orin",
        "profiles": [], "onnx_sha256": "abc"}


def test_engine_info_accepts_the_same_machine() -> None:
    check_engine_info(INFO, "refine.fp32.plan", tensorrt_version="10.3.0.26",
                      compute_capability=(8, 7), onnx_sha256="abc")
    check_engine_info({**INFO, "compute_capability": [8, 7], "tensorrt_version": "10.3.0"},
                      "p", tensorrt_version="10.3.0", compute_capability=(8, 7))


def test_plan_needs_the_exact_tensorrt_build() -> None:
    """TensorRT refuses a plan from another build of the same x.y.z ("expecting library
    version 8.5.1.7 got 8.5.3.1"): the full four-part version must match."""
    with pytest.raises(EngineMismatchError, match=r"exact version"):
        check_engine_info(INFO, "p", tensorrt_version="10.3.0.30", compute_capability=(8, 7))


def test_version_compatible_tensorrt_10_plan_runs_on_tensorrt_11() -> None:
    """NVIDIA's engine compatibility: TensorRT 10 version-compatible plans run on a TensorRT
    11 runtime (and 8 on 10); within a major, any runtime not older."""
    compatible = {**INFO, "version_compatible": True, "tensorrt_version": "10.8.0.43"}
    check_engine_info(compatible, "p", tensorrt_version="11.4.0.106", compute_capability=(8, 7))
    check_engine_info(compatible, "p", tensorrt_version="10.16.1.11", compute_capability=(8, 7))
    check_engine_info({**compatible, "tensorrt_version": "8.6.1.6"}, "p",
                      tensorrt_version="10.3.0.26", compute_capability=(8, 7))
    with pytest.raises(EngineMismatchError, match="version-compatible"):
        check_engine_info({**compatible, "tensorrt_version": "10.8.0.43"}, "p",
                          tensorrt_version="12.0.0.1", compute_capability=(8, 7))


def test_plan_from_another_platform_is_refused() -> None:
    """An x86_64 plan on an aarch64 Jetson fails before TensorRT sees it."""
    x86 = {**INFO, "hardware_compatibility_level": "ampere_plus",
           "host": {"machine": "x86_64", "system": "Linux"}}
    with pytest.raises(EngineMismatchError, match=r"x86_64.*aarch64"):
        check_engine_info(x86, "p", tensorrt_version="10.3.0.26", compute_capability=(8, 7),
                          machine="aarch64", system="Linux")
    with pytest.raises(EngineMismatchError, match=r"Windows"):
        check_engine_info(x86, "p", tensorrt_version="10.3.0.26", compute_capability=(8, 7),
                          machine="AMD64", system="Windows")
    check_engine_info(x86, "p", tensorrt_version="10.3.0.26", compute_capability=(8, 7),
                      machine="AMD64", system="Linux")  # the same architecture, spelled so
    check_engine_info(INFO, "p", tensorrt_version="10.3.0.26", compute_capability=(8, 7),
                      machine="aarch64", system="Linux")  # older JSON without host: no check


@pytest.mark.parametrize(("info", "version", "capability", "message"), [
    (INFO, "10.4.0.1", (8, 7), r"built with TensorRT 10.3.0.26 but TensorRT 10.4.0.1"),
    (INFO, "11.1.0", (8, 7), r"exact version"),
    ({**INFO, "version_compatible": True, "tensorrt_version": "11.1.0.1"}, "10.16.0.72",
     (8, 7), r"not older"),
    ({**INFO, "version_compatible": True, "tensorrt_version": "8.6.1.6"}, "11.1.0", (8, 7),
     r"version-compatible"),
    (INFO, "10.3.0.27", (8, 7), r"exact version"),
    ({**INFO, "version_compatible": True}, "10.2.0", (8, 7), r"not older"),
    (INFO, "10.3.0.26", (9, 0), r"built on Orin \(compute capability 8.7\).*has 9.0"),
    ({**INFO, "hardware_compatibility_level": "ampere_plus"}, "10.3.0.26", (7, 5), r">= 8.0"),
    ({"compute_capability": "8.7"}, "10.3.0", (8, 7), r"lacks \['tensorrt_version'\]"),
])
def test_engine_info_mismatches_are_explained(info, version, capability, message) -> None:  # noqa: ANN001
    with pytest.raises(EngineMismatchError, match=message):
        check_engine_info(info, "backbone.fp32.plan", tensorrt_version=version,
                          compute_capability=capability, gpu_name="H100")


def test_engine_info_compatible_variants_pass() -> None:
    check_engine_info({**INFO, "version_compatible": True}, "p", tensorrt_version="10.9.0",
                      compute_capability=(8, 7))
    check_engine_info({**INFO, "hardware_compatibility_level": "ampere_plus"}, "p",
                      tensorrt_version="10.3.0.26", compute_capability=(9, 0))


def test_stale_engine_is_refused() -> None:
    with pytest.raises(EngineMismatchError, match="stale"):
        check_engine_info(INFO, "p", tensorrt_version="10.3.0.26", compute_capability="8.7",
                          onnx_sha256="def")


def test_profile_check_names_tensor_shape_and_range() -> None:
    check_profile("support_feat", (4, 16, 9, 9), (1, 16, 9, 9), (8, 16, 9, 9))
    with pytest.raises(ProfileError, match=r"'support_feat' has shape \[9, 16, 9, 9\].*"
                                           r"\[1, 16, 9, 9\] \.\. \[8, 16, 9, 9\]"):
        check_profile("support_feat", (9, 16, 9, 9), (1, 16, 9, 9), (8, 16, 9, 9))
    assert issubclass(ProfileError, InputError)


def test_bundle_without_engines(runtime_bundle: Path) -> None:
    bundle = Bundle.load(runtime_bundle)
    assert not TensorRTBackend.has_engines(bundle, "fp32")
    assert engine_paths(runtime_bundle, "refine", "int8")[0].name == "refine.int8.plan"
    with pytest.raises(BackendError, match=r"backbone.fp32.plan not found.*crnet build"):
        TensorRTBackend(bundle, "fp32")


def _runner_double(enqueue_ok: bool):  # noqa: ANN202 - (runner, cudart double)
    from crnet.runtime.backends.tensorrt_backend import _EngineRunner
    from tests.trt_doubles import FakeCudartDouble, FakeExecutionContextDouble

    runner = object.__new__(_EngineRunner)
    runner.cudart, runner.stream, runner.plan = FakeCudartDouble(), 7, Path("refine.fp32.plan")
    runner.context = FakeExecutionContextDouble(enqueue_ok)
    runner.cuda_graphs, runner._graph_exec = True, None
    return runner, runner.cudart


def test_capture_failure_destroys_the_captured_graph() -> None:
    """On a test double (no GPU): a failed enqueue during capture still destroys the
    cudaGraph_t that cudaStreamEndCapture returned, and disables CUDA graphs."""
    runner, cudart = _runner_double(enqueue_ok=False)
    runner._capture()
    assert cudart.graphs_created == ["graph0"]
    assert cudart.graphs_destroyed == ["graph0"]
    assert runner._graph_exec is None and runner.cuda_graphs is False and not cudart.capturing


def test_capture_success_keeps_the_executable_graph() -> None:
    runner, cudart = _runner_double(enqueue_ok=True)
    runner._capture()
    assert cudart.graphs_destroyed == ["graph0"] and runner._graph_exec == "exec-graph0"
    assert runner.cuda_graphs is True


def test_stripped_plan_is_refit_from_the_bundle_onnx(tmp_path: Path) -> None:
    """On test doubles: a weight-stripped plan is refit from its ONNX at load; a refit that
    fails, or a missing ONNX, raises instead of running an engine without weights (6)."""
    from crnet.runtime.backends.tensorrt_backend import refit_from_onnx
    from tests.trt_doubles import FakeTensorRTModuleDouble

    onnx_path = tmp_path / "refine.fp32.onnx"
    onnx_path.write_bytes(b"onnx")
    trt = FakeTensorRTModuleDouble(refit_ok=True)
    refit_from_onnx(trt, "engine", "logger", onnx_path, "refine.fp32.plan")
    assert trt.refitted == [str(onnx_path)] and trt.engines_refit == 1
    with pytest.raises(EngineMismatchError, match="refit"):
        refit_from_onnx(FakeTensorRTModuleDouble(refit_ok=False), "engine", "logger",
                        onnx_path, "refine.fp32.plan")
    with pytest.raises(EngineMismatchError, match="weight-stripped.*not found"):
        refit_from_onnx(trt, "engine", "logger", tmp_path / "gone.onnx", "refine.fp32.plan")


def test_stripped_flag_read_from_engine_json() -> None:
    from crnet.runtime.backends.tensorrt_backend import is_weight_stripped

    assert is_weight_stripped({"builder": {"strip_weights": True}})
    assert not is_weight_stripped({"builder": {"strip_weights": False}})
    assert not is_weight_stripped(INFO)


# -- on a GPU with TensorRT ---------------------------------------------------------------

def _build_engines(bundle_dir: Path, max_refine_shots: int) -> None:
    """Build fp32 plans + engine JSON for both graphs with the TensorRT builder."""
    import tensorrt as trt

    from crnet.runtime.backends.tensorrt_backend import _cuda, _import_cudart
    from crnet.runtime.files import sha256_file

    cudart = _import_cudart()
    major = _cuda(cudart, cudart.cudaDeviceGetAttribute(
        cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, 0), "cc")
    minor = _cuda(cudart, cudart.cudaDeviceGetAttribute(
        cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, 0), "cc")
    manifest = Bundle.load(bundle_dir).manifest
    logger = trt.Logger(trt.Logger.WARNING)
    for graph in ("backbone", "refine"):
        onnx_path = bundle_dir / f"{graph}.fp32.onnx"
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse_from_file(str(onnx_path)), [parser.get_error(i)
                                                        for i in range(parser.num_errors)]
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        ranges = {}
        for spec in manifest["graphs"][graph]["inputs"]:
            shape = spec["shape"]
            if isinstance(shape[0], str):
                top = max_refine_shots if graph == "refine" else manifest["shots"]["max"]
                low, opt, high = [1, *shape[1:]], [1, *shape[1:]], [top, *shape[1:]]
            else:
                low = opt = high = list(shape)
            profile.set_shape(spec["name"], low, opt, high)
            ranges[spec["name"]] = {"min": low, "opt": opt, "max": high}
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        assert plan is not None
        plan_path, json_path = engine_paths(bundle_dir, graph, "fp32")
        plan_path.parent.mkdir(exist_ok=True)
        plan_path.write_bytes(bytes(plan))
        json_path.write_text(json.dumps({
            "tensorrt_version": trt.__version__, "compute_capability": f"{major}.{minor}",
            "gpu_name": "test GPU", "profiles": [ranges], "onnx_sha256": sha256_file(onnx_path),
        }))


@pytest.mark.tensorrt
def test_tensorrt_matches_onnxruntime(runtime_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (NVIDIA GPUs only)")
    available, reason = TensorRTBackend.is_available()
    if not available:
        pytest.skip(f"tensorrt backend unavailable: {reason}")
    from crnet.data.synthetic import Synthetic5i

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, bundle_dir)
    _build_engines(bundle_dir, max_refine_shots=4)
    trt_segmenter = Segmenter(bundle_dir)
    assert trt_segmenter.backend_name == "tensorrt"
    reference = Segmenter(bundle_dir, backend="onnxruntime")
    dataset = Synthetic5i(0, split="test", seed=0)
    agree = total = 0
    for index in range(8):
        episode = dataset.episode(index, 1 + index % 3)
        try:
            reference.set_support(list(episode.support_images), list(episode.support_masks))
        except InputError:
            continue
        trt_segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        for _ in range(3):  # the second and later runs replay a CUDA graph
            got = trt_segmenter.segment(episode.query_image)
            expected = reference.segment(episode.query_image)
            agree += int(np.count_nonzero(got == expected))
            total += got.size
    assert agree / total >= 0.999
    episode = dataset.episode(0, 5)
    with pytest.raises(ProfileError, match="support_feat"):
        trt_segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        trt_segmenter.segment(episode.query_image)
    trt_segmenter.close()

    _, json_path = engine_paths(bundle_dir, "refine", "fp32")
    info = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**info, "compute_capability": "1.0"}))
    with pytest.raises(EngineMismatchError, match="compute capability 1.0"):
        Segmenter(bundle_dir, backend="tensorrt")


def copy_with_listed_plans(bundle: Path, destination: Path) -> Path:
    """A copy of ``bundle`` with placeholder fp32 plans listed (so verifiable) in its
    manifest: what a backend checks before it deserializes anything."""
    copy = Path(shutil.copytree(bundle, destination))
    written = []
    for graph in ("backbone", "refine"):
        for path in engine_paths(copy, graph, "fp32"):
            path.parent.mkdir(exist_ok=True)
            path.write_text("{}")
            written.append(str(path.relative_to(copy)))
    update_manifest(copy, lambda manifest: None, added_files=written)
    return copy


def test_auto_falls_back_when_plans_do_not_fit(runtime_bundle: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """"auto" with plans that do not fit this machine (stale, foreign) logs the reason and
    runs ONNX Runtime instead of raising EngineMismatchError. The GPU is a
    stand-in: is_available and activation are patched, no GPU call is made."""
    copy = copy_with_listed_plans(runtime_bundle, tmp_path / "bundle")

    def foreign_plans(self: TensorRTBackend) -> None:
        raise EngineMismatchError("backbone.fp32.plan was built on an RTX 4090 (8.9)")

    monkeypatch.setattr(TensorRTBackend, "is_available",
                        classmethod(lambda cls: (True, "stand-in GPU")))
    monkeypatch.setattr(TensorRTBackend, "_activate", foreign_plans)
    with caplog.at_level("WARNING", logger="crnet.runtime.segmenter"):
        segmenter = Segmenter(copy, backend="auto", cuda_graphs=False)
    assert segmenter.backend_name == "onnxruntime"
    assert "RTX 4090" in caplog.text and "onnxruntime" in caplog.text
    assert "RTX 4090" in segmenter.describe()["fallback_reason"]
    segmenter.close()
    with pytest.raises(EngineMismatchError, match="RTX 4090"):  # asked for by name: raise
        Segmenter(copy, backend="tensorrt")


def test_stream_handle_accepts_raw_handles_and_stream_objects() -> None:
    from types import SimpleNamespace

    from crnet.runtime.backends.tensorrt_backend import stream_handle

    assert stream_handle(0x7F00) == 0x7F00
    assert stream_handle(SimpleNamespace(handle=11)) == 11  # pycuda.driver.Stream
    assert stream_handle(SimpleNamespace(cuda_stream=12)) == 12  # torch.cuda.Stream
    assert stream_handle(SimpleNamespace(ptr=13)) == 13  # cupy.cuda.Stream
    for bad in ("stream", SimpleNamespace(name="x"), -1, True, SimpleNamespace(handle="x")):
        with pytest.raises(InputError, match="stream"):
            stream_handle(bad)


def test_external_stream_is_kept_by_the_backend(runtime_bundle: Path, tmp_path: Path) -> None:
    copy = copy_with_listed_plans(runtime_bundle, tmp_path / "bundle")
    backend = TensorRTBackend(Bundle.load(copy), "fp32", stream=type("S", (), {"handle": 5})())
    assert backend.external_stream == 5
    assert TensorRTBackend(Bundle.load(copy), "fp32").external_stream is None
