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
back to plain enqueues; a stream the application is capturing already is never captured
by the backend). One execution context per graph: not thread-safe, the Segmenter
serialises calls, which may come from any thread: each call makes the device's primary
context current for its duration and restores the thread's own afterwards (push/pop of
the driver API), so ``device=N`` holds on every thread and an application's context
(pycuda, say) survives.

tensorrt and cuda-python (``cuda.bindings.runtime`` and ``cuda.bindings.driver``, or
``cuda.cudart`` and ``cuda.cuda`` for older cuda-python) are imported only by
``is_available()`` and ``activate()``.
"""

from __future__ import annotations

import ctypes
import json
import platform
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError
from crnet.runtime.bundle import Bundle
from crnet.runtime.files import sha256_file
from crnet.runtime.layout import GRAPHS, engine_paths
from crnet.runtime.preprocess import InputError
from crnet.runtime.schema import check_graph_io, tensor_info

if TYPE_CHECKING:
    from crnet.runtime.adapter import Adapter

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
    """The raw ``cudaStream_t`` (an int) of ``stream``: an int, an object with one of
    STREAM_ATTRIBUTES, or anything else ``int()`` converts (cuda-python's own
    ``cudaStream_t`` and ``CUstream``); InputError otherwise."""
    if isinstance(stream, bool):
        raise InputError("stream must be a CUDA stream handle or stream object, not a bool")
    if isinstance(stream, str | bytes | float):
        raise InputError(f"stream must be a CUDA stream handle or stream object, not a "
                         f"{type(stream).__name__} ({stream!r})")
    source = "stream"
    value: Any = stream
    if not isinstance(stream, int):
        for attribute in STREAM_ATTRIBUTES:
            held = getattr(stream, attribute, None)
            if held is not None:
                value, source = held, f"stream.{attribute}"
                break
        try:
            value = int(value)
        except (TypeError, ValueError) as error:
            raise InputError(
                f"{source} is not an integer handle: {value!r}; expected an int cudaStream_t, "
                f"a cuda-python cudaStream_t/CUstream, or an object with one of "
                f"{list(STREAM_ATTRIBUTES)} (pycuda, torch, cupy)") from error
    if value < 0:
        raise InputError(f"stream handle must be >= 0, got {value}")
    return int(value)


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


def refit_named_weights(trt: Any, engine: Any, logger: Any, values: dict[str, np.ndarray],
                        shipped: Callable[[str], np.ndarray], plan: str) -> int:
    """Refit ``engine``'s named weights with ``values`` (trt.Refitter.set_named_weights,
    then refit_cuda_engine); weights TensorRT asks for as well (get_missing_weights: those
    built into one kernel with a changed one) get their ``shipped`` values. Returns how
    many weights were set; BackendError naming the weights TensorRT refuses."""
    refitter = trt.Refitter(engine, logger)
    kept: list[np.ndarray] = []  # TensorRT reads the arrays until the refit returns

    def put(name: str, value: np.ndarray) -> None:
        array = np.ascontiguousarray(value)
        kept.append(array)
        if not refitter.set_named_weights(name, trt.Weights(array)):
            raise BackendError(f"TensorRT refused the weights {name} ({array.dtype} "
                               f"{list(array.shape)}) for {plan}: not refittable, or another "
                               "size or type than it was built with")

    for name, value in values.items():
        put(name, value)
    for name in refitter.get_missing_weights():
        if name not in values:
            put(name, shipped(name))
    if not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights())
        raise BackendError(f"TensorRT could not refit {plan}"
                           + (f" (missing weights: {missing[:5]})" if missing else ""))
    return len(kept)


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _import_driver() -> Any:
    try:
        from cuda.bindings import driver as cudadrv
    except ImportError:
        from cuda import cuda as cudadrv  # cuda-python < 12.6.1
    return cudadrv


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


def _driver(cudadrv: Any, result: Any, what: str) -> Any:
    """Unpack a CUDA driver API (err, *values) result, raising BackendError on an error."""
    if not isinstance(result, tuple):
        result = (result,)
    error, values = result[0], result[1:]
    if error != cudadrv.CUresult.CUDA_SUCCESS:
        raise BackendError(f"CUDA driver error in {what}: {error}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class DeviceContext:
    """The primary CUDA context of one device, current on the calling thread inside a
    ``with`` block: pushed on entry, popped on exit. Whatever the thread had current before
    (nothing, another device's context, an application's pycuda context) is current again
    afterwards; ``cudaSetDevice`` would instead bind the device to the calling thread only,
    and replace that context for good."""

    def __init__(self, cudadrv: Any, device: int) -> None:
        self.cudadrv = cudadrv
        _driver(cudadrv, cudadrv.cuInit(0), "cuInit")
        self.device = _driver(cudadrv, cudadrv.cuDeviceGet(device), f"cuDeviceGet({device})")
        self.context: Any = _driver(cudadrv, cudadrv.cuDevicePrimaryCtxRetain(self.device),
                                    "cuDevicePrimaryCtxRetain")

    def __enter__(self) -> DeviceContext:
        _driver(self.cudadrv, self.cudadrv.cuCtxPushCurrent(self.context), "cuCtxPushCurrent")
        return self

    def __exit__(self, error_type: Any, error: Any, traceback: Any) -> None:
        popped = self.cudadrv.cuCtxPopCurrent()
        if error_type is None:  # do not mask the error already on its way out
            _driver(self.cudadrv, popped, "cuCtxPopCurrent")

    def release(self) -> None:
        """Drop this backend's hold on the primary context (once)."""
        if self.context is not None:
            self.context = None
            self.cudadrv.cuDevicePrimaryCtxRelease(self.device)


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
        """Set input shapes, allocate (or reuse) buffers for them, set tensor addresses.
        Nothing is committed (cached buffers, the bound key) before every step succeeded;
        after a failure no key is bound, so the next call binds again from the start."""
        for name, shape in key:
            minimum, _, maximum = self.profile[name]
            check_profile(name, shape, minimum, maximum)
        self._drop_graph()
        self._bound, self._runs_bound = None, 0  # the context's shapes change from here on
        for name, shape in key:
            if not self.context.set_input_shape(name, shape):
                raise BackendError(f"{self.plan.name}: set_input_shape({name!r}, {shape}) failed")
        buffers = self._buffers.get(key)
        fresh = buffers is None
        if buffers is None:
            shapes = dict(key)
            for name in self.outputs:
                shapes[name] = tuple(self.context.get_tensor_shape(name))
            buffers = self._allocate(shapes)
        try:
            for name, pointer in buffers.device.items():
                if not self.context.set_tensor_address(name, pointer):
                    raise BackendError(f"{self.plan.name}: set_tensor_address({name!r}) failed")
        except BaseException:
            if fresh:
                self._free(buffers)
            raise
        if fresh:
            if len(self._buffers) >= MAX_CACHED_SHAPES:
                self._free(self._buffers.pop(next(iter(self._buffers))))
            self._buffers[key] = buffers
        self._bound = key

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

    def _stream_capturing(self) -> bool:
        """Whether the stream is being captured already (an application capturing its own
        stream); an unanswered query counts as capturing."""
        cudart = self.cudart
        result = cudart.cudaStreamIsCapturing(self.stream)
        if not isinstance(result, tuple) or len(result) < 2 or \
                result[0] != cudart.cudaError_t.cudaSuccess:
            return True
        return bool(result[1] != cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)

    def _capture(self) -> None:
        """Capture one enqueue of the bound shapes into a CUDA graph; on failure, disable.
        A stream already being captured is left alone: no capture of ours this call, and
        never an end to the application's capture."""
        cudart = self.cudart
        if self._stream_capturing():
            return  # run() enqueues plainly: the enqueue joins the application's graph
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        try:
            _cuda(cudart, cudart.cudaStreamBeginCapture(self.stream, mode),
                  "cudaStreamBeginCapture")
        except BackendError:
            self.cuda_graphs = False
            return
        enqueued = False
        try:
            enqueued = bool(self.context.execute_async_v3(int(self.stream)))
        finally:
            ended = cudart.cudaStreamEndCapture(self.stream)  # the capture we began
        try:
            graph = _cuda(cudart, ended, "cudaStreamEndCapture")
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


def check_engine_io(bundle: Bundle, graph: str, runner: _EngineRunner) -> None:
    """BundleError unless a deserialized engine of ``graph`` has the inputs and outputs
    (names, ranks, channels, feature size) the bundle's manifest promises (runtime.schema);
    -1, TensorRT's dynamic dimension, is not compared."""
    engine = runner.engine

    def tensors(names: list[str]) -> list[Any]:
        return [tensor_info(name, tuple(engine.get_tensor_shape(name)),
                            str(runner.dtypes[name])) for name in names]

    check_graph_io(bundle.manifest, graph, tensors(runner.inputs), tensors(runner.outputs),
                   str(runner.plan))


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
        # an application's own CUDA stream (raw handle, cuda-python stream, or
        # pycuda/torch/cupy stream object): used as given, never destroyed; the backend then
        # runs in the CUDA context current on the calling thread (the stream's). Without
        # one, every call makes ``device``'s primary context current for its duration
        # (DeviceContext), from whichever thread it comes
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
        self.device_context: DeviceContext | None = None
        self.adapter: Adapter | None = None
        self._refitted: set[str] = set()  # refine-plan weights that differ from the ONNX's
        self._shipped: dict[str, np.ndarray] = {}  # their shipped values, read on demand

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

    def _on_device(self) -> AbstractContextManager[Any]:
        """The device's primary context, current for one call (the backend's own stream),
        or nothing to do (an application's stream: its thread's current context)."""
        return self.device_context if self.device_context is not None else nullcontext()

    def _activate(self) -> None:
        import tensorrt as trt

        assert self.bundle is not None
        self.cudart = _import_cudart()
        if self.external_stream is None:
            self.device_context = DeviceContext(_import_driver(), self.device)
        try:
            with self._on_device():
                self._load_engines(trt)
        except BaseException:
            self._deactivate()
            raise

    def _load_engines(self, trt: Any) -> None:
        """Check the engine JSONs against this machine, then deserialize both plans."""
        assert self.bundle is not None
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
        for graph, (plan, _) in self.engine_files.items():
            refit_onnx = (self.bundle.graph_path(graph, self.precision)
                          if is_weight_stripped(self.engine_info[graph]) else None)
            self.runners[graph] = _EngineRunner(trt, self.cudart, self.runtime, plan,
                                                self.stream, self.cuda_graphs,
                                                refit_onnx, self.logger)
            check_engine_io(self.bundle, graph, self.runners[graph])
        self._refitted = set()
        if self.adapter is not None:
            self._refit(trt, self.adapter)

    def apply_adapter(self, adapter: Adapter | None) -> None:
        """Refit the refine plan in place with the adapter's tensors (cast to the plan's
        fp16, int8 scales re-computed: runtime.adapter.graph_overrides); `crnet build`
        builds the adaptable weights refittable one by one (REFIT_INDIVIDUAL). Weights an
        earlier adapter changed go back to the ONNX's values; None restores them all."""
        from crnet.runtime.adapter import check_adapter

        assert self.bundle is not None
        if adapter is not None:
            check_adapter(adapter, self.bundle)
        if self._active:
            import tensorrt as trt

            with self._on_device():
                self._refit(trt, adapter)
        self.adapter = adapter

    def _refit(self, trt: Any, adapter: Adapter | None) -> None:
        """Refit the refine engine with ``adapter`` (module docstring of runtime.adapter)."""
        from crnet.runtime.adapter import graph_overrides

        assert self.bundle is not None
        import onnx

        onnx_path = self.bundle.graph_path("refine", self.precision)
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        values = graph_overrides(graph, adapter.tensors) if adapter is not None else {}
        changed = set(values)
        for name in self._refitted - changed:
            values[name] = self._shipped_value(graph, name)
        if not values:
            return
        built = self.engine_info["refine"].get("builder") or {}  # the build's settings
        refittable = set(built.get("refittable_weights") or [])
        fixed = [] if built.get("refit") else sorted(set(values) - refittable)
        runner = self.runners["refine"]
        if fixed:
            raise BackendError(
                f"{runner.plan.name} was built without refittable adaptable weights (e.g. "
                f"{fixed[:3]}); rebuild it with `crnet build {self.bundle.root} --precision "
                f"{self.precision}` from a bundle exported with an adaptable record")
        refit_named_weights(trt, runner.engine, self.logger, values,
                            lambda name: self._shipped_value(graph, name), runner.plan.name)
        runner._drop_graph()  # a captured CUDA graph is captured again with the new weights
        self._refitted = changed

    def _shipped_value(self, graph: Any, name: str) -> np.ndarray:
        """The value of initializer ``name`` in the variant's refine ONNX (cached)."""
        if name not in self._shipped:
            from onnx import numpy_helper

            found = [item for item in graph.initializer if item.name == name]
            if not found:
                raise BackendError(f"TensorRT asks for weights {name}, which the refine "
                                   "ONNX does not hold; rebuild the plan with `crnet build`")
            self._shipped[name] = numpy_helper.to_array(found[0])
        return self._shipped[name]

    def _deactivate(self) -> None:
        try:
            with self._on_device():
                for runner in self.runners.values():
                    runner.close()
                if getattr(self, "stream", None) is not None and self.external_stream is None:
                    self.cudart.cudaStreamDestroy(self.stream)  # not an application's stream
        finally:
            self.runners = {}
            self.stream = None
            self.runtime = None
            if self.device_context is not None:
                self.device_context.release()
                self.device_context = None

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        self._require_active()
        with self._on_device():
            return self.runners["backbone"].run({"image": images})["feat"]

    def run_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                   support_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._require_active()
        with self._on_device():
            outputs = self.runners["refine"].run({"query_feat": query_feat,
                                                  "support_feat": support_feat,
                                                  "support_mask": support_mask})
        return outputs["query_logits"], outputs["support_logits"]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["cuda_graphs"] = self.cuda_graphs
        info["engines"] = {graph: {k: v for k, v in meta.items() if k != "profiles"}
                           for graph, meta in self.engine_info.items()}
        if self.adapter is not None:
            info["adapter"] = self.adapter.summary()
        return info
