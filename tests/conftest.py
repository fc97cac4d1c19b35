"""Shared fixtures: tiny models built in the test, never downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crnet.models.config import CRNetConfig
from tests.trt_bindings import (
    CUDA_ENVIRONMENTS,
    TENSORRT_VERSIONS,
    BindingsUnavailable,
    Environment,
    cuda_environment,
    tensorrt_environment,
)


@pytest.fixture
def tiny_config() -> CRNetConfig:
    """A very small CRNet config that runs in milliseconds."""
    return CRNetConfig(
        name="tiny", stem_width=8, trunk_widths=(8, 16, 16), feature_channels=16,
        refine_steps=2, dropout=0.0, input_size=(65, 65),
    )


@pytest.fixture(scope="session")
def crnet_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crnet-deploy's wheel, built once per session (tests/venvs.py)."""
    from tests.venvs import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def serve_venv(tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path) -> Path:
    """A server's own environment: the wheel with the ``serve`` extra (PyTriton pins
    numpy<2, so serving lives apart from the test environment); its bin directory."""
    from tests.venvs import make_venv

    return make_venv(tmp_path_factory.mktemp("serve-venv") / "venv", crnet_wheel, "serve")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op torch thread (two only contend on a shared 2-core
    machine); the previous count is put back after the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _auto_keeps_openvino_out(request: pytest.FixtureRequest,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the openvino-marked tests (their own process: tests/test_openvino_isolated.py)
    backend="auto" chooses among the other CPU backends, so that unmarked tests do not load
    OpenVINO into the main pytest process (see that module for why it is kept apart)."""
    if request.node.get_closest_marker("openvino") is None:
        from crnet.runtime import segmenter

        monkeypatch.setattr(segmenter, "CPU_ORDER",
                            tuple(name for name in segmenter.CPU_ORDER
                                  if name != "openvino"))


@pytest.fixture(scope="session", params=TENSORRT_VERSIONS)
def real_tensorrt(request: pytest.FixtureRequest) -> Environment:
    """The real TensorRT Python bindings of one version over stub libraries (cached; see
    tests/trt_bindings.py). Skipped, with the reason, without pip access or a C compiler."""
    try:
        return tensorrt_environment(request.param)
    except BindingsUnavailable as error:
        pytest.skip(f"real tensorrt {request.param} bindings unavailable: {error}")


@pytest.fixture(scope="session", params=list(CUDA_ENVIRONMENTS))
def real_cuda(request: pytest.FixtureRequest) -> Environment:
    """A real cuda-python (no driver on this machine), one of CUDA_ENVIRONMENTS (cached)."""
    try:
        return cuda_environment(request.param)
    except BindingsUnavailable as error:
        pytest.skip(f"real {request.param} unavailable: {error}")


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small VOC2012-layout tree (data.synthetic.write_voc_tree), fold 0: 30 base-class
    train_aug images, 30 novel-class val images (at least 6 per novel class: 5-shot works)."""
    from crnet.data.synthetic import write_voc_tree

    return write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", fold=0,
                          train_images=30, test_images=30)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights path of a tiny random-weight checkpoint (with its json beside it)."""
    from tests.export.conftest import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A bundle exported once per session from the tiny checkpoint (parity on 4 episodes)."""
    from crnet.export.to_onnx import export_bundle
    from tests.export.conftest import PARITY_EPISODES

    out = tmp_path_factory.mktemp("export") / "bundle"
    export_bundle(out, tiny_checkpoint, parity_episodes=PARITY_EPISODES, progress=False)
    return out
