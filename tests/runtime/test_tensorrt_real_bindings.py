"""The TensorRT backend with the real TensorRT bindings (10.x, 11.x; stub libraries) and a
real cuda-python on this driverless machine (tests/trt_bindings.py): TensorRT imports, no
GPU answers, so everything must fall back to ONNX Runtime with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.trt_bindings import (
    CUDA_ENVIRONMENTS,
    BindingsUnavailable,
    Environment,
    cuda_environment,
    run_json,
    run_python,
)

pytestmark = pytest.mark.trt_bindings

RAISING_CUDA = "cuda-python-12.6.0"  # raises RuntimeError on the first call without a driver


@pytest.fixture(scope="module")
def raising_cuda() -> Environment:
    assert RAISING_CUDA in CUDA_ENVIRONMENTS
    try:
        return cuda_environment(RAISING_CUDA)
    except BindingsUnavailable as error:
        pytest.skip(f"real {RAISING_CUDA} unavailable: {error}")


@pytest.fixture(scope="module")
def bundle_with_plans(runtime_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with (unloadable) fp32 plan + JSON files, so that "auto"
    has to ask the TensorRT backend whether it is available."""
    copy = Path(shutil.copytree(runtime_bundle, tmp_path_factory.mktemp("plans") / "bundle"))
    engines = copy / "engines"
    engines.mkdir()
    for graph in ("backbone", "refine"):
        (engines / f"{graph}.fp32.plan").write_bytes(b"not a plan")
        (engines / f"{graph}.fp32.json").write_text(json.dumps(
            {"tensorrt_version": "10.8.0.43", "compute_capability": "8.9"}))
    return copy


AVAILABILITY = r"""
import json
import tensorrt
from crnet.engines.build_settings import EngineBuildError
from crnet.engines.engine_trt import device_info
from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

available, reason = TensorRTBackend.is_available()
try:
    device_error = None
    device_info()
except EngineBuildError as error:
    device_error = str(error)
print(json.dumps({"tensorrt": tensorrt.__version__, "available": available, "reason": reason,
                  "device_error": device_error}))
"""


def test_is_available_answers_without_a_driver(real_tensorrt: Environment,
                                               real_cuda: Environment) -> None:
    answer = run_json(AVAILABILITY, [real_tensorrt, real_cuda])
    assert real_tensorrt.name.endswith(answer["tensorrt"])
    assert answer["available"] is False
    assert "CUDA" in answer["reason"] or "cuda" in answer["reason"]
    if real_cuda.name == RAISING_CUDA:
        assert "dlopen" in answer["reason"]
    assert answer["device_error"] and "compute capability" in answer["device_error"]


def test_auto_picks_a_cpu_backend(real_tensorrt: Environment, raising_cuda: Environment,
                                  bundle_with_plans: Path) -> None:
    code = ("import json, sys\nfrom runtime import Segmenter\n"
            "from crnet.runtime.backends.base import backend_class\n"
            "from crnet.runtime.segmenter import CPU_ORDER\n"
            "seg = Segmenter(sys.argv[1], backend='auto')\n"
            "first = next(n for n in CPU_ORDER if backend_class(n).is_available()[0])\n"
            "print(json.dumps({'backend': seg.backend_name, 'first_cpu': first}))\n")
    answer = run_json(code, [real_tensorrt, raising_cuda], args=[str(bundle_with_plans)])
    # TensorRT cannot run (no GPU): the fastest installed CPU backend, as on any CPU box
    assert answer["backend"] == answer["first_cpu"] != "tensorrt"


def test_crnet_build_falls_back_to_the_ort_cpu_build(real_tensorrt: Environment,
                                                     raising_cuda: Environment,
                                                     runtime_bundle: Path,
                                                     tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))
    code = "import sys\nfrom crnet.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    result = run_python(code, [real_tensorrt, raising_cuda], args=["build", str(bundle)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "falling back" in result.stderr and "CPU" in result.stderr
    assert sorted(p.name for p in (bundle / "engines" / "ort").glob("*.onnx"))
    assert not list((bundle / "engines").glob("*.plan"))
