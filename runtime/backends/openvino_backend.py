"""OpenVINO backend: the bundle's ONNX variants on an x86 CPU (or an Intel GPU/NPU).

OpenVINO reads the ONNX directly; the int8 variant's Q/DQ pairs become FakeQuantize and
run on int8 kernels (VNNI where the CPU has it). Three compiled models per Segmenter,
compiled once at activation: the backbone, the full refine graph, and the fused query
graph ``Segmenter.segment`` runs (the backbone chained in front of the refine graph cut
to ``query_logits``, as the onnxruntime backend builds it: runtime/graph_prune.py).

Inference precision is explicit. OpenVINO's CPU plugin defaults to bf16 on CPUs with
avx512_bf16 or AMX, which changes the fp32 variant's logits; this backend always sets
``INFERENCE_PRECISION_HINT``: ``f32`` unless ``inference_precision="bf16"`` is asked for,
and bf16 is refused (BackendError) on a device that does not list BF16 among its
capabilities. The int8 variant keeps its int8 layers either way; the hint sets the
precision of the layers between them.

Signal stack: OpenVINO's CPU plugin installs its own alternate signal stack on the thread
that compiles a model, and restores the one it found when that model is released,
unmapping its own. Models released in another order than the reverse of their creation
(two Segmenters closed first-created-first) leave the thread's registered signal stack
pointing at unmapped memory, and the next signal delivered there with ``SA_ONSTACK``
(every Python-level handler: Ctrl-C, torch's SIGCHLD handler) kills the process with
SIGSEGV. This backend therefore puts the thread's signal stack back after compiling and
after releasing (``keep_signal_stack``).

Threads: ``threads`` sets ``INFERENCE_NUM_THREADS`` (default: all cores); one stream,
the latency hint, and no CPU pinning, so that a busy core slows one worker instead of
stalling a pinned one (docs/backends.md, "Threads and sharing a machine").
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError, ModelSpec, bundle_graph_paths
from crnet.runtime.bundle import Bundle
from crnet.runtime.schema import GRAPH_TENSORS, check_graph_io, tensor_info

if TYPE_CHECKING:
    from crnet.runtime.adapter import Adapter

INFERENCE_PRECISIONS = ("f32", "bf16")
_QUERY_INPUTS = {"image", "support_feat", "support_mask"}


class _SignalStack(ctypes.Structure):
    """``stack_t`` of sigaltstack(2)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


def signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as (address, flags, size), or None where
    sigaltstack is not available (Windows)."""
    sigaltstack = _sigaltstack()
    current = _SignalStack()
    if sigaltstack is None or sigaltstack(None, ctypes.byref(current)) != 0:
        return None
    return int(current.ss_sp or 0), int(current.ss_flags), int(current.ss_size)


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Give the calling thread back the alternate signal stack it had before the block
    (module docstring: OpenVINO replaces it while compiling and releasing models)."""
    sigaltstack = _sigaltstack()
    saved = _SignalStack()
    if sigaltstack is None or sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        sigaltstack(ctypes.byref(saved), None)


def _sigaltstack() -> Any:
    if sys.platform == "win32":
        return None
    return getattr(ctypes.CDLL(None), "sigaltstack", None)


class OpenVinoBackend(Backend):
    """The bundle's graphs as OpenVINO compiled models (one infer request each).

    ``requests`` maps a graph ("backbone", "refine", "query") to (compiled model, request)."""

    name = "openvino"
    install_hint = ("Install it with `pip install 'crnet-deploy[openvino]'` "
                    "(or `pip install openvino`).")
    thread_safe = False  # one infer request per graph
    runs_on_cpu = True
    takes_threads = True
    optional_cpu_engine = True
    inference_precision_hints = ("f32", "bf16")

    @classmethod
    def usable_inference_precisions(cls) -> tuple[str, ...]:
        """f32, and bf16 where the CPU lists BF16."""
        return cls.inference_precision_hints if cls.supports_bf16() else ("f32",)

    @classmethod
    def runs_query_branch_only(cls, info: dict[str, Any]) -> bool:
        """Where the query graph was fused (``describe()["query_graph"]``)."""
        return bool(info.get("query_graph", {}).get("fused", False))

    def __init__(self, bundle: Bundle | None, precision: str = "fp32", *,
                 threads: int | None = None, inference_precision: str = "f32",
                 device: str = "CPU", fuse_query: bool = True) -> None:
        if bundle is None:
            raise BackendError("the openvino backend needs a bundle directory "
                               "(write one with `crnet export`)")
        super().__init__(bundle, precision)
        if threads is not None and threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        if inference_precision not in INFERENCE_PRECISIONS:
            raise BackendError(f"inference_precision must be one of {INFERENCE_PRECISIONS}, "
                               f"got {inference_precision!r}")
        self.threads = threads
        self.inference_precision = inference_precision
        self.device = device
        self.fuse_query = fuse_query
        self.spec = ModelSpec.from_manifest(bundle.manifest)
        self.paths = bundle_graph_paths(bundle, precision)
        self.requests: dict[str, Any] = {}
        self.query_graph: dict[str, Any] = {}
        self.adapter: Adapter | None = None
        self._deferred_refine: tuple[Any, Any, str] | None = None  # (core, model, name)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            import openvino
        except ImportError as error:
            return False, (f"openvino does not import ({error}); it is the "
                           "`crnet-deploy[openvino]` extra")
        return True, f"openvino {openvino.get_version()}"

    @staticmethod
    def supports_bf16(device: str = "CPU") -> bool:
        """Whether OpenVINO lists BF16 among ``device``'s optimisation capabilities."""
        import openvino as ov

        try:
            with keep_signal_stack():
                capabilities = ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
        except Exception:  # noqa: BLE001 - an unknown device has no capabilities
            return False
        return "BF16" in capabilities

    def config(self) -> dict[str, Any]:
        """The compile properties every graph gets (module docstring)."""
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.inference_precision,
                                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if self.device == "CPU":
            config["ENABLE_CPU_PINNING"] = False
            if self.threads is not None:
                config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _compile(self, core: Any, model: Any, what: str) -> Any:
        try:
            compiled = core.compile_model(model, self.device, self.config())
        except Exception as error:  # openvino raises RuntimeError with its own message
            raise BackendError(f"OpenVINO cannot compile {what} for {self.device} "
                               f"({self.precision}, {self.inference_precision}): "
                               f"{error}") from error
        return compiled, compiled.create_infer_request()

    def _activate(self) -> None:
        with keep_signal_stack():
            self._compile_all()

    def _compile_all(self, defer_refine: bool = False) -> None:
        """Compile the graphs; ``defer_refine`` (set by apply_adapter): the full refine
        graph is compiled when first run, unless the query graph cannot be fused."""
        import openvino as ov

        if self.inference_precision == "bf16" and not self.supports_bf16(self.device):
            raise BackendError(f"inference_precision='bf16' asked for, but OpenVINO's "
                               f"{self.device} device does not list BF16 (needs avx512_bf16 "
                               "or AMX); use 'f32'")
        core = ov.Core()
        requests = {}
        for graph, path in self.paths.items():
            if graph == "backbone" and "backbone" in self.requests:
                requests[graph] = self.requests[graph]  # an adapter changes no trunk weight
                continue
            try:
                model = (core.read_model(self._refine_onnx().SerializeToString(), b"")
                         if graph == "refine" and self.adapter is not None
                         else core.read_model(str(path)))
            except Exception as error:
                raise BackendError(f"OpenVINO cannot read {path.name}: {error}") from error
            check_model_io(self.bundle, graph, model, path)  # vs the manifest, pre-compile
            if graph == "refine" and defer_refine and self.fuse_query:
                self._deferred_refine = (core, model, path.name)
                continue
            requests[graph] = self._compile(core, model, path.name)
        self.requests = requests
        self.query_graph = {"fused": False, "reason": "fuse_query=False"}
        if self.fuse_query:
            self._activate_query(core)
        if "query" not in self.requests:
            self._request("refine")  # segment() runs the two graphs: compile it now

    def _activate_query(self, core: Any) -> None:
        """Compile the chained backbone + query refine (module docstring); on a graph this
        cannot cut or chain, ``query_graph`` says why and queries run the two graphs."""
        try:
            import onnx

            from crnet.runtime.backends.onnxruntime_backend import onnx_too_old_to_chain
            from crnet.runtime.graph_prune import chain_backbone, prune_to_outputs

            too_old = onnx_too_old_to_chain()
            if too_old:
                self.query_graph = {"fused": False, "reason": f"{too_old}; queries run the "
                                    "backbone and the full refine graph"}
                return
            refine_query = prune_to_outputs(self._refine_onnx(), ["query_logits"])
            query = chain_backbone(onnx.load(str(self.paths["backbone"])), refine_query)
            model = core.read_model(query.SerializeToString(), b"")
        except Exception as error:  # no onnx package, or graphs it cannot cut/merge
            self.query_graph = {"fused": False, "reason": f"{type(error).__name__}: {error}"}
            return
        names = {port.get_any_name() for port in model.inputs}
        if names != _QUERY_INPUTS:
            raise BackendError(f"the chained query graph has inputs {sorted(names)}, "
                               f"expected {sorted(_QUERY_INPUTS)}")
        self.requests["query"] = self._compile(
            core, model, f"the query graph chained from {self.paths['backbone'].name} and "
                         f"{self.paths['refine'].name}")
        self.query_graph = {"fused": True, "nodes": len(query.graph.node)}

    def _deactivate(self) -> None:
        with keep_signal_stack():  # releasing a model makes OpenVINO reset the stack too
            self.requests = {}
            self._deferred_refine = None
        self.query_graph = {}

    def _refine_onnx(self) -> Any:
        """The variant's refine ModelProto, with the adapter's tensors written into its
        initializers (cast to fp16, int8 scales re-computed: adapter.graph_overrides)."""
        import onnx

        model = onnx.load(str(self.paths["refine"]))
        if self.adapter is not None:
            from crnet.runtime.adapter import graph_overrides, set_initializers

            set_initializers(model.graph, graph_overrides(model.graph, self.adapter.tensors))
        return model

    def apply_adapter(self, adapter: Adapter | None) -> None:
        """Recompile the query graph from the in-memory ONNX with the adapter's tensors
        as its constants (the backbone's compiled model is kept; the full refine graph is
        compiled when first run); None restores the shipped weights. Constants keep
        OpenVINO's per-frame speed: int8 weights fed as inputs are quantized again on
        every call (docs/adapters.md has both figures). On an error the previous models
        stay."""
        from crnet.runtime.adapter import check_adapter

        if adapter is not None:
            assert self.bundle is not None
            check_adapter(adapter, self.bundle)
        previous = (self.adapter, self.requests, self.query_graph, self._deferred_refine)
        self.adapter = adapter
        if not self._active:
            return
        try:
            with keep_signal_stack():
                self._compile_all(defer_refine=True)
        except Exception:
            self.adapter, self.requests, self.query_graph, self._deferred_refine = previous
            raise

    def _request(self, graph: str) -> tuple[Any, Any]:
        """(compiled model, infer request) of ``graph``, compiling a deferred one now."""
        if graph not in self.requests and graph == "refine" and self._deferred_refine:
            core, model, name = self._deferred_refine
            with keep_signal_stack():
                self.requests["refine"] = self._compile(core, model, name)
            self._deferred_refine = None
        return self.requests[graph]

    def _run(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]
             ) -> list[np.ndarray]:
        self._require_active()
        compiled, request = self._request(graph)
        # share_inputs: OpenVINO reads the (contiguous float32) arrays in place instead of
        # copying them; infer() is synchronous, so they outlive the call
        result = request.infer({name: np.ascontiguousarray(array, dtype=np.float32)
                                for name, array in feeds.items()}, share_inputs=True)
        # compiled.output(name) finds a port by any of its tensor names (a cast graph's
        # output port may carry several).
        return [np.array(result[compiled.output(name)], dtype=np.float32) for name in outputs]

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        return self._run("backbone", {"image": images}, ["feat"])[0]

    def run_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                   support_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        query_logits, support_logits = self._run(
            "refine", {"query_feat": query_feat, "support_feat": support_feat,
                       "support_mask": support_mask}, ["query_logits", "support_logits"])
        return query_logits, support_logits

    def run_query(self, image: np.ndarray, support_feat: np.ndarray,
                  support_mask: np.ndarray) -> np.ndarray:
        self._require_active()
        if "query" not in self.requests:
            return super().run_query(image, support_feat, support_mask)
        return self._run("query", {"image": image, "support_feat": support_feat,
                                   "support_mask": support_mask}, ["query_logits"])[0]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"device": self.device, "inference_precision": self.inference_precision,
                     "threads": self.threads, "config": self.config()})
        root = self.bundle.root if self.bundle is not None else Path()
        info["files"] = {graph: path.relative_to(root).as_posix()
                         for graph, path in self.paths.items()}
        if self.query_graph:
            info["query_graph"] = self.query_graph
        if self.adapter is not None:
            info["adapter"] = self.adapter.summary()
        return info


def check_model_io(bundle: Bundle | None, graph: str, model: Any, path: Path) -> None:
    """BundleError unless an OpenVINO model of ``graph`` has the inputs and outputs (names,
    ranks, channels, feature size) the bundle's manifest promises (runtime.schema). A port
    is known by the name the runtime binds when that is one of its tensor names."""
    if bundle is None:
        return
    known = {name for kind in GRAPH_TENSORS[graph].values() for name in kind}

    def tensors(ports: Any) -> list[Any]:
        infos = []
        for port in ports:
            names = port.get_names()
            name = next((n for n in sorted(names) if n in known), port.get_any_name())
            shape = port.get_partial_shape()
            dims = None if shape.rank.is_dynamic else [
                dim.get_length() if dim.is_static else None for dim in shape]
            try:
                dtype: str | None = str(port.get_element_type().to_dtype())
            except Exception:  # noqa: BLE001 - a dynamic element type has no numpy dtype
                dtype = None
            infos.append(tensor_info(name, dims, dtype))
        return infos

    check_graph_io(bundle.manifest, graph, tensors(model.inputs), tensors(model.outputs),
                   str(path))
