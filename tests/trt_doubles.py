"""Test doubles for TensorRT objects and cuda-python's runtime, standing in for GPU calls.

Each double is named as such and lists, in DOUBLES, the real class (or module) it mirrors;
tests/engines/test_trt_real_bindings.py checks every public method's parameter names against
the real bindings' signatures (tests/trt_bindings.py), except the double's own ``helpers``.
A test that passes on a double proves the project's control flow, never that anything runs
on a GPU.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any


class FakeTimingCacheDouble:
    """trt.ITimingCache."""

    def __init__(self, data: bytes = b"cache") -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class FakeBuilderConfigDouble:
    """trt.IBuilderConfig: records flags; set_timing_cache answers ``accept_cache``."""

    def __init__(self, accept_cache: bool = True) -> None:
        self.accept_cache = accept_cache
        self.flags: list[Any] = []
        self.pools: dict[Any, int] = {}
        self.timing_cache: FakeTimingCacheDouble | None = None
        self.set_timing_cache_calls: list[tuple[bytes, bool]] = []
        self.profiling_verbosity: Any = None
        self.builder_optimization_level: Any = None
        self.hardware_compatibility_level: Any = None
        self.profiles: list[Any] = []

    def set_flag(self, flag: Any) -> None:
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def create_timing_cache(self, serialized_timing_cache: bytes) -> FakeTimingCacheDouble:
        return FakeTimingCacheDouble(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: FakeTimingCacheDouble, ignore_mismatch: bool) -> bool:
        self.set_timing_cache_calls.append((cache.data, ignore_mismatch))
        if not self.accept_cache and cache.data:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCacheDouble | None:
        return self.timing_cache

    def add_optimization_profile(self, profile: Any) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeNetworkDouble:
    """trt.INetworkDefinition with no inputs."""

    num_inputs = 0

    def get_input(self, index: int) -> Any:
        raise IndexError(index)


class FakeBuilderDouble:
    """trt.Builder handing out FakeBuilderConfigDouble."""

    def __init__(self, accept_cache: bool = True) -> None:
        self.accept_cache = accept_cache

    def create_builder_config(self) -> FakeBuilderConfigDouble:
        return FakeBuilderConfigDouble(self.accept_cache)

    def create_optimization_profile(self) -> Any:
        raise NotImplementedError("no profile in this double")


class FakeExecutionContextDouble:
    """trt.IExecutionContext whose execute_async_v3 answers ``enqueue_ok``. Input shapes
    and tensor addresses are recorded as set; each output's shape is its input's with the
    channel axis from ``output_channels`` (name -> (input name, channels)); every enqueue
    records the shapes and addresses it ran with, and, given a ``cudart`` double, the CUDA
    context current on the calling thread."""

    def __init__(self, enqueue_ok: bool = True,
                 output_channels: dict[str, tuple[str, int]] | None = None,
                 cudart: FakeCudartDouble | None = None) -> None:
        self.enqueue_ok = enqueue_ok
        self.enqueued: list[int] = []
        self.output_channels = output_channels or {}
        self.cudart = cudart
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs: list[dict[str, Any]] = []

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        source, channels = self.output_channels[name]
        return (self.shapes[source][0], channels, *self.shapes[source][2:])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.enqueued.append(stream_handle)
        context = None if self.cudart is None else self.cudart.current_context()
        self.runs.append({"shapes": dict(self.shapes), "addresses": dict(self.addresses),
                          "context": context})
        return self.enqueue_ok


class _Enum:
    def __init__(self, **members: Any) -> None:
        self.__dict__.update(members)


class FakeCudartDouble:
    """cuda.bindings.runtime: stream capture (records graphs created and destroyed; a
    stream already capturing refuses a second begin, as CUDA does), and memory that is real
    host memory underneath (so copies move bytes). ``fail_malloc_at`` makes that cudaMalloc
    call (counting from 1) fail; with a ``driver`` double, every call records the context
    current on the calling thread."""

    cudaError_t = _Enum(cudaSuccess=0, cudaErrorMemoryAllocation=2,
                        cudaErrorStreamCaptureUnsupported=900,
                        cudaErrorIllegalState=401)
    cudaStreamCaptureMode = _Enum(cudaStreamCaptureModeThreadLocal=1)
    cudaStreamCaptureStatus = _Enum(cudaStreamCaptureStatusNone=0,
                                    cudaStreamCaptureStatusActive=1)
    cudaMemcpyKind = _Enum(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    helpers = ("current_context", "size_of")  # the double's own, not cudart's

    def __init__(self, driver: FakeCudaDriverDouble | None = None,
                 fail_malloc_at: int | None = None) -> None:
        self.driver = driver
        self.fail_malloc_at = fail_malloc_at
        self.capturing = False
        self.graphs_created: list[str] = []
        self.graphs_destroyed: list[str] = []
        self.execs_created: list[str] = []
        self.begin_calls = 0
        self.mallocs = 0
        self.memory: dict[int, Any] = {}  # pointer -> the ctypes buffer behind it
        self.contexts: list[Any] = []  # the current context at every memory call

    def current_context(self) -> Any:
        return None if self.driver is None else self.driver.current()

    def _buffer(self, size: int) -> int:
        buffer = (ctypes.c_byte * max(size, 1))()
        pointer = ctypes.addressof(buffer)
        self.memory[pointer] = buffer
        self.contexts.append(self.current_context())
        return pointer

    def size_of(self, pointer: int) -> int:
        return ctypes.sizeof(self.memory[pointer])

    def cudaMalloc(self, size: int) -> tuple[int, int] | tuple[int]:
        self.mallocs += 1
        if self.mallocs == self.fail_malloc_at:
            return (self.cudaError_t.cudaErrorMemoryAllocation,)
        return 0, self._buffer(size)

    def cudaMallocHost(self, size: int) -> tuple[int, int]:
        return 0, self._buffer(size)

    def cudaFree(self, devPtr: int) -> tuple[int]:  # noqa: N803 - the real name
        self.memory.pop(devPtr)
        return (0,)

    def cudaFreeHost(self, ptr: int) -> tuple[int]:
        self.memory.pop(ptr)
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any,
                        stream: Any) -> tuple[int]:
        self.contexts.append(self.current_context())
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[int]:
        return (0,)

    def cudaSetDevice(self, device: int) -> tuple[int]:
        """As CUDA does: the device's primary context replaces the calling thread's
        current one (the top of its stack)."""
        if self.driver is not None:
            self.driver.replace_current(f"primary-context-{device}")
        return (0,)

    def cudaGraphLaunch(self, graphExec: Any, stream: Any) -> tuple[int]:  # noqa: N803
        return (0,)

    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[int]:
        self.begin_calls += 1
        if self.capturing:
            return (self.cudaError_t.cudaErrorIllegalState,)
        self.capturing = True
        return (0,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[int, str]:
        self.capturing = False
        graph = f"graph{len(self.graphs_created)}"
        self.graphs_created.append(graph)
        return 0, graph

    def cudaStreamIsCapturing(self, stream: Any) -> tuple[int, int]:
        return 0, int(self.capturing)

    def cudaGraphInstantiateWithFlags(self, graph: Any, flags: Any) -> tuple[int, str]:
        self.execs_created.append(f"exec-{graph}")
        return 0, f"exec-{graph}"

    def cudaGraphDestroy(self, graph: Any) -> tuple[int]:
        self.graphs_destroyed.append(graph)
        return (0,)

    def cudaGraphExecDestroy(self, graphExec: Any) -> tuple[int]:  # noqa: N803 - real name
        return (0,)


class FakeCudaDriverDouble:
    """cuda.bindings.driver: one primary context per device (``device_count`` of them) and
    a context stack per thread, as cuCtxPushCurrent/cuCtxPopCurrent keep it."""

    CUresult = _Enum(CUDA_SUCCESS=0, CUDA_ERROR_INVALID_DEVICE=101,
                     CUDA_ERROR_INVALID_CONTEXT=201)
    helpers = ("current", "replace_current")  # the double's own, not the driver API's

    def __init__(self, device_count: int = 2) -> None:
        self.device_count = device_count
        self.retained: dict[int, int] = {}
        self._threads = threading.local()

    def _stack(self) -> list[Any]:
        if not hasattr(self._threads, "stack"):
            self._threads.stack = []
        return self._threads.stack  # type: ignore[no-any-return]

    def current(self) -> Any:
        """The context current on the calling thread (None: none)."""
        stack = self._stack()
        return stack[-1] if stack else None

    def replace_current(self, context: Any) -> None:
        """What cudaSetDevice does to the calling thread's stack."""
        stack = self._stack()
        if stack:
            stack[-1] = context
        else:
            stack.append(context)

    def cuInit(self, Flags: int) -> tuple[int]:  # noqa: N802, N803 - the real names
        return (0,)

    def cuDeviceGet(self, ordinal: int) -> tuple[int, int] | tuple[int]:  # noqa: N802
        if not 0 <= ordinal < self.device_count:
            return (self.CUresult.CUDA_ERROR_INVALID_DEVICE,)
        return 0, ordinal

    def cuDevicePrimaryCtxRetain(self, dev: int) -> tuple[int, str]:  # noqa: N802
        self.retained[dev] = self.retained.get(dev, 0) + 1
        return 0, f"primary-context-{dev}"

    def cuDevicePrimaryCtxRelease(self, dev: int) -> tuple[int]:  # noqa: N802
        self.retained[dev] -= 1
        return (0,)

    def cuCtxPushCurrent(self, ctx: Any) -> tuple[int]:  # noqa: N802
        self._stack().append(ctx)
        return (0,)

    def cuCtxPopCurrent(self) -> tuple[int, Any] | tuple[int]:  # noqa: N802
        stack = self._stack()
        if not stack:
            return (self.CUresult.CUDA_ERROR_INVALID_CONTEXT,)
        return 0, stack.pop()

    def cuCtxGetCurrent(self) -> tuple[int, Any]:  # noqa: N802
        return 0, self.current()


# double -> (root, name) of what it mirrors: ("trt", class name) or ("cudart", None)
DOUBLES = {
    FakeTimingCacheDouble: ("trt", "ITimingCache"),
    FakeBuilderConfigDouble: ("trt", "IBuilderConfig"),
    FakeNetworkDouble: ("trt", "INetworkDefinition"),
    FakeBuilderDouble: ("trt", "Builder"),
    FakeExecutionContextDouble: ("trt", "IExecutionContext"),
    FakeCudartDouble: ("cudart", None),
    FakeCudaDriverDouble: ("cudadrv", None),
}


class FakeRefitterDouble:
    """trt.Refitter."""

    def __init__(self, module: FakeTensorRTModuleDouble) -> None:
        self.module = module

    def refit_cuda_engine(self) -> bool:
        self.module.engines_refit += 1
        return self.module.refit_ok

    def get_missing_weights(self) -> list[str]:
        return [] if self.module.refit_ok else ["conv1.weight"]


class FakeOnnxParserRefitterDouble:
    """trt.OnnxParserRefitter."""

    def __init__(self, module: FakeTensorRTModuleDouble) -> None:
        self.module = module

    def refit_from_file(self, model: str) -> bool:
        self.module.refitted.append(model)
        return self.module.refit_ok


class FakeTensorRTModuleDouble:
    """The part of the tensorrt module refit_from_onnx uses: Refitter, OnnxParserRefitter."""

    def __init__(self, refit_ok: bool = True) -> None:
        self.refit_ok = refit_ok
        self.refitted: list[str] = []
        self.engines_refit = 0

    def Refitter(self, engine: Any, logger: Any) -> FakeRefitterDouble:  # noqa: N802
        return FakeRefitterDouble(self)

    def OnnxParserRefitter(self, refitter: Any, logger: Any  # noqa: N802
                           ) -> FakeOnnxParserRefitterDouble:
        return FakeOnnxParserRefitterDouble(self)


DOUBLES.update({
    FakeRefitterDouble: ("trt", "Refitter"),
    FakeOnnxParserRefitterDouble: ("trt", "OnnxParserRefitter"),
})
