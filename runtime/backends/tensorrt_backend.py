"""TensorRT backend (TensorRT 10 and 11): serialized plans, cuda-python host code, no torch.

Engine files, written by `crnet build`, read here (paths from crnet.runtime.layout)::

    bundle/engines/<graph>.<precision>.plan     the serialized engine (trtexec can read it)
    bundle/engines/<graph>.<precision>.json     its description, beside (not inside) it

where ``<graph>`` is ``backbone`` or ``refine``. The engine JSON fields this backend reads:

* ``tensorrt_version`` (str, e.g. "10.3.0.26"): the TensorRT that built the plan. Plans
  load only on the exact same version (all four parts, as TensorRT checks), unless
  ``version_compatible`` is true (built with BuilderFlag.VERSION_COMPATIBLE): then a
  runtime not older of the same major, or of the next major where NVIDIA supports it
  (8 -> 10, 10 -> 11).
* ``host`` (``{"machine", "system"}``, optional): the platform it was built on; plans do
  not move between CPU architectures or operating systems.
* ``builder.strip_weights`` (optional): a weight-stripped plan is refit at load from the
  bundle's ONNX of the same graph and precision (Refitter + OnnxParserRefitter).
* ``compute_capability`` (str "8.7" or [8, 7]): of the GPU it was built on; must equal
  this GPU's unless ``hardware_compatibility_level`` is "ampere_plus" (then any >= 8.0).
* ``gpu_name`` (str): reported in errors.
* ``profiles`` (list, one per optimisation profile, of
  ``{tensor_name: {"min": [...], "opt": [...], "max": [...]}}``): shown in errors; the
  ranges actually enforced are read from the engine itself (profile 0).
* ``onnx_sha256`` (str): sha256 of the ONNX file the plan was built from; it must match the
  bundle's current ``<graph>.<precision>.onnx`` (manifest ``files``), else it is stale.
* optional ``version_compatible`` (bool), ``hardware_compatibility_level`` (str).

Both checks run before the plan is deserialized, so a plan built elsewhere fails with a
message naming both machines instead of TensorRT's opaque one. Tensors are bound by name
(``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); an input shape outside the engine's
optimisation profile raises ProfileError naming the tensor, the shape and the range.
Pinned host buffers, device buffers and the CUDA stream are allocated once per input
shape and reused; once the same shapes run twice in a row, the enqueue is captured in a
CUDA graph and replayed (disable with ``cuda_graphs=False``; a capture that fails falls
back to plain enqueues). One execution context per graph: not thread-safe, the Segmenter
serialises calls.

tensorrt and cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` for older
cuda-python) are imported only by ``is_available()`` and ``activate()``.
"""

from __future__ import annotations

import ctypes
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError
from crnet.runtime.bundle import Bundle
from crnet.runtime.files import sha256_file
from crnet.runtime.layout import GRAPHS, engine_paths
from crnet.runtime.preprocess import InputError

MAX_CACHED_SHAPES = 8


class EngineMismatchError(BackendError):
    """A plan built for another TensorRT version, another GPU, or an older ONNX."""


class ProfileError(InputError):
    """An input shape outside the engine's optimisation profile."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _capability(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        major, _, minor = value.partition(".")
        return int(major), int(minor or 0)
    return int(value[0]), int(value[1])


# Cross-major runtimes NVIDIA supports for version-compatible plans (engine compatibility
# page, TensorRT 11 support matrix): built major -> runtime major.
_CROSS_MAJOR_COMPATIBLE = {8: 10, 10: 11}
_MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def _version_compatible_fits(built: tuple[int, ...], here: tuple[int, ...]) -> bool:
    if not built or not here:
        return False
    if built[0] == here[0]:
        return here >= built
    return _CROSS_MAJOR_COMPATIBLE.get(built[0]) == here[0]


def _check_platform(info: dict[str, Any], plan: str, machine: str, system: str,
                    rebuild: str) -> None:
    """Plans are not portable across CPU architectures or operating systems."""
    host = info.get("host") or {}
    built_machine = _MACHINE_ALIASES.get(str(host.get("machine", "")).lower(),
                                         str(host.get("machine", "")).lower())
    here_machine = _MACHINE_ALIASES.get(machine.lower(), machine.lower())
    built_system, here_system = str(host.get("system", "")), system
    if (built_machine and built_machine != here_machine) or (
            built_system and built_system.lower() != here_system.lower()):
        raise EngineMismatchError(
            f"{plan} was built on {host.get('system', '?')}/{host.get('machine', '?')} and this "
            f"machine is {here_system}/{machine}: TensorRT plans do not move between platforms "
            f"(a hardware-compatibility level does not change that); {rebuild}")


def check_engine_info(info: dict[str, Any], plan: str, *, tensorrt_version: str,
                      compute_capability: Sequence[int], gpu_name: str = "this GPU",
                      onnx_sha256: str | None = None, machine: str | None = None,
                      system: str | None = None) -> None:
    """Raise EngineMismatchError unless the engine JSON ``info`` fits this machine
    (``machine``/``system``: platform.machine()/system() unless given)."""
    rebuild = "rebuild it on this machine with `crnet build`"
    missing = [k for k in ("tensorrt_version", "compute_capability") if k not in info]
    if missing:
        raise EngineMismatchError(f"{plan}: engine JSON lacks {missing}; {rebuild}")
    built, here = _version_tuple(info["tensorrt_version"]), _version_tuple(tensorrt_version)
    if info.get("version_compatible"):
        fits = _version_compatible_fits(built, here)
        rule = ("a runtime not older of the same major version, or the next major where "
                "NVIDIA supports it (8 -> 10, 10 -> 11) (version-compatible plan)")
    else:
        fits = built == here
        rule = "the exact version (major.minor.patch.build, as TensorRT checks it)"
    if not fits:
        raise EngineMismatchError(
            f"{plan} was built with TensorRT {info['tensorrt_version']} but TensorRT "
            f"{tensorrt_version} is installed; plans need {rule}; {rebuild}")
    _check_platform(info, plan, machine or platform.machine(), system or platform.system(),
                    rebuild)
    built_cc, here_cc = _capability(info["compute_capability"]), _capability(compute_capability)
    level = str(info.get("hardware_compatibility_level", "none")).lower()
    if level in ("ampere_plus", "ampere-plus"):
        fits, rule = here_cc >= (8, 0), "compute capability >= 8.0 (ampere_plus)"
    else:
        fits, rule = here_cc == built_cc, f"compute capability {built_cc[0]}.{built_cc[1]}"
    if not fits:
        raise EngineMismatchError(
            f"{plan} was built on {info.get('gpu_name', 'another GPU')} (compute capability "
            f"{built_cc[0]}.{built_cc[1]}) and needs {rule}; {gpu_name} has "
            f"{here_cc[0]}.{here_cc[1]}; {rebuild}")
    if onnx_sha256 is not None and info.get("onnx_sha256") not in (None, onnx_sha256):
        raise EngineMismatchError(
            f"{plan} was built from an ONNX with sha256 {info['onnx_sha256']}, but the bundle's "
            f"graph now has {onnx_sha256} (re-exported or re-quantized): the plan is stale; "
            f"{rebuild}")


def check_profile(name: str, shape: Sequence[int], minimum: Sequence[int],
                  maximum: Sequence[int]) -> None:
    """Raise ProfileError unless ``minimum <= shape <= maximum`` axis by axis."""
    shape, minimum, maximum = tuple(shape), tuple(minimum), tuple(maximum)
    if len(shape) != len(minimum) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape, minimum, maximum, strict=True)):
        raise ProfileError(
            f"input {name!r} has shape {list(shape)}, outside the engine's optimisation profile "
            f"{list(minimum)} .. {list(maximum)}; rebuild the engine with a wider profile "
            "(`crnet build`), or stay within it (e.g. fewer shots)")


def numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT io tensor type; BackendError for types numpy lacks (BF16,
    FP8, INT4, FP4: keep such tensors inside the graph, with float32/float16 io)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as error:
        raise BackendError(f"TensorRT io tensor type {dtype} has no numpy equivalent; export "
                           "the graph with float32 or float16 inputs and outputs") from error


# attributes that hold a stream's raw cudaStream_t: pycuda Stream.handle, torch
# cuda.Stream.cuda_stream, cupy cuda.Stream.ptr
STREAM_ATTRIBUTES = ("handle", "cuda_stream", "ptr")


def stream_handle(stream: Any) -> int:
    """The raw ``cudaStream_t`` (an int) of ``stream``: an int, or an object with one of
    STREAM_ATTRIBUTES; InputError otherwise."""
    if isinstance(stream, bool):
        raise InputError("stream must be a CUDA stream handle or stream object, not a bool")
    if isinstance(stream, int):
        value = stream
    else:
        for attribute in STREAM_ATTRIBUTES:
            value = getattr(stream, attribute, None)
            if value is not None:
                break
        else:
            raise InputError(
                f"stream must be an int cudaStream_t or an object with one of "
                f"{list(STREAM_ATTRIBUTES)} (pycuda, torch, cupy), got {type(stream).__name__}")
        try:
            value = int(value)
        except (TypeError, ValueError) as error:
            raise InputError(f"stream.{attribute} is not an integer handle: {value!r}") from error
    if value < 0:
        raise InputError(f"stream handle must be >= 0, got {value}")
    return value


def is_weight_stripped(info: dict[str, Any]) -> bool:
    """Whether the engine JSON says the plan was built with --stripWeights."""
    return bool((info.get("builder") or {}).get("strip_weights"))


def refit_from_onnx(trt: Any, engine: Any, logger: Any, onnx_path: Path, plan: str) -> None:
    """Refit a weight-stripped engine with the weights of the ONNX it was built from;
    EngineMismatchError if that ONNX is missing or the refit fails."""
    if not Path(onnx_path).is_file():
        raise EngineMismatchError(
            f"{plan} is weight-stripped (built with --stripWeights) and its ONNX "
            f"{onnx_path} was not found to refit it from; restore the bundle's ONNX or rebuild "
            "without --stripWeights")
    refitter = trt.Refitter(engine, logger)
    parser_refitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser_refitter.refit_from_file(str(onnx_path)) or not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights())
        raise EngineMismatchError(
            f"could not refit the weight-stripped {plan} from {onnx_path}"
            + (f" (missing weights: {missing[:5]})" if missing else "")
            + "; rebuild it with `crnet build` (without --stripWeights)")


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _cuda(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python (err, *values) result, raising BackendError on an error."""
    if not isinstance(result, tuple):
        result = (result,)
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA error in {what}: {error}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass
class _Buffers:
    """Pinned host arrays and device pointers of every io tensor, for one input shape."""

    host: dict[str, np.ndarray]
    device: dict[str, int]
    host_pointers: list[int] = field(default_factory=list)


class _EngineRunner:
    """One deserialized engine, its execution context, and per-shape buffers."""

    def __init__(self, trt: Any, cudart: Any, runtime: Any, plan: Path, stream: Any,
                 cuda_graphs: bool, refit_onnx: Path | None = None, logger: Any = None
                 ) -> None:
        self.cudart, self.stream, self.plan = cudart, stream, plan
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {plan} (see its log above)")
        if refit_onnx is not None:  # a weight-stripped plan: weights come from the ONNX
            refit_from_onnx(trt, self.engine, logger, refit_onnx, plan.name)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {plan}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: numpy_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profile = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0))
                        for n in self.inputs}
        self.cuda_graphs = cuda_graphs
        self._buffers: dict[tuple[Any, ...], _Buffers] = {}
        self._bound: tuple[Any, ...] | None = None
        self._runs_bound = 0
        self._graph_exec: Any = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise BackendError(f"{self.plan.name} needs inputs {missing}")
        key = tuple((name, tuple(feeds[name].shape)) for name in self.inputs)
        if key != self._bound:
            self._bind(key)
        buffers = self._buffers[key]
        if self.cuda_graphs and self._graph_exec is None and self._runs_bound >= 1:
            self._capture()
        for name in self.inputs:
            np.copyto(buffers.host[name], feeds[name], casting="same_kind")
            host = buffers.host[name]
            _cuda(cudart, cudart.cudaMemcpyAsync(
                buffers.device[name], host.ctypes.data, host.nbytes,
                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "H2D copy")
        if self._graph_exec is not None:
            _cuda(cudart, cudart.cudaGraphLaunch(self._graph_exec, self.stream),
                  "cudaGraphLaunch")
        elif not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"execute_async_v3 failed for {self.plan.name}")
        for name in self.outputs:
            host = buffers.host[name]
            _cuda(cudart, cudart.cudaMemcpyAsync(
                host.ctypes.data, buffers.device[name], host.nbytes,
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "D2H copy")
        _cuda(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        self._runs_bound += 1
        return {name: buffers.host[name].astype(np.float32, copy=True) for name in self.outputs}

    def _bind(self, key: tuple[Any, ...]) -> None:
        """Set input shapes, allocate (or reuse) buffers for them, set tensor addresses."""
        for name, shape in key:
            minimum, _, maximum = self.profile[name]
            check_profile(name, shape, minimum, maximum)
        for name, shape in key:
            if not self.context.set_input_shape(name, shape):
                raise BackendError(f"{self.plan.name}: set_input_shape({name!r}, {shape}) failed")
        if key not in self._buffers:
            if len(self._buffers) >= MAX_CACHED_SHAPES:
                oldest = next(iter(self._buffers))
                self._free(self._buffers.pop(oldest))
            shapes = dict(key)
            for name in self.outputs:
                shapes[name] = tuple(self.context.get_tensor_shape(name))
            self._buffers[key] = self._allocate(shapes)
        buffers = self._buffers[key]
        for name, pointer in buffers.device.items():
            if not self.context.set_tensor_address(name, pointer):
                raise BackendError(f"{self.plan.name}: set_tensor_address({name!r}) failed")
        self._drop_graph()
        self._bound, self._runs_bound = key, 0

    def _allocate(self, shapes: dict[str, tuple[int, ...]]) -> _Buffers:
        cudart = self.cudart
        buffers = _Buffers(host={}, device={})
        try:
            for name, shape in shapes.items():
                dtype = self.dtypes[name]
                nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
                pointer = int(_cuda(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
                buffers.host_pointers.append(pointer)
                raw = (ctypes.c_byte * nbytes).from_address(pointer)
                buffers.host[name] = np.frombuffer(raw, dtype=dtype,
                                                   count=int(np.prod(shape))).reshape(shape)
                buffers.device[name] = int(_cuda(cudart, cudart.cudaMalloc(nbytes),
                                                 "cudaMalloc"))
        except BaseException:
            self._free(buffers)
            raise
        return buffers

    def _free(self, buffers: _Buffers) -> None:
        for pointer in buffers.device.values():
            self.cudart.cudaFree(pointer)
        for pointer in buffers.host_pointers:
            self.cudart.cudaFreeHost(pointer)
        buffers.device.clear()
        buffers.host.clear()
        buffers.host_pointers.clear()

    def _capture(self) -> None:
        """Capture one enqueue of the bound shapes into a CUDA graph; on failure, disable."""
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        try:
            _cuda(cudart, cudart.cudaStreamBeginCapture(self.stream, mode),
                  "cudaStreamBeginCapture")
            enqueued = self.context.execute_async_v3(int(self.stream))
            graph = _cuda(cudart, cudart.cudaStreamEndCapture(self.stream),
                          "cudaStreamEndCapture")
            if not enqueued:
                cudart.cudaGraphDestroy(graph)  # captured, never instantiated
                raise BackendError("execute_async_v3 failed during capture")
            try:
                if hasattr(cudart, "cudaGraphInstantiateWithFlags"):
                    graph_exec = _cuda(cudart, cudart.cudaGraphInstantiateWithFlags(graph, 0),
                                       "cudaGraphInstantiateWithFlags")
                else:
                    graph_exec = _cuda(cudart, cudart.cudaGraphInstantiate(graph, 0),
                                       "cudaGraphInstantiate")
            finally:
                cudart.cudaGraphDestroy(graph)
            self._graph_exec = graph_exec
        except BackendError:
            self.cuda_graphs = False  # e.g. an engine with layers that cannot be captured
            self._graph_exec = None
            # Leave capture mode if the failure happened inside it; ignore its own error.
            status = cudart.cudaStreamIsCapturing(self.stream)
            if isinstance(status, tuple) and len(status) > 1 and \
                    status[1] != cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone:
                cudart.cudaStreamEndCapture(self.stream)

    def _drop_graph(self) -> None:
        if self._graph_exec is not None:
            self.cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None

    def close(self) -> None:
        self._drop_graph()
        for buffers in self._buffers.values():
            self._free(buffers)
        self._buffers.clear()
        self.context = None
        self.engine = None


class TensorRTBackend(Backend):
    """Both graphs as TensorRT engines from ``bundle/engines/`` (see module docstring)."""

    name = "tensorrt"
    install_hint = ("It needs an NVIDIA GPU, `pip install \"crnet-deploy[tensorrt-cu12]\"` "
                    "(or [tensorrt-cu13] on a CUDA 13 driver; on Jetson, JetPack's TensorRT 10 "
                    "plus [jetson]) and engines built by `crnet build`.")
    thread_safe = False

    def __init__(self, bundle: Bundle | None, precision: str = "fp32", *,
                 cuda_graphs: bool = True, device: int = 0, stream: Any = None) -> None:
        if bundle is None:
            raise BackendError("the tensorrt backend needs a bundle with engines")
        super().__init__(bundle, precision)
        # an application's own CUDA stream (raw handle, or pycuda/torch/cupy stream object):
        # used as given, never destroyed; the backend then runs in the CUDA context current
        # on the calling thread (the runtime API uses it) and does not call cudaSetDevice
        self.external_stream = None if stream is None else stream_handle(stream)
        self.cuda_graphs = cuda_graphs
        self.device = device
        self.engine_files = {graph: engine_paths(bundle.root, graph, precision)
                             for graph in GRAPHS}
        for plan, meta in self.engine_files.values():
            for path in (plan, meta):
                if not path.exists():
                    raise BackendError(
                        f"{path} not found: build the {precision} engines with "
                        f"`crnet build {bundle.root} --precision {precision}`")
                # inside the bundle and listed (so hashed at load) in a verified bundle
                bundle.file_path(path.relative_to(bundle.root).as_posix(), "TensorRT engine")
        self.runners: dict[str, _EngineRunner] = {}
        self.engine_info: dict[str, dict[str, Any]] = {}

    @classmethod
    def has_engines(cls, bundle: Bundle, precision: str) -> bool:
        """Whether the bundle holds plan + JSON for both graphs at ``precision``."""
        return all(path.exists() for graph in GRAPHS
                   for path in engine_paths(bundle.root, graph, precision))

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            import tensorrt as trt
        except ImportError as error:
            return False, f"tensorrt does not import ({error})"
        try:
            cudart = _import_cudart()
        except ImportError as error:
            return False, f"cuda-python does not import ({error})"
        try:
            count = _cuda(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except BackendError as error:
            return False, f"no usable CUDA device ({error})"
        except RuntimeError as error:  # cuda-python 12.0-12.6.0 without a driver
            return False, f"no usable CUDA device (cuda-python: {error})"
        if not count:
            return False, "no CUDA device found"
        return True, f"TensorRT {trt.__version__}, {count} CUDA device(s)"

    def _machine(self) -> tuple[tuple[int, int], str]:
        cudart = self.cudart
        attribute = cudart.cudaDeviceAttr
        major = _cuda(cudart, cudart.cudaDeviceGetAttribute(
            attribute.cudaDevAttrComputeCapabilityMajor, self.device), "compute capability")
        minor = _cuda(cudart, cudart.cudaDeviceGetAttribute(
            attribute.cudaDevAttrComputeCapabilityMinor, self.device), "compute capability")
        properties = _cuda(cudart, cudart.cudaGetDeviceProperties(self.device),
                           "cudaGetDeviceProperties")
        name = properties.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return (int(major), int(minor)), name

    def _activate(self) -> None:
        import tensorrt as trt

        assert self.bundle is not None
        self.cudart = _import_cudart()
        if self.external_stream is None:
            _cuda(self.cudart, self.cudart.cudaSetDevice(self.device), "cudaSetDevice")
        capability, gpu_name = self._machine()
        files = self.bundle.manifest.get("files", {})
        for graph, (plan, meta) in self.engine_files.items():
            try:
                info = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise EngineMismatchError(f"cannot read {meta}: {error}") from error
            onnx_path = self.bundle.graph_path(graph, self.precision)
            onnx_sha = files.get(onnx_path.name) or (
                sha256_file(onnx_path) if onnx_path.exists() else None)
            check_engine_info(info, plan.name, tensorrt_version=trt.__version__,
                              compute_capability=capability, gpu_name=gpu_name,
                              onnx_sha256=onnx_sha)
            self.engine_info[graph] = info
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if any(info.get("version_compatible") for info in self.engine_info.values()):
            self.runtime.engine_host_code_allowed = True
        if self.external_stream is not None:
            self.stream = self.cudart.cudaStream_t(self.external_stream)
        else:
            self.stream = _cuda(self.cudart, self.cudart.cudaStreamCreate(),
                                "cudaStreamCreate")
        try:
            for graph, (plan, _) in self.engine_files.items():
                refit_onnx = (self.bundle.graph_path(graph, self.precision)
                              if is_weight_stripped(self.engine_info[graph]) else None)
                self.runners[graph] = _EngineRunner(trt, self.cudart, self.runtime, plan,
                                                    self.stream, self.cuda_graphs,
                                                    refit_onnx, self.logger)
        except BaseException:
            self._deactivate()
            raise

    def _deactivate(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners = {}
        if getattr(self, "stream", None) is not None:
            if self.external_stream is None:  # the application owns its stream
                self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.runtime = None

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        self._require_active()
        return self.runners["backbone"].run({"image": images})["feat"]

    def run_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                   support_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._require_active()
        outputs = self.runners["refine"].run({"query_feat": query_feat,
                                              "support_feat": support_feat,
                                              "support_mask": support_mask})
        return outputs["query_logits"], outputs["support_logits"]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["cuda_graphs"] = self.cuda_graphs
        info["engines"] = {graph: {k: v for k, v in meta.items() if k != "profiles"}
                           for graph, meta in self.engine_info.items()}
        return info
