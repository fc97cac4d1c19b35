"""runtime.Segmenter: few-shot segmentation with a cached support set, on any backend.

    seg = Segmenter("bundle/", backend="auto", precision="fp32")
    seg.set_support([support_rgb], [support_mask])     # encodes the supports once
    mask = seg.segment(query_rgb)                       # HxW bool at the query's size
    mask, probability = seg.segment(query_rgb, return_prob=True)
    for mask in seg.segment_stream(frames): ...         # pipelined over a worker thread

Pre/post-processing is runtime.preprocess for every backend. ``backend="auto"`` picks
tensorrt when it is available and the bundle has engines for the precision, else the
fastest installed CPU backend whose run of the variant passed the gate recorded in the
bundle (``auto_choice``), else torch. Bad input raises runtime.preprocess.InputError (a ValueError)
naming what was wrong; see ``set_support`` and ``segment`` for the documented conversions.

Thread safety: ``segment`` may be called from several threads at once. The support state
is one immutable object swapped atomically by ``set_support``; each ``segment`` call uses
the support that was current when it started. Backends that are not thread-safe
(tensorrt: one execution context) are serialised with a lock.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.backends.base import (
    REGISTRY,
    Backend,
    BackendError,
    ModelSpec,
    backend_class,
    require_available,
)
from crnet.runtime.bundle import PRECISIONS, Bundle, BundleError
from crnet.runtime.preprocess import (
    THRESHOLD,
    InputError,
    as_rgb_uint8,
    foreground_probability,
    preprocess_image,
    preprocess_mask,
    probability_to_image,
    probability_to_mask,
)
from crnet.runtime.resize_kernels import available as resize_kernels_available
from crnet.runtime.resize_plans import scratch

BACKENDS = ("auto", *REGISTRY)
_LOG = logging.getLogger(__name__)


class NoSupportError(InputError):
    """segment() called before set_support()."""


@dataclass(frozen=True)
class SupportSet:
    """An encoded support set: features [K,C,h,w] and masks [K,1,h,w] at feature size."""

    feat: np.ndarray
    mask: np.ndarray

    @property
    def shots(self) -> int:
        """K, the number of support images."""
        return int(self.feat.shape[0])


class Segmenter:
    """Segment, in query images, the class shown by K labelled support images.

    ``bundle_dir``: a bundle from ``crnet export``; ``backend``: "auto", "onnxruntime",
    "openvino", "tensorrt" or "torch"; ``precision``: "fp32", "fp16" or "int8" (a variant of the
    bundle). ``threshold``: the foreground probability above which a pixel is in the mask.
    Further keyword arguments go to the backend (onnxruntime: ``threads``, ``providers``,
    ``spinning``, ``query_spinning``, ``spin_between_runs``, ``dynamic_block_base``,
    ``uint8_activations``, ``use_ort_build``; openvino: ``threads``,
    ``inference_precision``, ``device``; tensorrt: ``cuda_graphs``, ``device``, ``stream``;
    torch: ``device``, ``threads``).
    With "auto", TensorRT plans that cannot run here (stale, built for another GPU,
    TensorRT or platform) fall back to the next backend; the reason is logged and kept in
    ``fallback_reason``; ``choice`` says what was picked and why.
    """

    def __init__(self, bundle_dir: str | Path, backend: str = "auto",
                 precision: str = "fp32", *, threshold: float = THRESHOLD,
                 verify: bool = True, **backend_options: Any) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        bundle = Bundle.load(bundle_dir, verify=verify)
        name, why = auto_choice(backend, bundle, precision)
        spec = ModelSpec.from_manifest(bundle.manifest)
        try:
            cls = require_available(name)
            self._setup(cls(bundle, precision, **backend_options), spec, threshold,
                        choice={"requested": backend, "picked": name, "why": why},
                        bundle=bundle)
        except (BackendError, BundleError) as error:
            if backend != "auto" or name != "tensorrt":
                raise
            # "auto" chose plans that do not fit here (stale, another GPU or TensorRT, or
            # not verifiable against the manifest): run the next backend and say why
            fallback, fallback_why = auto_choice("auto", bundle, precision, skip_tensorrt=True)
            _LOG.warning("tensorrt engines of %s cannot run here (%s); using %s instead",
                         bundle.root, error, fallback)
            cls = require_available(fallback)
            self._setup(cls(bundle, precision, **_accepted(cls, backend_options)), spec,
                        threshold, bundle=bundle, fallback_reason=f"tensorrt: {error}",
                        choice={"requested": backend, "picked": fallback,
                                "why": f"tensorrt engines cannot run here; {fallback_why}"})

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, device: str | None = None,
                        threads: int | None = None, threshold: float = THRESHOLD
                        ) -> Segmenter:
        """A torch-backend Segmenter on a bare checkpoint (None: the bundled default,
        models.checkpoint.DEFAULT_CHECKPOINT), without a bundle: the PyTorch reference."""
        backend_cls = require_available("torch")
        backend = backend_cls(None, "fp32", checkpoint=path, device=device, threads=threads)
        segmenter = cls.__new__(cls)
        segmenter._setup(backend, backend.load_spec(), threshold,
                         choice={"requested": "torch", "picked": "torch",
                                 "why": "from_checkpoint"})
        return segmenter

    @classmethod
    def from_backend(cls, backend: Backend, spec: ModelSpec, threshold: float = THRESHOLD
                     ) -> Segmenter:
        """A Segmenter over a backend built elsewhere (e.g. crnet.serve.bls for Triton)."""
        segmenter = cls.__new__(cls)
        segmenter._setup(backend, spec, threshold,
                         choice={"requested": backend.name, "picked": backend.name,
                                 "why": "from_backend"})
        return segmenter

    def _setup(self, backend: Backend, spec: ModelSpec, threshold: float, *,
               choice: dict[str, str], bundle: Bundle | None = None,
               fallback_reason: str | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.bundle = bundle
        self.choice = choice
        self.fallback_reason = fallback_reason
        self.backend = backend
        self.spec = spec
        self.threshold = float(threshold)
        self._support: SupportSet | None = None
        self._support_lock = threading.Lock()
        self._backend_lock: threading.Lock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if backend.thread_safe else threading.Lock())
        backend.activate()

    # -- properties ---------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        """The backend actually used ("auto" resolved)."""
        return self.backend.name

    @property
    def precision(self) -> str:
        """The precision variant in use."""
        return self.backend.precision

    @property
    def support(self) -> SupportSet | None:
        """The current encoded support set, or None before set_support()."""
        return self._support

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description of the backend and model."""
        info = self.backend.describe()
        info["choice"] = self.choice
        compiled, why = resize_kernels_available()
        info["pre_post_processing"] = "compiled (numba)" if compiled else f"numpy ({why})"
        info.update({"model": self.spec.name, "input_size": list(self.spec.input_size),
                     "feature_size": list(self.spec.feature_size),
                     "shots": [self.spec.min_shots, self.spec.max_shots]})
        if self.fallback_reason:
            info["fallback_reason"] = self.fallback_reason
        return info

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Release the backend (sessions, engines, device memory)."""
        self.backend.deactivate()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- support ------------------------------------------------------------------------

    def set_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        """Encode the support set once and cache it for every later segment() call.

        The arguments and errors are those of encode_support().
        """
        support = self.encode_support(images, masks)
        with self._support_lock:
            self._support = support

    def encode_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
                       ) -> SupportSet:
        """Encode a support set without caching it (for a server holding many of them).

        ``images``: K HxWx3 uint8 RGB arrays (HxW / HxWx1 grayscale and HxWx4 RGBA are
        converted); ``masks``: K HxW bool or integer arrays, 1 = object, 0 = background,
        255 = ignore (counted as background), each the size of its image. K must lie in the
        bundle's shot range. A shot whose mask has no object pixel, or whose object
        vanishes at the feature size, raises InputError naming the shot.
        """
        images, masks = _as_list(images, "images"), _as_list(masks, "masks")
        if len(images) != len(masks):
            raise InputError(f"{len(images)} support images but {len(masks)} support masks")
        shots = len(images)
        if not self.spec.min_shots <= shots <= self.spec.max_shots:
            raise InputError(
                f"{shots} support image(s); this bundle accepts {self.spec.min_shots}.."
                f"{self.spec.max_shots} shots")
        tensors, small_masks = [], []
        for shot, (image, mask) in enumerate(zip(images, masks, strict=True)):
            rgb = as_rgb_uint8(image, f"support image {shot}")
            small = preprocess_mask(mask, self.spec.input_size, self.spec.feature_size,
                                    image_shape=rgb.shape, what=f"support mask {shot}")
            if not small.any():
                full = np.count_nonzero(np.asarray(mask) == 1)
                if full == 0:
                    raise InputError(f"support mask {shot} is empty (no pixel labelled 1): "
                                     "every shot needs the object marked")
                raise InputError(
                    f"support mask {shot} marks {full} pixel(s), too few to survive the resize "
                    f"to the {self.spec.feature_size[0]}x{self.spec.feature_size[1]} feature "
                    "map; mark a larger region or crop the support image around the object")
            tensors.append(preprocess_image(rgb, self.spec.input_size, self.spec.mean,
                                            self.spec.std, f"support image {shot}"))
            small_masks.append(small)
        with self._backend_lock:
            feat = self.backend.run_backbone(np.concatenate(tensors))
        _check_finite(feat, "support features")
        return SupportSet(feat=feat, mask=np.ascontiguousarray(np.concatenate(small_masks)))

    def clear_support(self) -> None:
        """Forget the support set."""
        with self._support_lock:
            self._support = None

    # -- query --------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Query image -> (normalised [1,3,H,W] float32, its original (height, width))."""
        rgb = as_rgb_uint8(image, "query image")
        tensor = preprocess_image(rgb, self.spec.input_size, self.spec.mean, self.spec.std,
                                  "query image")
        return tensor, (int(rgb.shape[0]), int(rgb.shape[1]))

    def infer(self, tensor: np.ndarray, support: SupportSet | None = None) -> np.ndarray:
        """Preprocessed query [1,3,H,W] -> foreground probability [h,w] at feature size."""
        support = support if support is not None else self._current_support()
        with self._backend_lock:
            query_logits = self.backend.run_query(tensor, support.feat, support.mask)
        _check_finite(query_logits, "query logits")
        return foreground_probability(query_logits[0])

    def postprocess(self, probability: np.ndarray, image_shape: Sequence[int],
                    return_prob: bool = False
                    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Feature-size probability -> mask (and probability) at ``image_shape``."""
        if not return_prob:
            return probability_to_mask(probability, image_shape, self.threshold)
        full = probability_to_image(probability, image_shape)
        return full > self.threshold, full

    def segment(self, image: np.ndarray, return_prob: bool = False, *,
                support: SupportSet | None = None
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment the support's class in ``image`` (HxWx3 uint8 RGB; conversions as in
        set_support).

        Returns the HxW bool mask at the image's own size. With ``return_prob=True``
        returns ``(mask, probability)``: ``probability`` is HxW float32 in [0, 1], the
        softmax foreground probability resized (bilinear) to the image's size, and
        ``mask == (probability > threshold)``. Raises NoSupportError before set_support().
        ``support``: an encode_support() result to use instead of the cached support.
        """
        support = support if support is not None else self._current_support()
        rgb = as_rgb_uint8(image, "query image")
        # the network input is a per-thread scratch array: the backend has finished with
        # it when infer() returns (every backend's run_query is synchronous)
        tensor = preprocess_image(rgb, self.spec.input_size, self.spec.mean, self.spec.std,
                                  "query image", out=scratch(
                                      "segment-query", (1, 3, *self.spec.input_size),
                                      np.float32))
        return self.postprocess(self.infer(tensor, support), rgb.shape, return_prob)

    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: bool = False,
                       pipeline: bool = True
                       ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Segment frames in order, yielding what segment() returns for each.

        With ``pipeline`` the next frame is preprocessed on a worker thread while the
        current one runs through the backend. Frames are drawn from ``frames`` in the
        calling thread, one ahead of the frame being inferred. Each frame uses the support
        current when its inference starts. An error raises at the failing frame; an error
        of ``frames`` itself raises after every frame it gave has been yielded.
        """
        if not pipeline:
            for frame in frames:
                yield self.segment(frame, return_prob)
            return
        self._current_support()
        iterator = iter(frames)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmenter-pre") as pool:
            pending: Future[tuple[np.ndarray, tuple[int, int]]] | None = None
            source_error: BaseException | None = None  # raised by ``frames`` itself

            def submit_next() -> Future[tuple[np.ndarray, tuple[int, int]]] | None:
                nonlocal source_error
                try:
                    return pool.submit(self.preprocess, next(iterator))
                except StopIteration:
                    return None
                except Exception as error:  # noqa: BLE001 - re-raised after the last result
                    source_error = error
                    return None

            pending = submit_next()
            while pending is not None:
                tensor, shape = pending.result()
                pending = submit_next()
                try:
                    probability = self.infer(tensor)
                except BaseException:
                    if pending is not None:
                        pending.cancel()
                    raise
                yield self.postprocess(probability, shape, return_prob)
            if source_error is not None:
                # every frame drawn before the source failed has been yielded: now its error
                raise source_error

    def _current_support(self) -> SupportSet:
        support = self._support
        if support is None:
            raise NoSupportError("no support set: call set_support(images, masks) before "
                                 "segment()")
        return support


def _accepted(cls: type[Backend], options: dict[str, Any]) -> dict[str, Any]:
    """The options ``cls`` takes (a fallback backend drops e.g. tensorrt's cuda_graphs)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in parameters}


def choose_backend(backend: str, bundle: Bundle, precision: str, *,
                   skip_tensorrt: bool = False) -> str:
    """Resolve "auto" (see ``auto_choice``); other names pass through after a check."""
    return auto_choice(backend, bundle, precision, skip_tensorrt=skip_tensorrt)[0]


# The CPU backends "auto" tries, fastest first, as measured by ``crnet bench BUNDLE
# --compare`` on crnet-lite (AVX-512 VNNI/BF16 EPYC, one process, interleaved, p50 of the
# raw engine call; README.md, "auto on a CPU"): OpenVINO ran fp32 in 5.45 ms vs ONNX Runtime's
# 5.77 at 1 thread and 2.87 vs 3.78 at 2; int8 2.22 vs 2.54 and 1.27 vs 2.11; fp16 (which
# OpenVINO runs at f32) 5.42 vs 6.17 and 2.82 vs 4.07.
CPU_ORDER = ("openvino", "onnxruntime")


def auto_choice(backend: str, bundle: Bundle, precision: str, *,
                skip_tensorrt: bool = False) -> tuple[str, str]:
    """(backend name, why) for ``backend`` ("auto" or a registered name).

    The rule for "auto":

    1. tensorrt, when it is available and the bundle has engines for the precision;
    2. the fastest installed CPU backend (``CPU_ORDER``: openvino, then onnxruntime) whose
       run of this variant passed the accuracy gate ``crnet deploy`` recorded in the
       bundle (``Bundle.gate_results``; a backend whose record failed, or that has none
       while another has one, is passed over and the reason says so). A bundle with no
       gate record for the precision (a bare ``crnet export``) takes the fastest installed
       one and says that it is ungated. int8 on onnxruntime without the ``onnx`` package
       runs the bundle's S8S8 graph (no uint8 rewrite, 1.8x slower), which the order
       already puts behind openvino;
    3. torch, for fp32, where neither CPU backend imports.

    OpenVINO runs with the f32 inference hint. Its bf16 hint (1.7x faster than f32 on a
    CPU with avx512_bf16) is never taken by "auto": it changes the fp32 variant's numbers
    and is not what the gates judged, so it is asked for by name
    (``backend="openvino", inference_precision="bf16"``).
    """
    if backend != "auto":
        backend_class(backend)  # an unknown name raises, listing the known ones
        return backend, "asked for by name"
    tensorrt = backend_class("tensorrt")
    if (not skip_tensorrt and tensorrt.has_engines(bundle, precision)
            and tensorrt.is_available()[0]):
        return "tensorrt", f"TensorRT is available and the bundle has {precision} engines"
    installed = [name for name in CPU_ORDER if backend_class(name).is_available()[0]]
    if not installed:
        if precision == "fp32" and "torch" in REGISTRY and \
                backend_class("torch").is_available()[0]:
            return "torch", "neither onnxruntime nor openvino imports"
        raise BackendError(
            f"no backend can run {precision} here: install onnxruntime (`pip install "
            "onnxruntime`)" + (" or torch" if precision == "fp32" else ""))
    speed = (f"the fastest CPU backend for {precision} measured with crnet bench --compare "
             f"(order {', '.join(CPU_ORDER)})")
    gates = bundle.gate_results(precision)
    if not gates:
        return installed[0], (f"{speed}; the bundle records no accuracy gate for "
                              f"{precision} (crnet deploy writes them), so it is ungated")
    passed_over = []
    for name in installed:
        record = gates.get(name)
        if record is not None and record["passed"]:
            why = (f"{speed}; its {precision} passed the bundle's gate "
                   f"({record['delta_miou']:+.2f} mIoU vs PyTorch, gate "
                   f"{record['max_abs_delta_miou']:.2f}, {record['episodes']} episodes)")
            return name, why + (f"; passed over: {', '.join(passed_over)}"
                                if passed_over else "")
        passed_over.append(f"{name} ({'failed its gate' if record else 'not gated'})")
    _LOG.warning("no installed backend passed the %s gate of %s: %s", precision,
                 bundle.root, ", ".join(passed_over))
    return installed[0], (f"{speed}; no installed backend passed the bundle's {precision} "
                          f"gate ({', '.join(passed_over)}): running it ungated")


def _as_list(items: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    if isinstance(items, np.ndarray):
        raise InputError(f"support {what} must be a list of arrays (one per shot), "
                         f"got one array of shape {items.shape}; wrap it: [array]")
    try:
        return list(items)
    except TypeError:
        raise InputError(f"support {what} must be a list of arrays, got "
                         f"{type(items).__name__}") from None


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise BackendError(f"{what} contain NaN or infinity (a broken variant, or an fp16 "
                           "overflow); compare this precision with fp32 using `crnet eval`")
