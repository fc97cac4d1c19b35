"""The backend interface of runtime.Segmenter, the model spec it needs, and the registry.

A backend runs the two graphs of a bundle (DESIGN.md, "The split") on numpy arrays:

* ``run_backbone(images [N,3,H,W] float32) -> feat [N,C,h,w] float32``
* ``run_refine(query_feat [1,C,h,w], support_feat [K,C,h,w], support_mask [K,1,h,w])
  -> (query_logits [1,2,h,w], support_logits [K,2,h,w])``, float32.
* ``run_query_refine(...)`` with the same inputs -> ``query_logits`` alone. The default
  runs ``run_refine`` and drops the support logits; a backend that can skip the support
  branch overrides it.
* ``run_query(image [1,3,H,W], support_feat, support_mask) -> query_logits``: what
  ``Segmenter.segment`` calls. The default is ``run_backbone`` then ``run_query_refine``;
  a backend that can run both in one call overrides it.

Lifecycle as Polygraphy's runners: construct (cheap, no heavy work), ``activate()`` (load
sessions / engines / weights), run, ``deactivate()``; or ``with backend: ...``.

The registry maps a name to ``"module:Class"`` and imports the module only when asked,
so ``import runtime`` pulls in neither torch nor tensorrt.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from crnet.runtime.bundle import Bundle
from crnet.runtime.errors import CrnetError

if TYPE_CHECKING:
    from crnet.runtime.adapter import Adapter


class BackendError(CrnetError, RuntimeError):
    """A backend that cannot be created, activated or run."""


class BackendUnavailable(BackendError):
    """A backend whose libraries (or hardware) are missing on this machine."""


@dataclass(frozen=True)
class ModelSpec:
    """What pre/post-processing needs to know about the model, from a manifest or a config."""

    name: str
    input_size: tuple[int, int]
    feature_size: tuple[int, int]
    feature_channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_shots: int
    max_shots: int

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelSpec:
        """Read the spec from a bundle manifest (runtime.bundle's contract)."""
        model = manifest.get("model", {})
        preprocessing = manifest.get("preprocessing", {})
        shots = manifest.get("shots", {})
        return cls(
            name=str(model.get("name", "crnet")),
            input_size=_pair(manifest.get("input_size") or preprocessing["input_size"]),
            feature_size=_pair(manifest["feature_size"]),
            feature_channels=int(manifest.get("feature_channels", model.get("feature_channels"))),
            mean=tuple(float(v) for v in preprocessing.get("mean", model.get("mean"))),
            std=tuple(float(v) for v in preprocessing.get("std", model.get("std"))),
            min_shots=int(shots.get("min", 1)),
            max_shots=int(shots.get("max", model.get("max_shots", 8))),
        )

    @classmethod
    def from_config(cls, config: Any) -> ModelSpec:
        """Read the spec from a models.config.CRNetConfig (no import of models here)."""
        return cls(
            name=config.name, input_size=_pair(config.input_size),
            feature_size=_pair(config.feature_size), feature_channels=config.feature_channels,
            mean=tuple(config.mean), std=tuple(config.std), min_shots=1,
            max_shots=config.max_shots,
        )


def _pair(values: Sequence[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


class Backend:
    """Base class: lifecycle, context manager, the two graph calls, and the traits the
    orchestration asks about instead of comparing backend names.

    ``thread_safe``: whether run_* may be called from several threads at once; the
    Segmenter serialises calls to a backend that says False.
    """

    name: ClassVar[str] = "base"
    install_hint: ClassVar[str] = ""
    thread_safe: ClassVar[bool] = False
    runs_on_cpu: ClassVar[bool] = False
    """Runs on the host CPU (a side-by-side CPU comparison may time it)."""
    takes_threads: ClassVar[bool] = False
    """The constructor takes ``threads`` (intra-op threads)."""
    optional_cpu_engine: ClassVar[bool] = False
    """An optional CPU engine: deploy also evaluates and benchmarks it where installed."""
    inference_precision_hints: ClassVar[tuple[str, ...]] = ()
    """Values of the constructor's ``inference_precision`` hint; empty: no such option."""

    @classmethod
    def usable_inference_precisions(cls) -> tuple[str, ...]:
        """The inference precision hints this machine can run (default: all of them)."""
        return cls.inference_precision_hints

    @classmethod
    def runs_query_branch_only(cls, info: dict[str, Any]) -> bool:
        """Whether a backend that ``describe()``d itself as ``info`` skips the support
        branch of the refine per query (default: where its query graph was pruned)."""
        return bool(info.get("query_refine", {}).get("pruned", False))

    def __init__(self, bundle: Bundle | None, precision: str = "fp32") -> None:
        self.bundle = bundle
        self.precision = precision
        self._active = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """(True, version info) if this backend can run here, else (False, reason)."""
        raise NotImplementedError

    @property
    def is_active(self) -> bool:
        """Whether activate() has run (and deactivate() has not)."""
        return self._active

    def activate(self) -> None:
        """Load what the backend needs (sessions, engines, weights); idempotent."""
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        """Release what activate() loaded; idempotent."""
        if self._active:
            self._active = False
            self._deactivate()

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        """Normalised images [N,3,H,W] float32 -> features [N,C,h,w] float32."""
        raise NotImplementedError

    def run_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                   support_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and support masks -> (query_logits [1,2,h,w], support_logits [K,2,h,w])."""
        raise NotImplementedError

    def run_query_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                         support_mask: np.ndarray) -> np.ndarray:
        """Like run_refine, but only the query logits [1,2,h,w] float32."""
        return self.run_refine(query_feat, support_feat, support_mask)[0]

    def run_query(self, image: np.ndarray, support_feat: np.ndarray,
                  support_mask: np.ndarray) -> np.ndarray:
        """One query against encoded supports: normalised image [1,3,H,W] -> query logits
        [1,2,h,w]; run_backbone then run_query_refine unless a backend fuses them."""
        return self.run_query_refine(self.run_backbone(image), support_feat, support_mask)

    def apply_adapter(self, adapter: Adapter | None) -> None:
        """Run the refine graph with ``adapter``'s tensors (runtime.adapter) in place of the
        shipped ones from the next call on; None restores the shipped weights. The
        adapter is checked against the bundle before anything changes."""
        raise BackendError(f"backend {self.name} cannot apply adapters; use onnxruntime, "
                           "openvino, tensorrt or torch")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (backend, precision, devices/providers, ...)."""
        return {"backend": self.name, "precision": self.precision}

    def _require_active(self) -> None:
        if not self._active:
            raise BackendError(f"{self.name} backend is not active; call activate() first "
                               "(or use it as a context manager)")


def bundle_graph_paths(bundle: Bundle, precision: str) -> dict[str, Path]:
    """The backbone and refine ONNX files of one precision, resolved now: a missing variant
    or file is a clear error when the backend is constructed."""
    paths = {graph: bundle.graph_path(graph, precision) for graph in ("backbone", "refine")}
    for path in paths.values():
        if not path.exists():
            raise BackendError(f"{path} is named by the manifest but missing")
    return paths


# The runtime's own backends; others register through the entry-point group below (the
# torch reference backend lives beside the model, in models/torch_backend.py, and is
# registered by crnet-deploy's own pyproject), so `runtime` imports no other package.
BUILTIN_BACKENDS: dict[str, str] = {
    "tensorrt": "crnet.runtime.backends.tensorrt_backend:TensorRTBackend",
    "onnxruntime": "crnet.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "crnet.runtime.backends.openvino_backend:OpenVinoBackend",
}
ENTRY_POINT_GROUP = "crnet_deploy.backends"
# Roles the orchestration asks the registry for, so that only this module names backends:
REFERENCE_BACKEND = "torch"  # the PyTorch model every variant is gated against
ENGINE_BACKEND = "tensorrt"  # deploy builds engines for it where it is available
CPU_BUILD_BACKEND = "onnxruntime"  # else deploy's CPU build target


def _discover() -> dict[str, str]:
    """Built-in backends plus those installed packages register (name -> "module:Class")."""
    from importlib import metadata

    found = dict(BUILTIN_BACKENDS)
    try:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken metadata of an unrelated package must not break the runtime
        entry_points = ()
    for entry_point in entry_points:
        found.setdefault(entry_point.name, entry_point.value)
    return found


# name -> "module:Class"; imported on demand.
REGISTRY: dict[str, str] = _discover()


def register_backend(name: str, target: str) -> None:
    """Register a backend class by ``"module:Class"`` (imported only when asked for)."""
    if ":" not in target:
        raise BackendError(f"backend target {target!r} must be 'module:Class'")
    REGISTRY[name] = target


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (imports its module, not its library)."""
    if name not in REGISTRY:
        hint = (" (the torch backend is registered by the installed crnet-deploy package: "
                "pip install 'crnet-deploy[export]')" if name == "torch" else "")
        raise BackendError(f"unknown backend {name!r}; known backends: "
                           f"{sorted(REGISTRY)}{hint}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_names() -> list[str]:
    """The registered backend names, sorted."""
    return sorted(REGISTRY)


def backends_where(trait: str, *, installed: bool = False) -> list[str]:
    """Registered backends whose class sets ``trait`` (a class attribute above) true,
    sorted; ``installed``: only those whose ``is_available()`` says yes."""
    names = []
    for name in backend_names():
        try:
            cls = backend_class(name)
        except (ImportError, BackendError):  # a broken plugin has no traits to ask about
            continue
        if getattr(cls, trait) and (not installed or cls.is_available()[0]):
            names.append(name)
    return names


def availability() -> dict[str, tuple[bool, str]]:
    """``is_available()`` of every registered backend."""
    return {name: backend_class(name).is_available() for name in REGISTRY}


def require_available(name: str) -> type[Backend]:
    """The backend class, or BackendUnavailable with the reason and what to install."""
    cls = backend_class(name)
    available, reason = cls.is_available()
    if not available:
        raise BackendUnavailable(
            f"backend {name!r} is not available: {reason}. {cls.install_hint}".strip()
        )
    return cls
