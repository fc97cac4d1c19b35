"""The examples run: examples/edge_app.py on a bundle, examples/remote_client.py against a
stand-in for ``crnet serve``.

The stand-in replaces only tritonclient's transport under crnet.runtime.RemoteSegmenter:
each request goes to the two models ``crnet serve`` hosts (``crnet_support`` registers a
support set and answers its id; ``crnet_segment`` segments an image against an id), served
here by a Segmenter on the test bundle. The client code, its retries and its error mapping
are the real ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.venvs import ROOT, plain_venv, run, tiny_bundle

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory)


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edge_app_segments_a_stream_and_switches_supports(bundle: Path) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "edge_app.py"), str(bundle),
                             "--backend", "onnxruntime", "--frames", "8"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("backend onnxruntime")
    assert "frame 4: switched to the second object's support" in lines
    assert lines[-1].startswith("8 frames: p50 ")


def test_edge_app_runs_on_the_plain_install(tmp_path_factory: pytest.TempPathFactory,
                                            crnet_wheel: Path, bundle: Path,
                                            tmp_path: Path) -> None:
    """The example needs no more than ``pip install crnet-deploy`` (no torch, no OpenCV)."""
    python = plain_venv(tmp_path_factory, crnet_wheel) / "python"
    result = run([str(python), str(EXAMPLES / "edge_app.py"), str(bundle), "--frames", "4"],
                 cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("backend onnxruntime")
    assert result.stdout.splitlines()[-1].startswith("4 frames: p50 ")


def test_edge_app_reports_a_bad_bundle_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "edge_app.py"),
                             str(tmp_path / "missing"), "--frames", "2"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.startswith("edge_app: ") and "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr


def test_edge_app_converts_opencv_bgr_to_rgb() -> None:
    edge_app = load_example("edge_app")
    bgr, square, _ = edge_app.synthetic_scene(3)
    rgb = edge_app.to_rgb(bgr)
    assert tuple(bgr[square][0]) == (30, 30, 220)  # red, as OpenCV stores it
    assert tuple(rgb[square][0]) == (220, 30, 30)  # red, as the Segmenter reads it


class StandInServer:
    """The two models of ``crnet serve``, answering on a Segmenter; records each request."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.supports: dict[str, Any] = {}
        self.segmented: list[str] = []  # the support id of each segment request
        self.lock = threading.Lock()

    def infer(self, model: str, inputs: dict[str, np.ndarray],
              outputs: list[str]) -> dict[str, np.ndarray]:
        if model == "crnet_support":
            images, masks = inputs["images"], inputs["masks"]
            key = hashlib.sha256(images.tobytes() + masks.tobytes()).hexdigest()[:16]
            support = self.segmenter.encode_support(list(images), list(masks))
            with self.lock:
                self.supports[key] = support
            return {"support_id": np.array([key.encode()], dtype=np.object_)}
        assert model == "crnet_segment", model
        key = inputs["support_id"].reshape(-1)[0].decode()
        with self.lock:
            if key not in self.supports:
                raise RuntimeError(f"[crnet:UnknownSupportError] unknown support_id {key!r}")
            support = self.supports[key]
            self.segmented.append(key)
        mask, probability = self.segmenter.segment(inputs["image"], return_prob=True,
                                                   support=support)
        answer = {"mask": mask.astype(np.uint8), "probability": probability}
        return {name: answer[name] for name in outputs}


def transport(server: StandInServer) -> ModuleType:
    """A module with the part of tritonclient.http's API that RemoteSegmenter uses."""
    module = ModuleType("stand_in_tritonclient")

    class InferInput:
        def __init__(self, name: str, shape: list[int], datatype: str) -> None:
            self.name, self.shape, self.datatype = name, shape, datatype

        def set_data_from_numpy(self, array: np.ndarray) -> None:
            assert list(array.shape) == self.shape
            self.data = array

    class InferRequestedOutput:
        def __init__(self, name: str) -> None:
            self.name = name

    class Result:
        def __init__(self, outputs: dict[str, np.ndarray]) -> None:
            self.outputs = outputs

        def as_numpy(self, name: str) -> np.ndarray:
            return self.outputs[name]

    class InferenceServerClient:
        def __init__(self, url: str, **options: float) -> None:
            self.url = url

        def infer(self, model: str, inputs: list[InferInput],
                  outputs: list[InferRequestedOutput]) -> Result:
            return Result(server.infer(model, {i.name: i.data for i in inputs},
                                       [o.name for o in outputs]))

        def close(self) -> None:
            pass

    module.InferInput = InferInput  # type: ignore[attr-defined]
    module.InferRequestedOutput = InferRequestedOutput  # type: ignore[attr-defined]
    module.InferenceServerClient = InferenceServerClient  # type: ignore[attr-defined]
    return module


def test_remote_client_against_a_stand_in_server(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.runtime import Segmenter, remote

    with Segmenter(bundle, backend="onnxruntime", threads=1) as segmenter:
        server = StandInServer(segmenter)
        monkeypatch.setattr(remote, "_client_module", lambda protocol: transport(server))
        client = load_example("remote_client")
        assert client.main(["localhost:8000", "--frames", "8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    first, second = list(server.supports)
    assert server.segmented == [first] * 4 + [second] * 4  # 3 timed, then switched at 4
    assert printed[0] == f"support registered as {first}"
    assert f"switched to the second object's support ({second})" in printed
    assert printed[-1].startswith("streamed 5 frames: ")


def test_remote_client_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    pytest.importorskip("tritonclient.http", reason="RemoteSegmenter needs tritonclient")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = load_example("remote_client")
    assert client.main([f"127.0.0.1:{port}", "--retry-timeout", "0.2"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("remote_client: server error: crnet_support on http://")
    assert "gave up after retrying" in error
