"""`crnet triton-repo`: configs parse with Triton's schema and match the ONNX graphs; the
Python-backend (BLS) model, run against a stand-in for triton_python_backend_utils with
ONNX Runtime behind its BLS calls, gives the local Segmenter's results."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.cli import main
from crnet.serve.support_store import DirectorySupportStore, UnknownSupportError
from crnet.serve.triton_repo import write_repo
from tests.runtime.bundles import export_tiny_bundle

GRAPH_MODELS = ("crnet_backbone", "crnet_query_refine")
ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16"}


@pytest.fixture(scope="module")
def repo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("triton-repo") / "bundle")


@pytest.fixture(scope="module")
def repo(repo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "models"
    store = tmp_path_factory.mktemp("store")
    assert main(["triton-repo", str(repo_bundle), "--out", str(out), "--cpu",
                 "--store-dir", str(store), "--store-max-entries", "3"]) == 0
    return out


def parse_config(path: Path) -> Any:
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="Triton's schema ships with tritonclient")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_every_config_parses_with_tritons_schema(repo: Path) -> None:
    names = sorted(path.parent.name for path in repo.glob("*/config.pbtxt"))
    assert names == ["crnet_backbone", "crnet_query_refine", "crnet_segment", "crnet_support"]
    for name in names:
        config = parse_config(repo / name / "config.pbtxt")
        assert config.name == name and config.max_batch_size == 0
    segment = parse_config(repo / "crnet_segment" / "config.pbtxt")
    assert segment.backend == "python" and segment.parameters["role"].string_value == "segment"
    assert [(t.name, list(t.dims)) for t in segment.output] == [("mask", [-1, -1]),
                                                                 ("probability", [-1, -1])]


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_graph_configs_match_the_onnx_graphs(repo: Path, name: str) -> None:
    import onnx
    from tritonclient.grpc import model_config_pb2

    config = parse_config(repo / name / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx"
    graph = onnx.load(str(repo / name / "1" / "model.onnx")).graph

    def spec(values: Any) -> list[tuple[str, str, list[int]]]:
        return [(value.name, ONNX_TYPES[value.type.tensor_type.elem_type],
                 [dim.dim_value if dim.HasField("dim_value") else -1
                  for dim in value.type.tensor_type.shape.dim]) for value in values]

    def configured(tensors: Any) -> list[tuple[str, str, list[int]]]:
        return [(tensor.name, model_config_pb2.DataType.Name(tensor.data_type),
                 list(tensor.dims)) for tensor in tensors]

    assert configured(config.input) == spec(graph.input)
    assert configured(config.output) == spec(graph.output)
    if name == "crnet_query_refine":
        assert [output.name for output in graph.output] == ["query_logits"]


def test_tensorrt_repo_takes_the_bundles_plans(repo_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(repo_bundle, bundle)
    with pytest.raises(FileNotFoundError, match="build it on the serving GPU"):
        write_repo(bundle, tmp_path / "none", backend="tensorrt")
    (bundle / "engines").mkdir(exist_ok=True)
    (bundle / "engines" / "backbone.fp32.plan").write_bytes(b"backbone plan")
    (bundle / "engines" / "refine.fp32.plan").write_bytes(b"full refine plan")
    out = tmp_path / "trt"
    write_repo(bundle, out, backend="tensorrt")
    assert (out / "crnet_query_refine" / "1" / "model.plan").read_bytes() == b"full refine plan"
    refine = parse_config(out / "crnet_query_refine" / "config.pbtxt")
    assert refine.platform == "tensorrt_plan"
    assert refine.instance_group[0].kind == refine.instance_group[0].KIND_GPU
    # the full refine plan has both outputs; a plan of the cut graph only query_logits
    assert [tensor.name for tensor in refine.output] == ["query_logits", "support_logits"]
    (bundle / "engines" / "refine_query.fp32.plan").write_bytes(b"cut refine plan")
    write_repo(bundle, out, backend="tensorrt")
    refine = parse_config(out / "crnet_query_refine" / "config.pbtxt")
    assert [tensor.name for tensor in refine.output] == ["query_logits"]
    assert (out / "crnet_query_refine" / "1" / "model.plan").read_bytes() == b"cut refine plan"


def fake_pb_utils(repo: Path) -> types.ModuleType:
    """A stand-in for triton_python_backend_utils whose BLS runs the repo's ONNX models."""
    import onnxruntime

    sessions = {name: onnxruntime.InferenceSession(str(repo / name / "1" / "model.onnx"),
                                                   providers=["CPUExecutionProvider"])
                for name in GRAPH_MODELS}
    module = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, np.asarray(array)

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class TritonError:
        def __init__(self, message: str) -> None:
            self._message = message

        def message(self) -> str:
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None
                     ) -> None:
            self.output_tensors, self._error = output_tensors, error

        def has_error(self) -> bool:
            return self._error is not None

        def error(self) -> TritonError | None:
            return self._error

    class InferenceRequest:
        def __init__(self, model_name: str, requested_output_names: list[str],
                     inputs: list[Tensor]) -> None:
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self) -> InferenceResponse:
            feeds = {tensor.name(): tensor.as_numpy() for tensor in self.inputs}
            values = sessions[self.model_name].run(self.outputs, feeds)
            return InferenceResponse([Tensor(name, value)
                                      for name, value in zip(self.outputs, values, strict=True)])

    def by_name(holder: Any, name: str) -> Tensor:
        tensors = holder.inputs if hasattr(holder, "inputs") else holder.output_tensors
        return next(tensor for tensor in tensors if tensor.name() == name)

    module.Tensor, module.TritonError = Tensor, TritonError  # type: ignore[attr-defined]
    module.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    module.InferenceRequest = InferenceRequest  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = by_name  # type: ignore[attr-defined]
    module.get_output_tensor_by_name = by_name  # type: ignore[attr-defined]
    return module


def load_bls_model(repo: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import json

    from google.protobuf import json_format

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(repo))
    spec = importlib.util.spec_from_file_location(f"bls_{name}", repo / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    model = module.TritonPythonModel()
    config = json_format.MessageToDict(parse_config(repo / name / "config.pbtxt"),
                                       preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / name),
                      "model_version": "1", "model_name": name})
    return model, sys.modules["triton_python_backend_utils"]


def test_bls_models_give_the_local_segmenters_results(repo: Path, repo_bundle: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.data.synthetic import Synthetic5i
    from crnet.runtime import Segmenter

    support_model, pb_utils = load_bls_model(repo, "crnet_support", monkeypatch)
    segment_model, _ = load_bls_model(repo, "crnet_segment", monkeypatch)
    episode = Synthetic5i(0, split="test", seed=0).episode(2, shots=1)
    request = types.SimpleNamespace(inputs=[
        pb_utils.Tensor("images", np.stack(episode.support_images)),
        pb_utils.Tensor("masks", np.stack(episode.support_masks))])
    [response] = support_model.execute([request])
    assert not response.has_error()
    key = response.output_tensors[0].as_numpy()[0]
    query = types.SimpleNamespace(inputs=[pb_utils.Tensor("support_id", np.array([key], object)),
                                          pb_utils.Tensor("image", episode.query_image)])
    [result] = segment_model.execute([query])
    assert not result.has_error()
    mask, probability = (tensor.as_numpy() for tensor in result.output_tensors)
    with Segmenter(repo_bundle, backend="onnxruntime", threads=1) as local:
        local.set_support(list(episode.support_images), list(episode.support_masks))
        want_mask, want_probability = local.segment(episode.query_image, return_prob=True)
    assert 0 < want_mask.mean() < 1
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_allclose(probability, want_probability, atol=1e-5)

    unknown = types.SimpleNamespace(inputs=[
        pb_utils.Tensor("support_id", np.array([b"0123abcd"], object)),
        pb_utils.Tensor("image", episode.query_image)])
    [error] = segment_model.execute([unknown])
    assert error.has_error() and "[crnet:UnknownSupportError]" in error.error().message()
    assert "register the support again" in error.error().message()


def test_directory_store_is_bounded_and_shared(tmp_path: Path) -> None:
    writer = DirectorySupportStore(tmp_path, max_entries=3, max_bytes=10**6)
    reader = DirectorySupportStore(tmp_path, max_entries=3, max_bytes=10**6)
    feat = np.ones((1, 4, 3, 3), np.float32)
    mask = np.zeros((1, 1, 3, 3), np.float32)
    for index in range(5):
        writer.put(f"{index:032x}", feat * index, mask)
    entries, _ = reader.stats()
    assert entries == 3
    np.testing.assert_array_equal(reader.get(f"{4:032x}")[0], feat * 4)
    with pytest.raises(UnknownSupportError, match="register the support again"):
        reader.get(f"{0:032x}")
    with pytest.raises(UnknownSupportError):
        reader.get("../etc/passwd")


SERVE_REPO = """
import sys, time
from pathlib import Path
from crnet.serve.server import python_backend_env
from pytriton.triton import Triton, TritonConfig
repo, http, grpc, metrics = Path(sys.argv[1]), *map(int, sys.argv[2:5])
config = TritonConfig(http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1",
                      grpc_port=grpc, metrics_address="127.0.0.1", metrics_port=metrics,
                      model_repository=repo, exit_timeout_secs=5)
with python_backend_env(), Triton(config=config) as triton:
    triton.run()
    print("repository ready", flush=True)
    time.sleep(float(sys.argv[5]))
"""


def test_python_backend_repo_runs_under_pytritons_tritonserver(
        repo_bundle: Path, tmp_path: Path, serve_venv: Path) -> None:
    """The whole repository (BLS models calling the graphs, ONNX Runtime on CPU inside
    Python-backend models) under a real tritonserver (PyTriton's, from the serve venv),
    through RemoteSegmenter from this environment."""
    import os
    import subprocess
    import time

    from crnet.data.synthetic import Synthetic5i
    from crnet.runtime import RemoteSegmenter, Segmenter
    from crnet.runtime.remote import RemoteError
    from tests.crnet.serve.test_server import free_port
    from tests.venvs import clean_environment

    repo = tmp_path / "models"
    write_repo(repo_bundle, repo, backend="python", store_dir=str(tmp_path / "store"),
               gpu=False)
    http_port = free_port()
    episode = Synthetic5i(0, split="test", seed=0).episode(4, shots=1)
    with Segmenter(repo_bundle, backend="onnxruntime", threads=1) as local:
        local.set_support(list(episode.support_images), list(episode.support_masks))
        want_mask, want_probability = local.segment(episode.query_image, return_prob=True)
    log = tmp_path / "triton.log"
    with open(log, "wb") as handle:
        server = subprocess.Popen(
            [str(serve_venv / "python"), "-c", SERVE_REPO, str(repo), str(http_port),
             str(free_port()), str(free_port()), "600"],
            cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT, env=clean_environment(),
            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"repository ready" not in log.read_bytes():
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        with RemoteSegmenter(f"127.0.0.1:{http_port}", retry_timeout_s=60) as segmenter:
            segmenter.set_support(list(episode.support_images), list(episode.support_masks))
            mask, probability = segmenter.segment(episode.query_image, return_prob=True)
            with pytest.raises(RemoteError, match="unexpected shape|shape"):
                segmenter._segment_once(segmenter.support_id or "",
                                        np.zeros((5, 5, 3, 1), np.uint8), False)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)  # the process group this test started
            server.wait(10)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_allclose(probability, want_probability, atol=1e-5)
