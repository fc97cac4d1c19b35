"""The TensorRT code against the real TensorRT Python bindings (10.x and 11.x) and real
cuda-python, over stub libraries (tests/trt_bindings.py): names, version logic.

No GPU is involved: these prove the code asks for things that exist in each version and
picks the right flags per version, not that an engine builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trt_api_scan import CHECK_CODE, scan
from tests.trt_bindings import Environment, run_json

pytestmark = pytest.mark.trt_bindings


def test_scan_finds_the_calls_the_code_makes() -> None:
    """The scan itself: it must see calls the code is known to make (else it checks
    nothing)."""
    found = {(a.root, ".".join(a.path)) for a in scan()}
    for expected in [("trt", "BuilderFlag.VERSION_COMPATIBLE"),
                     ("trt.IBuilderConfig", "set_timing_cache"),
                     ("trt.IExecutionContext", "execute_async_v3"),
                     ("cudart", "cudaStreamSynchronize"),
                     ("cudart", "cudaStreamIsCapturing"),
                     ("cudadrv", "cuCtxPushCurrent")]:
        assert expected in found


def test_every_attribute_exists_or_is_guarded(real_tensorrt: Environment,
                                              real_cuda: Environment, tmp_path: Path) -> None:
    accesses = scan()
    listing = tmp_path / "accesses.json"
    listing.write_text(json.dumps([a.as_json() for a in accesses]))
    report = run_json(CHECK_CODE, [real_tensorrt, real_cuda], args=[str(listing)])
    assert report["checked"] == len(accesses) > 50
    unguarded = [f"{m['file']}:{m['line']} {m['root']}.{'.'.join(m['path'])} "
                 f"(no {m['missing']})" for m in report["missing"] if not m["guarded"]]
    assert not unguarded, f"TensorRT {report['version']} lacks:\n" + "\n".join(unguarded)


VERSION_LOGIC = r"""
import json
import tensorrt as trt
from crnet.engines import engine_trt
from crnet.engines.build_settings import BuildSettings
from crnet.runtime.backends import tensorrt_backend

flags, strongly_typed, notes = engine_trt._network_flags(trt)
pools = {}
for pool, member in engine_trt._POOLS.items():
    pools[pool] = hasattr(trt.MemoryPoolType, member)
levels = {}
for level, member in engine_trt._HARDWARE_LEVELS.items():
    levels[level] = hasattr(trt.HardwareCompatibilityLevel, member)
dtypes = {}
for name, member in trt.DataType.__members__.items():
    try:
        dtypes[name] = str(tensorrt_backend.numpy_dtype(trt, member))
    except tensorrt_backend.BackendError as error:
        dtypes[name] = "error: " + str(error)
print(json.dumps({
    "version": trt.__version__,
    "flags": flags, "strongly_typed": strongly_typed,
    "strongly_typed_bit": (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)),
    "weak_int8": engine_trt._weak_precision_flags(trt, "int8"),
    "weak_fp16": engine_trt._weak_precision_flags(trt, "fp16"),
    "pools": pools, "levels": levels, "dtypes": dtypes,
}))
"""


def test_version_logic_per_real_version(real_tensorrt: Environment) -> None:
    facts = run_json(VERSION_LOGIC, [real_tensorrt])
    major = int(facts["version"].split(".")[0])
    assert facts["strongly_typed"] is True
    if major >= 11:  # no precision flags, always strongly typed: no creation flag needed
        assert facts["flags"] == 0
        assert facts["weak_int8"] == [] and facts["weak_fp16"] == []
    else:  # TensorRT 10: ask for STRONGLY_TYPED explicitly
        assert facts["flags"] == facts["strongly_typed_bit"] != 0
        assert facts["weak_int8"] == ["INT8", "FP16"] and facts["weak_fp16"] == ["FP16"]
    assert all(facts["pools"].values()), facts["pools"]
    assert facts["levels"]["none"] and facts["levels"]["ampere+"]
    # SAME_COMPUTE_CAPABILITY arrived after 10.8; _configure raises a clear error there
    assert facts["levels"]["sameComputeCapability"] == (major >= 11)
    assert facts["dtypes"]["FLOAT"] == "float32" and facts["dtypes"]["HALF"] == "float16"
    assert facts["dtypes"]["INT8"] == "int8" and facts["dtypes"]["BOOL"] == "bool"
    assert facts["dtypes"]["BF16"].startswith("error: ") and "BF16" in facts["dtypes"]["BF16"]


def test_same_compute_capability_refused_clearly_on_tensorrt_10(real_tensorrt: Environment,
                                                                tmp_path: Path) -> None:
    code = r"""
import json, sys
from pathlib import Path
import tensorrt as trt
from crnet.engines import engine_trt
from crnet.engines.build_settings import BuildSettings, EngineBuildError
settings = BuildSettings(onnx=Path(sys.argv[1]), engine=Path(sys.argv[1]).with_suffix(".plan"),
                         hardware_compatibility_level="sameComputeCapability")
from tests.trt_doubles import FakeBuilderConfigDouble, FakeBuilderDouble, FakeNetworkDouble
try:
    engine_trt._configure(trt, FakeBuilderDouble(), FakeNetworkDouble(), settings, [])
    print(json.dumps({"error": None}))
except EngineBuildError as error:
    print(json.dumps({"error": str(error)}))
"""
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    result = run_json(code, [real_tensorrt], args=[str(onnx)])
    if real_tensorrt.name.startswith("tensorrt-cu12-bindings-10."):
        assert "no hardware compatibility level sameComputeCapability" in result["error"]
    else:
        assert result["error"] is None


SIGNATURES = r"""
import inspect, json, sys
import tensorrt as trt
try:
    from cuda.bindings import driver as cudadrv, runtime as cudart
except ImportError:
    from cuda import cuda as cudadrv, cudart

def split_top(text):
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts

def pybind_parameters(function):
    lines = (function.__doc__ or "").strip().splitlines()
    first = lines[0]
    if first.endswith("(*args, **kwargs)"):  # overloaded: the first overload's signature
        first = next(line for line in lines if line.startswith("1. ")).split(" ", 1)[1]
    inside = first[first.index("(") + 1:first.rindex(") ->")]
    names = [part.split(":")[0].strip() for part in split_top(inside)]
    return [name for name in names if name != "self"]

wanted = json.loads(sys.argv[1])
answer = {}
for key, (root, name, methods) in wanted.items():
    answer[key] = {}
    for method in methods:
        if root in ("cudart", "cudadrv"):
            function = getattr(cudart if root == "cudart" else cudadrv, method, None)
            answer[key][method] = (None if function is None else
                                   list(inspect.signature(function).parameters))
        else:
            attribute = getattr(getattr(trt, name), method, None)
            if attribute is None:
                answer[key][method] = None
            elif isinstance(attribute, property):
                answer[key][method] = "property"
            else:
                answer[key][method] = pybind_parameters(attribute)
print(json.dumps(answer))
"""


def _double_methods(double: type) -> dict[str, list[str] | str]:
    import inspect

    methods: dict[str, list[str] | str] = {}
    helpers = getattr(double, "helpers", ())
    for name, member in vars(double).items():
        if name.startswith("_") or isinstance(member, type) or name in helpers:
            continue
        if callable(member):
            methods[name] = list(inspect.signature(member).parameters)[1:]
    return methods


def test_doubles_match_the_real_signatures(real_tensorrt: Environment,
                                           real_cuda: Environment) -> None:
    from tests.trt_doubles import DOUBLES

    wanted, expected = {}, {}
    for double, (root, name) in DOUBLES.items():
        methods = _double_methods(double)
        wanted[double.__name__] = (root, name, list(methods))
        expected[double.__name__] = methods
    real = run_json(SIGNATURES, [real_tensorrt, real_cuda], args=[json.dumps(wanted)])
    mismatched = [f"{double}.{method}: double {expected[double][method]} vs real {params}"
                  for double, methods in real.items() for method, params in methods.items()
                  if params != expected[double][method]]
    assert not mismatched, "\n".join(mismatched)


STREAMS = r"""
import json
try:
    from cuda.bindings import driver as cudadrv, runtime as cudart
except ImportError:
    from cuda import cuda as cudadrv, cudart
from crnet.runtime.backends.tensorrt_backend import stream_handle
print(json.dumps({"cudaStream_t": stream_handle(cudart.cudaStream_t(0x1234)),
                  "CUstream": stream_handle(cudadrv.CUstream(0x5678))}))
"""


def test_stream_handle_takes_cuda_pythons_own_stream_types(real_cuda: Environment) -> None:
    """An application on cuda-python passes its cudaStream_t or CUstream as ``stream=``."""
    assert run_json(STREAMS, [real_cuda]) == {"cudaStream_t": 0x1234, "CUstream": 0x5678}


def test_gpu_suite_skips_with_the_reason_where_no_gpu_answers(
        real_tensorrt: Environment, real_cuda: Environment, tmp_path: Path) -> None:
    """tensorrt imports (the real bindings) but no GPU answers: the GPU suite is skipped,
    every test, with the reason, instead of erroring in its fixtures."""
    from tests.trt_bindings import run_python

    report = tmp_path / "junit.xml"
    result = run_python(
        "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
        [real_tensorrt, real_cuda],
        args=["-q", "-p", "no:cacheprovider", "-m", "tensorrt", "-rs", f"--junitxml={report}",
              "tests/engines/test_tensorrt_suite.py"], timeout=300)
    # 5: pytest's "no tests collected", what a module skipped as a whole gives
    assert result.returncode in (0, 5), result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    assert 'errors="0"' in text and 'failures="0"' in text, text[-2000:]
    assert "skipped" in result.stdout and "no usable CUDA device" in result.stdout, \
        result.stdout[-3000:]
