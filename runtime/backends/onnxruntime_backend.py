"""ONNX Runtime backend: runs the bundle's ONNX graphs at the requested precision.

Execution providers, unless ``providers`` is given: TensorRT EP and CUDA EP first when
onnxruntime-gpu offers them, then the CPU EP. The TensorRT EP caches its engines inside
the bundle, in ``engines/ort-trt-cache/``, with optimisation profiles covering the
bundle's shot range. ``threads`` sets the intra-op thread count (ORT's default: one per
physical core). ORT sessions are thread-safe for ``run``, so this backend is too.

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

from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError, ModelSpec, bundle_graph_paths
from crnet.runtime.bundle import Bundle
from crnet.runtime.layout import ORT_TRT_CACHE_DIR
from crnet.runtime.ort_build import ort_build_path

ORT_TRT_CACHE = Path(ORT_TRT_CACHE_DIR)
CHAIN_MIN_ONNX = (1, 19)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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
        self.spec = ModelSpec.from_manifest(bundle.manifest)
        self.paths = bundle_graph_paths(bundle, precision)
        self.sessions: dict[str, Any] = {}
        self.use_ort_build = use_ort_build
        self.loaded_paths: dict[str, Path] = {}
        self.query_refine: dict[str, Any] = {}

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
        if "TensorrtExecutionProvider" in available:
            chosen.append(("TensorrtExecutionProvider", self._tensorrt_ep_options()))
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

        if self.use_ort_build and providers == ["CPUExecutionProvider"]:
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
            from crnet.runtime.graph_prune import chain_backbone, prune_to_outputs

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
            query = chain_backbone(self._load_onnx(self.loaded_paths["backbone"]), refine_query)
            session = ort.InferenceSession(query.SerializeToString(),
                                           self._options(spinning=self.query_spinning),
                                           providers=providers)
            _check_inputs(session, {"image", "support_feat", "support_mask"},
                          "the chained query graph")
        except Exception as error:  # graphs onnx.compose cannot merge
            self.query_refine["chained"] = f"no ({type(error).__name__}: {error})"
        else:
            self.sessions["query"] = session
            self.query_refine["chained"] = "yes"

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
        """onnx.load of ``path``, with uint8 activations when the plan says so."""
        import onnx

        model = onnx.load(str(path))
        if self.activations.get("type") != "uint8":
            return model
        from crnet.runtime.qdq_u8 import activations_to_uint8

        model, count = activations_to_uint8(model)
        self.activations["rewritten"][path.name] = count
        return model

    def _source(self, path: Path) -> str | bytes:
        """What InferenceSession loads for ``path``: its file name, or the serialised model
        with uint8 activations."""
        if self.activations.get("type") != "uint8":
            return str(path)
        return self._load_onnx(path).SerializeToString()

    def _deactivate(self) -> None:
        self.sessions = {}
        self.query_refine = {}

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
            self.sessions["refine"], ["query_logits", "support_logits"],
            self._feeds("refine", query_feat=query_feat, support_feat=support_feat,
                        support_mask=support_mask), "refine")
        return (np.asarray(query_logits, dtype=np.float32),
                np.asarray(support_logits, dtype=np.float32))

    def run_query_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                         support_mask: np.ndarray) -> np.ndarray:
        self._require_active()
        if "refine_query" not in self.sessions:
            return super().run_query_refine(query_feat, support_feat, support_mask)
        (query_logits,) = _run(
            self.sessions["refine_query"], ["query_logits"],
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
        loaded = self.loaded_paths or self.paths
        root = self.bundle.root if self.bundle is not None else None
        info["files"] = {graph: (path.relative_to(root).as_posix() if root else path.name)
                         for graph, path in loaded.items()}
        if self.query_refine:
            info["query_refine"] = self.query_refine
        if self.activations:
            info["int8_activations"] = self.activations
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
