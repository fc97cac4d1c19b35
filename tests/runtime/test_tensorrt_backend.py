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
from tests.engines.trt_suite_bundle import edit_engine_json

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
    """Build fp32 plans + engine JSON for both graphs with the TensorRT builder, listed in
    the manifest (tests/engines/trt_suite_bundle.write_engine_files) as `crnet build`
    lists them: a verified bundle then loads them."""
    import tensorrt as trt

    from crnet.runtime.backends.tensorrt_backend import _cuda, _import_cudart
    from crnet.runtime.files import sha256_file
    from tests.engines.trt_suite_bundle import write_engine_files

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
        write_engine_files(bundle_dir, graph, "fp32", bytes(plan), {
            "tensorrt_version": trt.__version__, "compute_capability": f"{major}.{minor}",
            "gpu_name": "test GPU", "profiles": [ranges], "onnx_sha256": sha256_file(onnx_path),
        })


def test_engine_files_as_the_gpu_test_writes_them_load_and_stay_verifiable(
        runtime_bundle: Path, tmp_path: Path) -> None:
    """What the GPU test below relies on, checked without a GPU: plans it writes are listed
    in the manifest (the backend accepts them from a verified bundle instead of raising
    BundleError, so "auto" can choose TensorRT), and its engine JSON edit keeps the bundle
    verifiable (so what it meets is EngineMismatchError, not BundleError)."""
    from crnet.runtime.bundle import BundleError
    from tests.engines.trt_suite_bundle import write_engine_files

    copy = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))
    for graph in ("backbone", "refine"):
        write_engine_files(copy, graph, "fp32", b"plan", INFO)
    bundle = Bundle.load(copy, verify=True)
    backend = TensorRTBackend(bundle, "fp32")
    assert set(backend.engine_files) == {"backbone", "refine"}
    json_path = edit_engine_json(copy, "refine", "fp32", compute_capability="1.0")
    Bundle.load(copy, verify=True)
    assert json.loads(json_path.read_text())["compute_capability"] == "1.0"
    json_path.write_text(json.dumps(INFO))  # an edit that is not re-signed
    with pytest.raises(BundleError, match="refine.fp32.json"):
        Bundle.load(copy, verify=True)


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

    edit_engine_json(bundle_dir, "refine", "fp32", compute_capability="1.0")  # re-signed
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


def test_stream_handle_accepts_what_int_converts() -> None:
    """cuda-python's own cudaStream_t and CUstream are not ints and have none of the stream
    attributes, but int() works on them (checked on the real types in
    tests/runtime/test_tensorrt_real_bindings.py); so does any such object."""
    from crnet.runtime.backends.tensorrt_backend import stream_handle

    class IntConvertibleStream:  # the one thing cudaStream_t and CUstream have in common
        def __int__(self) -> int:
            return 0x5EED

    assert stream_handle(IntConvertibleStream()) == 0x5EED
    for bad in ("12", b"12", 1.0, object()):
        with pytest.raises(InputError, match="stream"):
            stream_handle(bad)


# -- CUDA host code on test doubles (tests/trt_doubles.py, checked against the real
# bindings' signatures): control flow only, no GPU ------------------------------------

BACKBONE_PROFILE = {"image": ((1, 3, 8, 8), (1, 3, 8, 8), (8, 3, 8, 8))}


def _runner_on_doubles(cudart, cuda_graphs: bool = False):  # noqa: ANN001, ANN202
    """A backbone-like _EngineRunner (image -> feat with 4 channels) over a context double
    and ``cudart`` (a FakeCudartDouble)."""
    from crnet.runtime.backends.tensorrt_backend import _EngineRunner
    from tests.trt_doubles import FakeExecutionContextDouble

    runner = object.__new__(_EngineRunner)
    runner.cudart, runner.stream, runner.plan = cudart, 7, Path("backbone.fp32.plan")
    runner.context = FakeExecutionContextDouble(output_channels={"feat": ("image", 4)},
                                                cudart=cudart)
    runner.inputs, runner.outputs = ["image"], ["feat"]
    runner.dtypes = {"image": np.dtype(np.float32), "feat": np.dtype(np.float32)}
    runner.profile = BACKBONE_PROFILE
    runner.cuda_graphs, runner._graph_exec = cuda_graphs, None
    runner._buffers, runner._bound, runner._runs_bound = {}, None, 0
    return runner


def test_failed_bind_leaves_no_stale_shapes_bound() -> None:
    """A cudaMalloc that fails while binding new shapes (after set_input_shape changed the
    context) must not leave the previous shapes marked as bound: the next call with those
    shapes sets them again, so the engine never runs new shapes into old buffers."""
    from tests.trt_doubles import FakeCudartDouble

    cudart = FakeCudartDouble(fail_malloc_at=3)  # the first bind mallocs twice
    runner = _runner_on_doubles(cudart)
    small, large = np.ones((1, 3, 8, 8), np.float32), np.ones((4, 3, 8, 8), np.float32)
    runner.run({"image": small})
    with pytest.raises(BackendError, match="cudaMalloc"):
        runner.run({"image": large})
    assert len(cudart.memory) == 4  # the small shape's 2 host + 2 device buffers, no leak
    runner.run({"image": small})
    last = runner.context.runs[-1]
    assert last["shapes"] == {"image": (1, 3, 8, 8)}
    sizes = {name: cudart.size_of(pointer) for name, pointer in last["addresses"].items()}
    assert sizes == {"image": small.nbytes, "feat": 1 * 4 * 8 * 8 * 4}  # buffers fit shapes
    runner.run({"image": large})  # and the larger shape binds once memory is there
    assert runner.context.runs[-1]["shapes"] == {"image": (4, 3, 8, 8)}
    assert cudart.size_of(runner.context.runs[-1]["addresses"]["image"]) == large.nbytes


def test_capture_leaves_an_application_capture_alone() -> None:
    """With ``stream=`` a stream the application is capturing, the backend does not begin
    a capture of its own and never ends the application's."""
    runner, cudart = _runner_double(enqueue_ok=True)
    cudart.capturing = True  # the application's cudaStreamBeginCapture on this stream
    runner._capture()
    assert cudart.capturing, "the application's capture was ended"
    assert cudart.begin_calls == 0 and cudart.graphs_created == []
    assert runner._graph_exec is None


def test_runs_on_an_application_capturing_stream_never_end_its_capture() -> None:
    from tests.trt_doubles import FakeCudartDouble

    cudart = FakeCudartDouble()
    runner = _runner_on_doubles(cudart, cuda_graphs=True)
    cudart.capturing = True
    for _ in range(3):  # the second run would capture on a stream of the backend's own
        runner.run({"image": np.ones((1, 3, 8, 8), np.float32)})
    assert cudart.capturing and cudart.graphs_created == [] and runner._graph_exec is None
    assert len(runner.context.runs) == 3  # plain enqueues, into the application's graph
    cudart.capturing = False  # the application ended its capture: graphs are used again
    runner.run({"image": np.ones((1, 3, 8, 8), np.float32)})
    assert runner._graph_exec == "exec-graph0"


def test_every_call_binds_the_device_on_the_calling_thread(
        runtime_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """device=1, activated on one thread, segmenting from another thread that has an
    application's context current: every CUDA call runs in device 1's primary context, and
    the application's context is current again after each call; deactivation releases the
    primary context."""
    import sys
    import threading
    import types

    from crnet.runtime.backends import tensorrt_backend
    from tests.trt_doubles import FakeCudaDriverDouble, FakeCudartDouble

    driver = FakeCudaDriverDouble(device_count=2)
    cudart = FakeCudartDouble(driver=driver)
    monkeypatch.setattr(tensorrt_backend, "_import_driver", lambda: driver, raising=False)
    monkeypatch.setattr(tensorrt_backend, "_import_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    runner = _runner_on_doubles(cudart)
    loaded_in = []

    def load_engines(self: TensorRTBackend, trt: object) -> None:  # no plan to deserialize
        loaded_in.append(driver.current())
        self.runners = {"backbone": runner}

    monkeypatch.setattr(TensorRTBackend, "_load_engines", load_engines)
    copy = copy_with_listed_plans(runtime_bundle, tmp_path / "bundle")
    backend = TensorRTBackend(Bundle.load(copy), "fp32", device=1)
    backend.activate()
    assert loaded_in == ["primary-context-1"] and driver.current() is None
    seen = {}

    def application_thread() -> None:
        driver.cuCtxPushCurrent("application-context")  # e.g. pycuda's, on this thread
        backend.run_backbone(np.ones((2, 3, 8, 8), np.float32))
        seen["after"] = driver.current()

    thread = threading.Thread(target=application_thread)
    thread.start()
    thread.join()
    assert runner.context.runs[-1]["context"] == "primary-context-1"
    assert set(cudart.contexts) == {"primary-context-1"}  # every malloc and copy
    assert seen["after"] == "application-context"
    backend.deactivate()
    assert driver.retained == {1: 0} and driver.current() is None
