"""ONNX Runtime backend: runs the bundle's ONNX graphs at the requested precision.

Execution providers, unless ``providers`` is given: TensorRT EP and CUDA EP first when
onnxruntime-gpu offers them (the TensorRT EP only where the libnvinfer it was built
against loads: onnxruntime-gpu lists it regardless), then the CPU EP. The TensorRT EP
caches its engines inside the bundle, in ``engines/ort-trt-cache/``, with optimisation
profiles covering the bundle's shot range. ``threads`` sets the intra-op thread count
(ORT's default: one per physical core). ORT sessions are thread-safe for ``run``, so
this backend is too.

A cached-support query (``run_query``, what ``Segmenter.segment`` calls) runs one
session: the backbone chained in front of the refine graph cut down to ``query_logits``
(runtime/graph_prune.py). The cut drops the support branch's condition and refinement
steps, about half of the refine graph's work. Both are built in memory at activation
from the very files the backbone and refine sessions load (plain ONNX or the ``crnet
build`` CPU build). ``run_query_refine`` runs the cut graph alone. Not with the TensorRT
EP (its engine cache is keyed on the bundle's files), nor where the ``onnx`` package does
not import or a graph cannot be cut or chained; there the full graphs run and
``describe()["query_refine"]`` says why.

int8 on the CPU provider: the bundle's symmetric int8 activations are moved to uint8
(zero point 128; exactly the same values) in memory before the sessions are created, so
ONNX Runtime's x86 kernels run U8S8 instead of S8S8 (runtime/qdq_u8.py): the faster
kernels on x86, with identical logits (docs/benchmarks.md has the figures).
``uint8_activations=False`` keeps the graphs as they are; ``describe()["int8_activations"]``
says which ran.

Spinning: ORT's intra-op workers busy-wait for work instead of sleeping. Inside a run that
keeps the hand-offs between operators fast; between runs it burns the cores other work
needs (torch, OpenVINO or another ORT session in the same process, other processes on a
shared machine, where an evaluation that alternates backends slows down markedly). So
every session spins only while a run is active: ``session.force_spinning_stop`` stops the
workers spinning the moment the run returns (docs/backends.md, "Threads and sharing a
machine"). That keeps almost all of the speed of spinning throughout, and far more than no
spinning at all (docs/benchmarks.md). ``spinning=False`` turns spinning off
(``query_spinning`` for the fused query session alone); ``spin_between_runs=True`` keeps
ORT's default of spinning after a run as well, for a machine the application has to
itself. ``dynamic_block_base`` sets ORT's
``session.dynamic_block_base`` (0: ORT's default static split).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError, ModelSpec, bundle_graph_paths
from crnet.runtime.bundle import Bundle
from crnet.runtime.layout import ORT_TRT_CACHE_DIR
from crnet.runtime.ort_build import ort_build_path
from crnet.runtime.schema import check_graph_io, tensor_info

if TYPE_CHECKING:
    from crnet.runtime.adapter import Adapter

ORT_TRT_CACHE = Path(ORT_TRT_CACHE_DIR)
CHAIN_MIN_ONNX = (1, 19)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


# The TensorRT execution provider's library names the libnvinfer it needs, with its major
# version (libnvinfer.so.10 on Linux, nvinfer_10.dll on Windows).
_NVINFER_NAME = rb"(libnvinfer\.so\.\d+|nvinfer_\d+\.dll)"
_TENSORRT_PROVIDER_LIBRARIES = ("libonnxruntime_providers_tensorrt.so",
                                "onnxruntime_providers_tensorrt.dll")


def tensorrt_provider_library(onnxruntime_file: str) -> Path | None:
    """The TensorRT execution provider's shared library of the onnxruntime package whose
    ``__file__`` is given; None where the package has none (the CPU build)."""
    capi = Path(onnxruntime_file).resolve().parent / "capi"
    found = [capi / name for name in _TENSORRT_PROVIDER_LIBRARIES if (capi / name).is_file()]
    return found[0] if found else None


@functools.lru_cache(maxsize=4)
def _nvinfer_name(provider_library: Path) -> str | None:
    """The libnvinfer file name the provider library links (read once per process)."""
    import re

    with open(provider_library, "rb") as handle:
        found = re.search(_NVINFER_NAME, handle.read())
    return None if found is None else found.group(0).decode()


def tensorrt_ep_problem(provider_library: Path | None,
                        load: Callable[[str], Any] | None = None) -> str | None:
    """Why ONNX Runtime's TensorRT execution provider cannot run here (None: it can).

    onnxruntime-gpu lists the provider whether or not TensorRT is installed; a session that
    asks for it where libnvinfer does not load fails or falls back with a logged error. So
    the libnvinfer named in the provider's library, of that major version, must load
    (``load``: ctypes.CDLL, through the dynamic loader's own search)."""
    import ctypes

    if provider_library is None:
        return "this onnxruntime has no TensorRT provider library"
    try:
        name = _nvinfer_name(provider_library)
    except OSError as error:
        return f"cannot read {provider_library}: {error}"
    if name is None:
        return f"{provider_library.name} names no libnvinfer"
    try:
        (load or ctypes.CDLL)(name)
    except OSError as error:
        return (f"{name} (TensorRT, the major version this onnxruntime was built with) does "
                f"not load: {error}; install that TensorRT or leave the provider out")
    return None


class OnnxRuntimeBackend(Backend):
    """Both graphs as onnxruntime.InferenceSession objects."""

    name = "onnxruntime"
    install_hint = ("Install it with `pip install onnxruntime` (CPU) or "
                    "`pip install onnxruntime-gpu` (CUDA / TensorRT execution providers).")
    thread_safe = True
    runs_on_cpu = True
    takes_threads = True

    def __init__(self, bundle: Bundle | None, precision: str = "fp32", *,
                 threads: int | None = None, providers: list[Any] | None = None,
                 use_ort_build: bool = True, spinning: bool = True,
                 query_spinning: bool | None = None, spin_between_runs: bool = False,
                 dynamic_block_base: int = 0, uint8_activations: bool = True) -> None:
        if bundle is None:
            raise BackendError("the onnxruntime backend needs a bundle directory "
                               "(write one with `crnet export`)")
        super().__init__(bundle, precision)
        if threads is not None and threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.spinning = spinning
        self.query_spinning = spinning if query_spinning is None else query_spinning
        self.spin_between_runs = spin_between_runs
        if dynamic_block_base < 0:
            raise BackendError(f"dynamic_block_base must be >= 0, got {dynamic_block_base}")
        self.dynamic_block_base = dynamic_block_base
        self.uint8_activations = uint8_activations
        self.activations: dict[str, Any] = {}
        self.requested_providers = providers
        self.skipped_providers: dict[str, str] = {}  # provider -> why it cannot run here
        self.spec = ModelSpec.from_manifest(bundle.manifest)
        self.paths = bundle_graph_paths(bundle, precision)
        self.sessions: dict[str, Any] = {}
        self.use_ort_build = use_ort_build
        self.loaded_paths: dict[str, Path] = {}
        self.query_refine: dict[str, Any] = {}
        self.adapter: Adapter | None = None
        self._deferred: dict[str, Any] = {}  # graph -> ModelProto whose session waits
        self._deferred_lock = threading.Lock()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime
        except ImportError as error:
            return False, f"onnxruntime does not import ({error})"
        return True, (f"onnxruntime {onnxruntime.__version__}, providers "
                      f"{onnxruntime.get_available_providers()}")

    def providers(self) -> list[Any]:
        """The execution providers the sessions are created with (see module docstring)."""
        import onnxruntime as ort

        if self.requested_providers is not None:
            return list(self.requested_providers)
        available = ort.get_available_providers()
        chosen: list[Any] = []
        self.skipped_providers = {}
        if "TensorrtExecutionProvider" in available:
            # listed by every onnxruntime-gpu build, loadable only where libnvinfer is
            problem = tensorrt_ep_problem(tensorrt_provider_library(ort.__file__))
            if problem is None:
                chosen.append(("TensorrtExecutionProvider", self._tensorrt_ep_options()))
            else:
                self.skipped_providers["TensorrtExecutionProvider"] = problem
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
        chosen.append("CPUExecutionProvider")
        return chosen

    def _tensorrt_ep_options(self) -> dict[str, Any]:
        assert self.bundle is not None
        spec = self.spec
        channels, (height, width) = spec.feature_channels, spec.feature_size
        image = f"3x{spec.input_size[0]}x{spec.input_size[1]}"

        def shapes(shots: int) -> str:
            return ",".join([
                f"image:{shots}x{image}", f"query_feat:1x{channels}x{height}x{width}",
                f"support_feat:{shots}x{channels}x{height}x{width}",
                f"support_mask:{shots}x1x{height}x{width}",
            ])

        options: dict[str, Any] = {
            "trt_profile_min_shapes": shapes(spec.min_shots),
            "trt_profile_opt_shapes": shapes(1),
            "trt_profile_max_shapes": shapes(spec.max_shots),
        }
        cache = self.bundle.root / ORT_TRT_CACHE
        if self.adapter is not None:
            return options  # the cache is keyed on the bundle's files, not on the adapter
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            return options  # read-only bundle: run without an engine cache
        options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)})
        return options

    def model_path(self, graph: str, providers: list[Any]) -> Path:
        """The ONNX to load: the bundle's CPU build (`crnet build`) when it is current and
        only the CPU provider runs, else the variant's graph."""
        import onnxruntime as ort

        adapted = self.adapter is not None and graph == "refine"  # the build folds weights
        if self.use_ort_build and providers == ["CPUExecutionProvider"] and not adapted:
            built = ort_build_path(self.bundle, graph, self.precision,
                                   onnxruntime_version=ort.__version__)
            if built is not None:
                return built
        return self.paths[graph]

    def _options(self, spinning: bool) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spinning else "0")
        if spinning and not self.spin_between_runs:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        if self.dynamic_block_base:
            options.add_session_config_entry("session.dynamic_block_base",
                                             str(self.dynamic_block_base))
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        return options

    def _activate(self) -> None:
        import onnxruntime as ort

        options = self._options(self.spinning)
        providers = self.providers()
        self._deferred = {}
        self.loaded_paths = {graph: self.model_path(graph, providers) for graph in self.paths}
        self._activations_plan(providers)
        try:
            self.sessions = {graph: ort.InferenceSession(self._source(path), options,
                                                         providers=providers)
                             for graph, path in self.loaded_paths.items()}
        except Exception as error:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime cannot load {self.precision} graphs of "
                               f"{self.bundle.root if self.bundle else '?'}: {error}") from error
        self._input_types = {
            graph: {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
            for graph, session in self.sessions.items()
        }
        for graph, session in self.sessions.items():  # names, ranks, sizes vs the manifest
            check_session_io(self.bundle, graph, session, self.loaded_paths[graph])
        expected = {"backbone": {"image"}, "refine": {"query_feat", "support_feat",
                                                      "support_mask"}}
        for graph, names in expected.items():
            _check_inputs(self.sessions[graph], names, self.paths[graph].name)

        self._activate_query_refine(options, providers)

    def _activate_query_refine(self, options: Any, providers: list[Any]) -> None:
        """Create the query-only sessions (module docstring); ``query_refine`` records what
        was built, or why the full refine graph runs instead."""
        import onnxruntime as ort

        names = [provider if isinstance(provider, str) else provider[0]
                 for provider in providers]
        if "TensorrtExecutionProvider" in names:
            self.query_refine = {"pruned": False, "reason": "TensorRT EP: full refine graph"}
            return
        try:
            from crnet.runtime.graph_prune import prune_to_outputs

            refine = self._load_onnx(self.loaded_paths["refine"])
            refine_query = prune_to_outputs(refine, ["query_logits"])
            if _convolutions(refine_query) == _convolutions(refine):
                raise ValueError("query_logits needs every convolution of the refine graph "
                                 "(a bundle exported before the query and support branches "
                                 "were split); re-export it to run the query branch alone")
            session = ort.InferenceSession(refine_query.SerializeToString(), options,
                                           providers=providers)
            _check_inputs(session, {"query_feat", "support_feat", "support_mask"},
                          "the refine graph cut to query_logits")
        except Exception as error:  # no onnx package, or a graph this cannot prune
            self.query_refine = {"pruned": False, "reason": f"{type(error).__name__}: {error}"}
            return
        self.sessions["refine_query"] = session
        self.query_refine = {"pruned": True, "nodes": len(refine_query.graph.node),
                             "of_nodes": len(refine.graph.node)}
        too_old = onnx_too_old_to_chain()
        if too_old:
            self.query_refine["chained"] = (f"no ({too_old}; the backbone and the query "
                                            "refine graph run as two sessions)")
            return
        try:
            session = self._chained_query_session(refine_query, providers)
        except Exception as error:  # graphs onnx.compose cannot merge
            self.query_refine["chained"] = f"no ({type(error).__name__}: {error})"
        else:
            self.sessions["query"] = session
            self.query_refine["chained"] = "yes"

    def _chained_query_session(self, refine_query: Any, providers: list[Any]) -> Any:
        """One session of the backbone chained into ``refine_query`` (the query branch)."""
        import onnxruntime as ort

        from crnet.runtime.graph_prune import chain_backbone

        query = chain_backbone(self._load_onnx(self.loaded_paths["backbone"]), refine_query)
        session = ort.InferenceSession(query.SerializeToString(),
                                       self._options(spinning=self.query_spinning),
                                       providers=providers)
        _check_inputs(session, {"image", "support_feat", "support_mask"},
                      "the chained query graph")
        return session

    def _activations_plan(self, providers: list[Any]) -> None:
        """Decide whether int8 graphs run with uint8 activations (runtime/qdq_u8.py):
        int8 precision, CPU provider only, ``uint8_activations``, and onnx importable."""
        names = [provider if isinstance(provider, str) else provider[0]
                 for provider in providers]
        if self.precision != "int8":
            self.activations = {}
            return
        if not self.uint8_activations:
            reason = "uint8_activations=False"
        elif names != ["CPUExecutionProvider"]:
            reason = f"providers {names}: the bundle's symmetric int8 as it is"
        else:
            try:
                import onnx  # noqa: F401
            except ImportError as error:
                reason = f"onnx does not import ({error})"
            else:
                self.activations = {"type": "uint8", "rewritten": {}}
                return
        self.activations = {"type": "int8", "reason": reason}

    def _load_onnx(self, path: Path) -> Any:
        """onnx.load of ``path``, with uint8 activations when the plan says so, and the
        adapter's tensors written into the refine graph's initializers."""
        import onnx

        model = onnx.load(str(path))
        if self._adapts(path):
            from crnet.runtime.adapter import graph_overrides, set_initializers

            assert self.adapter is not None
            set_initializers(model.graph, graph_overrides(model.graph, self.adapter.tensors))
        if self.activations.get("type") != "uint8":
            return model
        from crnet.runtime.qdq_u8 import activations_to_uint8

        model, count = activations_to_uint8(model)
        self.activations["rewritten"][path.name] = count
        return model

    def _adapts(self, path: Path) -> bool:
        """Whether ``path`` is the refine graph loaded under an adapter."""
        return self.adapter is not None and path == self.loaded_paths.get("refine")

    def _source(self, path: Path) -> str | bytes:
        """What InferenceSession loads for ``path``: its file name, or the serialised model
        with uint8 activations or an adapter's tensors."""
        if self.activations.get("type") != "uint8" and not self._adapts(path):
            return str(path)
        return self._load_onnx(path).SerializeToString()

    def _deactivate(self) -> None:
        self.sessions = {}
        self.query_refine = {}
        self._deferred = {}

    def apply_adapter(self, adapter: Adapter | None) -> None:
        """New sessions from the in-memory refine graph with ``adapter``'s tensors written
        into its initializers (cast to fp16 in fp16 graphs, int8 scales re-computed per
        channel: runtime.adapter.graph_overrides); the query-only and chained graphs are
        cut from that graph. Not ``SessionOptions.add_initializer``: ORT's NCHWc layout
        optimiser (ORT_ENABLE_ALL on x86) reorders the shipped weights and ignores the
        override (docs/adapters.md). The refine graph loads from the variant's ONNX
        while an adapter is set, never from the `crnet build` CPU build, whose optimiser
        folded the weights. None restores the shipped weights. On an error the previous
        sessions stay."""
        from crnet.runtime.adapter import check_adapter

        if adapter is not None:
            assert self.bundle is not None
            check_adapter(adapter, self.bundle)
        previous = (self.adapter, self.sessions, self.query_refine, self.loaded_paths,
                    self._deferred)
        self.adapter = adapter
        if not self._active:
            return
        try:
            if not self._activate_adapted():
                self._deferred = {}
                self._activate()
        except Exception:
            (self.adapter, self.sessions, self.query_refine, self.loaded_paths,
             self._deferred) = previous
            raise

    def _activate_adapted(self) -> bool:
        """Sessions for the current adapter, the quick way: the backbone's session stays,
        the chained query graph (what segment() runs) gets its session now, and the full
        and query-only refine graphs get theirs when first run. False where no chained
        query graph runs (the TensorRT EP, no onnx, a graph that cannot be cut or
        chained): every session is then created again."""
        if self.query_refine.get("chained") != "yes":
            return False

        from crnet.runtime.graph_prune import prune_to_outputs

        providers = self.providers()
        self.loaded_paths = {**self.loaded_paths,
                             "refine": self.model_path("refine", providers)}
        refine = self._load_onnx(self.loaded_paths["refine"])
        refine_query = prune_to_outputs(refine, ["query_logits"])
        session = self._chained_query_session(refine_query, providers)
        self.sessions = {"backbone": self.sessions["backbone"], "query": session}
        self._deferred = {"refine": refine, "refine_query": refine_query}
        return True

    def _session(self, graph: str) -> Any:
        """The session of ``graph``, created now if apply_adapter deferred it; None for a
        graph without one (no query-only refine graph)."""
        session = self.sessions.get(graph)
        if session is None and graph in self._deferred:
            import onnxruntime as ort

            with self._deferred_lock:
                session = self.sessions.get(graph)
                if session is None:
                    session = ort.InferenceSession(
                        self._deferred[graph].SerializeToString(),
                        self._options(self.spinning), providers=self.providers())
                    self.sessions[graph] = session
        return session

    def _feeds(self, graph: str, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        types = self._input_types[graph]
        return {name: np.ascontiguousarray(array, dtype=types[name])
                for name, array in arrays.items()}

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        self._require_active()
        (feat,) = _run(self.sessions["backbone"], ["feat"],
                       self._feeds("backbone", image=images), "backbone")
        return np.asarray(feat, dtype=np.float32)

    def run_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                   support_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._require_active()
        query_logits, support_logits = _run(
            self._session("refine"), ["query_logits", "support_logits"],
            self._feeds("refine", query_feat=query_feat, support_feat=support_feat,
                        support_mask=support_mask), "refine")
        return (np.asarray(query_logits, dtype=np.float32),
                np.asarray(support_logits, dtype=np.float32))

    def run_query_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                         support_mask: np.ndarray) -> np.ndarray:
        self._require_active()
        session = self._session("refine_query")
        if session is None:
            return super().run_query_refine(query_feat, support_feat, support_mask)
        (query_logits,) = _run(
            session, ["query_logits"],
            self._feeds("refine", query_feat=query_feat, support_feat=support_feat,
                        support_mask=support_mask), "refine (query branch)")
        return np.asarray(query_logits, dtype=np.float32)

    def run_query(self, image: np.ndarray, support_feat: np.ndarray,
                  support_mask: np.ndarray) -> np.ndarray:
        self._require_active()
        if "query" not in self.sessions:
            return super().run_query(image, support_feat, support_mask)
        feeds = {**self._feeds("backbone", image=image),
                 **self._feeds("refine", support_feat=support_feat, support_mask=support_mask)}
        (query_logits,) = _run(self.sessions["query"], ["query_logits"], feeds, "query")
        return np.asarray(query_logits, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["threads"] = self.threads
        when = "between runs too" if self.spin_between_runs else "during runs"
        info["spinning"] = {
            "query": when if "query" in self.sessions and self.query_spinning else "no",
            "backbone and refine": when if self.spinning else "no"}
        info["dynamic_block_base"] = self.dynamic_block_base
        if self.sessions:
            info["providers"] = self.sessions["backbone"].get_providers()
        if self.skipped_providers:
            info["skipped_providers"] = dict(self.skipped_providers)
        loaded = self.loaded_paths or self.paths
        root = self.bundle.root if self.bundle is not None else None
        info["files"] = {graph: (path.relative_to(root).as_posix() if root else path.name)
                         for graph, path in loaded.items()}
        if self.query_refine:
            info["query_refine"] = self.query_refine
        if self.activations:
            info["int8_activations"] = self.activations
        if self.adapter is not None:
            info["adapter"] = self.adapter.summary()
        return info


def _run(session: Any, outputs: list[str], feeds: dict[str, np.ndarray], what: str
         ) -> list[Any]:
    """session.run, with ONNX Runtime's own errors (InvalidArgument for a shape outside the
    graph's, Fail, ...) raised as BackendError naming the inputs' shapes."""
    try:
        return session.run(outputs, feeds)
    except Exception as error:  # onnxruntime raises its own exception types
        shapes = ", ".join(f"{name} {list(array.shape)} {array.dtype}"
                           for name, array in feeds.items())
        raise BackendError(f"onnxruntime could not run the {what} graph on {shapes}: "
                           f"{str(error).strip()}") from error


def check_session_io(bundle: Bundle | None, graph: str, session: Any, path: Path) -> None:
    """BundleError unless a session of ``graph`` has the inputs and outputs (names, ranks,
    channels, feature size) the bundle's manifest promises (runtime.schema)."""
    if bundle is None:
        return

    def tensors(values: Any) -> list[Any]:
        return [tensor_info(value.name, value.shape, value.type) for value in values]

    check_graph_io(bundle.manifest, graph, tensors(session.get_inputs()),
                   tensors(session.get_outputs()), str(path))


def _check_inputs(session: Any, expected: set[str], what: str) -> None:
    """Raise BackendError unless ``session`` takes exactly the inputs ``expected``."""
    names = {value.name for value in session.get_inputs()}
    if names != expected:
        raise BackendError(f"{what} has inputs {sorted(names)}, expected {sorted(expected)}")


def onnx_too_old_to_chain() -> str | None:
    """Why this onnx cannot chain the backbone to the query refine graph, or None.

    Before onnx 1.19, ``onnx.compose.add_prefix`` renames the backbone's ``feat`` output
    inside the graph while keeping it as the graph's output name, and ``merge_models``
    then fails. The chained graph only saves a hand-off per query, so the backends run
    the graphs separately on an older onnx and say so in ``describe()``."""
    import onnx

    parts = []
    for part in onnx.__version__.split(".")[:2]:
        digits = "".join(char for char in part if char.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < CHAIN_MIN_ONNX:
        return (f"onnx {onnx.__version__} cannot chain the graphs (onnx.compose needs "
                f"onnx >= {'.'.join(map(str, CHAIN_MIN_ONNX))})")
    return None


def _convolutions(model: Any) -> int:
    """Convolution nodes of a model (Conv, and ORT's fused/NCHWc variants)."""
    return sum(node.op_type.endswith("Conv") for node in model.graph.node)
