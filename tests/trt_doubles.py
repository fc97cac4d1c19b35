"""Test doubles for TensorRT objects and cuda-python's runtime, standing in for GPU calls.

Each double is named as such and lists, in DOUBLES, the real class (or module) it mirrors;
tests/engines/test_trt_real_bindings.py checks every public method's parameter names against the
real bindings' signatures (tests/trt_bindings.py). A test that passes on a double proves the
project's control flow, never that anything runs on a GPU.
"""

from __future__ import annotations

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
    """trt.IExecutionContext whose execute_async_v3 answers ``enqueue_ok``."""

    def __init__(self, enqueue_ok: bool = True) -> None:
        self.enqueue_ok = enqueue_ok
        self.enqueued: list[int] = []

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.enqueued.append(stream_handle)
        return self.enqueue_ok


class _Enum:
    def __init__(self, **members: Any) -> None:
        self.__dict__.update(members)


class FakeCudartDouble:
    """cuda.bindings.runtime for stream capture: records graphs created and destroyed."""

    cudaError_t = _Enum(cudaSuccess=0)
    cudaStreamCaptureMode = _Enum(cudaStreamCaptureModeThreadLocal=1)
    cudaStreamCaptureStatus = _Enum(cudaStreamCaptureStatusNone=0,
                                    cudaStreamCaptureStatusActive=1)

    def __init__(self) -> None:
        self.capturing = False
        self.graphs_created: list[str] = []
        self.graphs_destroyed: list[str] = []
        self.execs_created: list[str] = []

    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[int]:
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


# double -> (root, name) of what it mirrors: ("trt", class name) or ("cudart", None)
DOUBLES = {
    FakeTimingCacheDouble: ("trt", "ITimingCache"),
    FakeBuilderConfigDouble: ("trt", "IBuilderConfig"),
    FakeNetworkDouble: ("trt", "INetworkDefinition"),
    FakeBuilderDouble: ("trt", "Builder"),
    FakeExecutionContextDouble: ("trt", "IExecutionContext"),
    FakeCudartDouble: ("cudart", None),
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
