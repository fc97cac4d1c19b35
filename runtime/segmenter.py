"""crnet.runtime.Segmenter: few-shot segmentation with a cached support set, on any backend.

    seg = Segmenter("bundle/", backend="auto", precision="fp32")
    seg.set_support([support_rgb], [support_mask])     # encodes the supports once
    mask = seg.segment(query_rgb)                       # HxW bool at the query's size
    mask, probability = seg.segment(query_rgb, return_prob=True)
    masks = seg.segment_batch([rgb_1, rgb_2, rgb_3])    # one backbone run for the batch
    for mask in seg.segment_stream(frames): ...         # pipelined over a worker thread
    mask = seg.segment(opencv_frame, channels="bgr")    # or Segmenter(..., channels="bgr")

Pre/post-processing is crnet.runtime.preprocess for every backend. ``backend="auto"`` picks
tensorrt when it is available and the bundle has engines for the precision, else the
fastest installed CPU backend whose run of the variant passed the gate recorded in the
bundle (``auto_choice``), else torch. Every error a caller can cause derives from
crnet.runtime.CrnetError and names what was wrong and what was expected: bad images,
masks, arguments and option values raise crnet.runtime.InputError (a ValueError), a
closed Segmenter SegmenterClosedError; see ``set_support`` and ``segment`` for the
documented conversions.

Images are HxWx3 uint8 in the order ``channels`` says ("rgb", or "bgr" as OpenCV gives
them; per call or for the Segmenter), HxW / HxWx1 grayscale or HxWx4 RGBA / BGRA, in any
memory layout (crops, steps, ``frame[..., ::-1]``): the resize reads them where they lie,
in the given channel order, at the cost of a contiguous RGB frame and with the same bits.

Thread safety: ``segment`` may be called from several threads at once. Threads that each
need their own support encode it with ``encode_support`` and pass it to every call
(``segment(image, support=handle)``; likewise segment_batch and segment_stream). The
cached support of ``set_support`` is one per Segmenter, swapped atomically: a thread that
never called ``set_support`` uses the current one (one thread sets it, workers segment);
a thread that did call it gets its own support or, when another thread has replaced it
since, SupportReplacedError, never the other thread's support. Backends that are not
thread-safe (tensorrt: one execution context) are serialised with a lock.
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
from typing import Any, Literal, overload

import numpy as np

from crnet.runtime.adapter import Adapter, AdapterError, load_adapter
from crnet.runtime.backends.base import (
    REGISTRY,
    Backend,
    BackendError,
    ModelSpec,
    backend_class,
    require_available,
)
from crnet.runtime.bundle import PRECISIONS, Bundle, BundleError
from crnet.runtime.errors import CrnetError
from crnet.runtime.golden import GoldenCheck, hash_check_of, startup_check
from crnet.runtime.preprocess import (
    THRESHOLD,
    InputError,
    channel_order,
    check_marked,
    checked_mask,
    foreground_probability,
    preprocess_image,
    preprocess_mask,
    probability_to_image,
    probability_to_mask,
)
from crnet.runtime.resize_kernels import available as resize_kernels_available
from crnet.runtime.resize_plans import scratch
from crnet.runtime.support_slot import NoSupportError as NoSupportError  # re-exported
from crnet.runtime.support_slot import SupportReplacedError as SupportReplacedError
from crnet.runtime.support_slot import SupportSlot

BACKENDS = ("auto", *REGISTRY)
_LOG = logging.getLogger(__name__)


class SegmenterClosedError(CrnetError, RuntimeError):
    """A call on a Segmenter after close() (or after its ``with`` block)."""


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
    torch: ``device``, ``threads``). ``backend`` and ``precision`` are read in any case
    ("INT8" is "int8"); ``threads`` is an int >= 1; an option the backend does not take,
    or a value of the wrong type, raises InputError. ``channels``: the colour order of
    the images given to this Segmenter, "rgb" (default) or "bgr" (OpenCV); each call may
    say otherwise with its own ``channels``.
    With "auto", TensorRT plans that cannot run here (stale, built for another GPU,
    TensorRT or platform) fall back to the next backend; the reason is logged and kept in
    ``fallback_reason``; ``choice`` says what was picked and why.
    ``verify``: True (default) checks every file's sha256 against the manifest, False
    skips that; "quick" / "full" also run the bundle's golden episodes (5 / all,
    runtime.golden) at start-up and raise GoldenCheckError (a BundleError) naming the
    variant when it misses its gate, NoGoldenError for a bundle without them;
    ``verification`` holds the result.
    """

    def __init__(self, bundle_dir: str | Path, backend: str = "auto",
                 precision: str = "fp32", *, threshold: float = THRESHOLD,
                 verify: bool | str = True, channels: str = "rgb",
                 **backend_options: Any) -> None:
        if not isinstance(bundle_dir, str | Path):
            raise InputError(f"bundle_dir must be a path (str or pathlib.Path) to a bundle "
                             f"directory, got {type(bundle_dir).__name__}")
        if not isinstance(backend, str):
            raise InputError(f"backend must be a name, one of {BACKENDS}, got "
                             f"{type(backend).__name__} {backend!r}")
        backend = backend.lower()
        if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS} (any case), got "
                             f"{precision!r}")
        precision = precision.lower()
        hash_check = hash_check_of(verify)
        _check_threshold(threshold)
        channel_order(channels)
        _check_common_options(backend_options)
        bundle = Bundle.load(bundle_dir, verify=hash_check)
        name, why = auto_choice(backend, bundle, precision)
        spec = ModelSpec.from_manifest(bundle.manifest)
        try:
            cls = require_available(name)
            _check_backend_options(cls, backend_options)
            self._setup(cls(bundle, precision, **backend_options), spec, threshold,
                        choice={"requested": backend, "picked": name, "why": why},
                        bundle=bundle, channels=channels)
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
                        channels=channels,
                        choice={"requested": backend, "picked": fallback,
                                "why": f"tensorrt engines cannot run here; {fallback_why}"})
        # verify="quick"/"full": the golden episodes at start-up (closes self on a failure)
        self.verification: GoldenCheck | None = startup_check(self, bundle, verify)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, device: str | None = None,
                        threads: int | None = None, threshold: float = THRESHOLD
                        ) -> Segmenter:
        """A torch-backend Segmenter on a bare checkpoint (None: the bundled default,
        models.checkpoint.DEFAULT_CHECKPOINT), without a bundle: the PyTorch reference."""
        # the torch backend (crnet.models.torch_backend) takes a checkpoint and has
        # load_spec(); the registry only knows it as a Backend, hence Any
        _check_threshold(threshold)
        _check_common_options({"threads": threads})
        backend_cls: Any = require_available("torch")
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
               fallback_reason: str | None = None, channels: str = "rgb") -> None:
        _check_threshold(threshold)
        self.channels = channel_order(channels)
        self._closed = False
        self.bundle = bundle
        self.choice = choice
        self.fallback_reason = fallback_reason
        self.verification = None  # the start-up golden check (verify='quick'/'full')
        self.backend = backend
        self.spec = spec
        self.threshold = float(threshold)
        self._support_slot: SupportSlot[SupportSet] = SupportSlot(
            missing="call set_support(images, masks) before segment(), or pass "
                    "support=encode_support(images, masks)",
            advice="to give each thread its own support, pass support=seg.encode_support("
                   "images, masks) to segment() instead of calling set_support()")
        self.adapter: Adapter | None = None
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
        """The current encoded support set (whichever thread set it), or None before
        set_support()."""
        return self._support_slot.current

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
        info["adapter"] = self.adapter.summary() if self.adapter is not None else None
        return info

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Release the backend (sessions, engines, device memory); later calls raise
        SegmenterClosedError. Idempotent."""
        self._closed = True
        self.backend.deactivate()

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SegmenterClosedError(
                "this Segmenter is closed (close() was called, or its with-block ended); "
                "create a new Segmenter to segment again")

    def _order(self, channels: str | None) -> str:
        """The channel order of a call: its own ``channels``, else the Segmenter's."""
        return self.channels if channels is None else channel_order(channels)

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- support ------------------------------------------------------------------------

    def set_adapter(self, adapter: Adapter | str | Path | None) -> None:
        """Run the refine graph with an adapter's finetuned tensors (runtime.adapter: an
        Adapter, or the path of one saved by `crnet finetune`) from the next call on,
        without re-export or rebuild; None restores the shipped weights. An adapter made
        for another bundle or checkpoint raises AdapterError and changes nothing.
        Encoded supports stay valid: support encoding runs only the frozen trunk."""
        self._check_open()
        if isinstance(adapter, str | Path):
            adapter = load_adapter(adapter, self.bundle)
        elif adapter is not None and not isinstance(adapter, Adapter):
            raise AdapterError(f"adapter must be an Adapter, the path of a saved adapter or "
                               f"None, got {type(adapter).__name__}")
        with self._backend_lock:
            self.backend.apply_adapter(adapter)
            self.adapter = adapter

    def set_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                    channels: str | None = None,
                    adapter: Adapter | str | Path | None = None) -> None:
        """Encode the support set once and cache it for every later segment() call.

        The arguments and errors are those of encode_support().
        """
        support = self.encode_support(images, masks, channels=channels, adapter=adapter)
        self._support_slot.install(support)

    def encode_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                       channels: str | None = None,
                       adapter: Adapter | str | Path | None = None) -> SupportSet:
        """Encode a support set without caching it (for a server holding many of them).

        ``images``: K HxWx3 uint8 arrays in ``channels`` order (the Segmenter's unless
        given; HxW / HxWx1 grayscale and HxWx4 RGBA are converted), of any sizes;
        ``masks``: K HxW bool or integer arrays, 1 = object, 0 = background, 255 = ignore
        (counted as background), each the size of its image. A mask of only 0 and 255 is
        refused (255 is "ignore", so it marks nothing): pass ``mask // 255`` or
        ``mask > 0`` where 255 marks the object. K must lie in the bundle's shot range.
        A shot whose mask has no object pixel, or whose object vanishes at the feature
        size, raises InputError naming the shot. ``adapter`` (an Adapter or its path):
        set_adapter(adapter) first, for this Segmenter; None leaves the current one.
        """
        self._check_open()
        if adapter is not None:
            self.set_adapter(adapter)
        order = self._order(channels)
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
            tensor = preprocess_image(image, self.spec.input_size, self.spec.mean,
                                      self.spec.std, f"support image {shot}", channels=order)
            image_shape = np.shape(image)
            checked = checked_mask(mask, image_shape, f"support mask {shot}")
            check_marked(checked, f"support mask {shot}")
            small = preprocess_mask(checked, self.spec.input_size, self.spec.feature_size,
                                    what=f"support mask {shot}")
            if not small.any():
                full = np.count_nonzero(checked == 1)
                raise InputError(
                    f"support mask {shot} marks {full} pixel(s), too few to survive the resize "
                    f"to the {self.spec.feature_size[0]}x{self.spec.feature_size[1]} feature "
                    "map; mark a larger region or crop the support image around the object")
            tensors.append(tensor)
            small_masks.append(small)
        with self._backend_lock:
            feat = self.backend.run_backbone(np.concatenate(tensors))
        _check_finite(feat, "support features")
        return SupportSet(feat=feat, mask=np.ascontiguousarray(np.concatenate(small_masks)))

    def clear_support(self) -> None:
        """Forget the support set. In a thread that called set_support(), only that
        thread's support is cleared: one another thread has set since stays in place."""
        self._support_slot.clear()

    # -- query --------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray, *, channels: str | None = None
                   ) -> tuple[np.ndarray, tuple[int, int]]:
        """Query image -> (normalised [1,3,H,W] float32, its original (height, width))."""
        tensor = preprocess_image(image, self.spec.input_size, self.spec.mean, self.spec.std,
                                  "query image", channels=self._order(channels))
        return tensor, _image_size(image)

    def infer(self, tensor: np.ndarray, support: SupportSet | None = None) -> np.ndarray:
        """Preprocessed query [1,3,H,W] -> foreground probability [h,w] at feature size."""
        self._check_open()
        support = self._support_for(support)
        with self._backend_lock:
            query_logits = self.backend.run_query(tensor, support.feat, support.mask)
        _check_finite(query_logits, "query logits")
        return foreground_probability(query_logits[0])

    def infer_batch(self, tensors: np.ndarray, support: SupportSet | None = None
                    ) -> list[np.ndarray]:
        """Preprocessed queries [N,3,H,W] -> N foreground probabilities [h,w].

        The backbone runs once on the N queries (its graph takes a dynamic batch, as it
        does for the K supports); the refine graph takes one query, so it runs per query.
        One query goes through ``infer`` (a backend's fused single-query path)."""
        self._check_open()
        support = self._support_for(support)
        if tensors.shape[0] == 1:
            return [self.infer(tensors, support)]
        with self._backend_lock:
            features = self.backend.run_backbone(tensors)
            logits = [self.backend.run_query_refine(features[index:index + 1], support.feat,
                                                    support.mask)
                      for index in range(features.shape[0])]
        probabilities = []
        for query_logits in logits:
            _check_finite(query_logits, "query logits")
            probabilities.append(foreground_probability(query_logits[0]))
        return probabilities

    @overload
    def postprocess(self, probability: np.ndarray, image_shape: Sequence[int],
                    return_prob: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def postprocess(self, probability: np.ndarray, image_shape: Sequence[int],
                    return_prob: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def postprocess(self, probability: np.ndarray, image_shape: Sequence[int],
                    return_prob: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...

    def postprocess(self, probability: np.ndarray, image_shape: Sequence[int],
                    return_prob: bool = False
                    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Feature-size probability -> mask (and probability) at ``image_shape``."""
        if not return_prob:
            return probability_to_mask(probability, image_shape, self.threshold)
        full = probability_to_image(probability, image_shape)
        return full > self.threshold, full

    @overload
    def segment(self, image: np.ndarray, return_prob: Literal[False] = ..., *,
                support: SupportSet | None = ..., channels: str | None = ...
                ) -> np.ndarray: ...

    @overload
    def segment(self, image: np.ndarray, return_prob: Literal[True], *,
                support: SupportSet | None = ..., channels: str | None = ...
                ) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def segment(self, image: np.ndarray, return_prob: bool, *,
                support: SupportSet | None = ..., channels: str | None = ...
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...

    def segment(self, image: np.ndarray, return_prob: bool = False, *,
                support: SupportSet | None = None, channels: str | None = None
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment the support's class in ``image``: HxWx3 uint8 in ``channels`` order
        ("rgb" or "bgr"; the Segmenter's ``channels`` unless given), HxW / HxWx1
        grayscale or HxWx4 RGBA / BGRA, in any memory layout.

        Returns the HxW bool mask at the image's own size. With ``return_prob=True``
        returns ``(mask, probability)``: ``probability`` is HxW float32 in [0, 1], the
        softmax foreground probability resized (bilinear) to the image's size, and
        ``mask == (probability > threshold)``. Raises NoSupportError before set_support().
        ``support``: an encode_support() result to use instead of the cached support (the
        way for threads to each use their own; without it, a thread whose set_support()
        another thread has replaced gets SupportReplacedError, see the module docstring).
        """
        self._check_open()
        _check_flag(return_prob, "return_prob")
        support = self._support_for(support)
        # the network input is a per-thread scratch array: the backend has finished with
        # it when infer() returns (every backend's run_query is synchronous)
        tensor = preprocess_image(image, self.spec.input_size, self.spec.mean, self.spec.std,
                                  "query image", channels=self._order(channels),
                                  out=scratch("segment-query", (1, 3, *self.spec.input_size),
                                              np.float32))
        return self.postprocess(self.infer(tensor, support), _image_size(image), return_prob)

    @overload
    def segment_batch(self, images: Sequence[np.ndarray] | np.ndarray,
                      return_prob: Literal[False] = ..., *, support: SupportSet | None = ...,
                      channels: str | None = ...) -> list[np.ndarray]: ...

    @overload
    def segment_batch(self, images: Sequence[np.ndarray] | np.ndarray,
                      return_prob: Literal[True], *, support: SupportSet | None = ...,
                      channels: str | None = ...) -> list[tuple[np.ndarray, np.ndarray]]: ...

    @overload
    def segment_batch(self, images: Sequence[np.ndarray] | np.ndarray, return_prob: bool,
                      *, support: SupportSet | None = ..., channels: str | None = ...
                      ) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]: ...

    def segment_batch(self, images: Sequence[np.ndarray] | np.ndarray,
                      return_prob: bool = False, *, support: SupportSet | None = None,
                      channels: str | None = None
                      ) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
        """Segment N query images in one call: a list of N results, each what segment()
        returns for that image (the same masks and probabilities).

        ``images``: a sequence of images (each as segment() takes them; sizes may differ)
        or one [N,H,W,C] array. The backbone runs on up to the bundle's maximum shot
        count of queries at once (a batch size every backend's backbone accepts, as it
        encodes that many supports) and the refine graph once per query, under one hold
        of the backend. Worth it where the backend runs a batch faster than its queries
        one by one (a GPU, a CPU with idle cores); on one saturated CPU core it costs the
        same as a loop.
        """
        self._check_open()
        _check_flag(return_prob, "return_prob")
        support = self._support_for(support)
        order = self._order(channels)
        frames = _as_batch(images)
        chunk = max(1, self.spec.max_shots)
        results: list[Any] = []
        for start in range(0, len(frames), chunk):
            part = frames[start:start + chunk]
            tensors = np.empty((len(part), 3, *self.spec.input_size), np.float32)
            for index, frame in enumerate(part):
                preprocess_image(frame, self.spec.input_size, self.spec.mean, self.spec.std,
                                 f"query image {start + index}", channels=order,
                                 out=tensors[index:index + 1])
            probabilities = self.infer_batch(tensors, support)
            results.extend(self.postprocess(probability, _image_size(frame), return_prob)
                           for probability, frame in zip(probabilities, part, strict=True))
        return results

    @overload
    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: Literal[False] = ...,
                       pipeline: bool = ..., *, support: SupportSet | None = ...,
                       channels: str | None = ...) -> Iterator[np.ndarray]: ...

    @overload
    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: Literal[True],
                       pipeline: bool = ..., *, support: SupportSet | None = ...,
                       channels: str | None = ...
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    @overload
    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: bool,
                       pipeline: bool = ..., *, support: SupportSet | None = ...,
                       channels: str | None = ...
                       ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]: ...

    def segment_stream(self, frames: Iterable[np.ndarray], return_prob: bool = False,
                       pipeline: bool = True, *, support: SupportSet | None = None,
                       channels: str | None = None
                       ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Segment frames in order, yielding what segment() returns for each.

        With ``pipeline`` the next frame is preprocessed on a worker thread while the
        current one runs through the backend. Frames are drawn from ``frames`` in the
        calling thread, one ahead of the frame being inferred. ``support``: an
        encode_support() result used for every frame; without it each frame uses the
        support current when its inference starts, under segment()'s rule for threads.
        ``channels`` as in segment(). The arguments are checked at the call; an error of a
        frame raises at that frame; an error of ``frames`` itself raises after every frame
        it gave has been yielded.
        """
        self._check_open()
        _check_flag(return_prob, "return_prob")
        _check_flag(pipeline, "pipeline")
        if support is not None:
            self._support_for(support)
        order = self._order(channels)
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise InputError(f"frames has shape {frames.shape}; expected an iterable of "
                             "images or an [N,H,W,C] array (for one image use segment())")
        try:
            iterator = iter(frames)
        except TypeError:
            raise InputError(f"frames must be an iterable of images, got "
                             f"{type(frames).__name__}") from None
        return self._stream(iterator, return_prob, pipeline, support, order)

    def _stream(self, iterator: Iterator[np.ndarray], return_prob: bool, pipeline: bool,
                support: SupportSet | None, order: str
                ) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        if not pipeline:
            for frame in iterator:
                yield self.segment(frame, return_prob, support=support, channels=order)
            return
        self._support_for(support)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmenter-pre") as pool:
            pending: Future[tuple[np.ndarray, tuple[int, int]]] | None = None
            source_error: BaseException | None = None  # raised by ``frames`` itself

            def submit_next() -> Future[tuple[np.ndarray, tuple[int, int]]] | None:
                nonlocal source_error
                try:
                    return pool.submit(self.preprocess, next(iterator), channels=order)
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
                    probability = self.infer(tensor, support)
                except BaseException:
                    if pending is not None:
                        pending.cancel()
                    raise
                yield self.postprocess(probability, shape, return_prob)
            if source_error is not None:
                # every frame drawn before the source failed has been yielded: now its error
                raise source_error

    def _support_for(self, support: SupportSet | None) -> SupportSet:
        """``support`` when given (checked), else the cached one."""
        if support is None:
            return self._current_support()
        if not isinstance(support, SupportSet):
            raise InputError(f"support must be a SupportSet from encode_support(), got "
                             f"{type(support).__name__}")
        return support

    def _current_support(self) -> SupportSet:
        return self._support_slot.for_this_thread()


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


# The CPU backends "auto" tries, fastest first. The order is the one ``crnet bench BUNDLE
# --compare`` reports for every precision on x86 CPUs (README.md, "auto on a CPU"), so a
# machine with both installed runs the faster one; rerun that comparison to check it on
# another CPU.
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
       runs the bundle's S8S8 graph (no uint8 rewrite, slower), which the order already
       puts behind openvino;
    3. torch, for fp32, where neither CPU backend imports.

    OpenVINO runs with the f32 inference hint. Its bf16 hint (faster than f32 on a CPU
    with avx512_bf16) is never taken by "auto": it changes the fp32 variant's numbers and
    is not what the gates judged, so it is asked for by name
    (``backend="openvino", inference_precision="bf16"``).
    """
    if backend != "auto":
        backend_class(backend)  # an unknown name raises, listing the known ones
        return backend, "asked for by name"
    tensorrt: Any = backend_class("tensorrt")  # has_engines() is tensorrt's own
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
    passed_over: list[str] = []
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


def _check_flag(value: object, what: str) -> None:
    """Refuse a non-bool where a flag is expected (a string such as "no" is truthy)."""
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{what} must be True or False, got {type(value).__name__} "
                         f"{value!r}")


def _check_threshold(threshold: object) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number) \
            or not 0.0 <= float(threshold) <= 1.0:  # NaN fails the comparison too
        raise InputError(f"threshold must be a number in [0, 1] (the foreground "
                         f"probability above which a pixel is in the mask), got "
                         f"{threshold!r}")


def _check_common_options(options: dict[str, Any]) -> None:
    """Options several backends share, checked before a backend is built."""
    threads = options.get("threads")
    if threads is not None and (isinstance(threads, bool) or
                                not isinstance(threads, int | np.integer) or threads < 1):
        raise InputError(f"threads must be an int >= 1 (intra-op threads) or None (the "
                         f"backend's default), got {type(threads).__name__} {threads!r}")


def _check_backend_options(cls: type[Backend], options: dict[str, Any]) -> None:
    """Refuse options that ``cls``'s constructor does not take, naming those it does."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    taken = [name for name, p in parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY
             or (p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                 and name not in ("self", "bundle", "precision"))]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise InputError(f"the {cls.name} backend does not take the option(s) "
                         f"{', '.join(unknown)}; it takes: {', '.join(taken) or 'none'}")


def _image_size(image: object) -> tuple[int, int]:
    """(height, width) of an image that preprocess_image accepted."""
    shape = np.shape(image)
    return int(shape[0]), int(shape[1])


def _as_batch(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """segment_batch's images as a list: a sequence of images, or an [N,H,W,C] array."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise InputError(f"images has shape {images.shape}; segment_batch expects a "
                             "list of images or an [N,H,W,C] array (for one image use "
                             "segment())")
        return list(images)
    if isinstance(images, str | bytes) or not isinstance(images, Iterable):
        raise InputError(f"images must be a list of images or an [N,H,W,C] array, got "
                         f"{type(images).__name__}")
    return list(images)


def _as_list(items: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    if isinstance(items, np.ndarray):
        raise InputError(f"support {what} must be a list of arrays (one per shot), "
                         f"got one array of shape {items.shape}; wrap it: [array]")
    if isinstance(items, str | bytes):
        raise InputError(f"support {what} must be a list of arrays, got "
                         f"{type(items).__name__}")
    try:
        return list(items)
    except TypeError:
        raise InputError(f"support {what} must be a list of arrays, got "
                         f"{type(items).__name__}") from None


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise BackendError(f"{what} contain NaN or infinity (a broken variant, or an fp16 "
                           "overflow); compare this precision with fp32 using `crnet eval`")
