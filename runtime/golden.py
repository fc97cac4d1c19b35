"""Golden references: episodes shipped inside a bundle, with the PyTorch model's answers
(numpy only; no torch, no crnet.data).

At export (crnet.export.golden) the bundle records a fixed, seeded set of few-shot
episodes and what the PyTorch fp32 model predicts for them, through the runtime's own pre-
and post-processing. They live in one compressed file, ``golden.npz``, listed and hashed
in the manifest like every file; the manifest's ``golden`` section describes them:

```
"golden": {"file": "golden.npz", "episodes": 20, "shots": [1, ..., 5], "fold": 0,
           "seed": 0, "dataset": "synthetic-5i", "split": "test", "image_size": [H, W],
           "threshold": 0.5, "quick_episodes": 5, "reference_miou": 70.1,
           "max_abs_delta_miou": {"fp32": 0.05, "fp16": 0.3, "int8": 1.0}, ...}
```

``golden.npz`` holds uint8 ``query_images`` [E,H,W,3], ``query_masks`` [E,H,W] (0, 1,
255 = ignore), ``support_images`` [S,H,W,3] and ``support_masks`` [S,H,W] (the supports of
every episode in order, ``shots`` [E] of them per episode), int32 ``shots`` and
``class_ids`` [E], the reference's bool ``reference_masks`` [E,H,W] and float16
``reference_probabilities`` [E,h,w] (foreground probability at feature size).

``check_segmenter`` runs any Segmenter (any backend, any precision) on them and judges it
as `crnet eval` judges a variant: the gate is the largest |delta mIoU| against the
reference on the same episodes (both scored against the labels), the bundle's
``max_abs_delta_miou`` for the precision. Mask agreement and mIoU against the reference
masks are reported beside it. ``Segmenter(bundle, verify="quick"|"full")`` and
`crnet verify` call it.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Protocol

import numpy as np

from crnet.runtime.bundle import Bundle, BundleError
from crnet.runtime.files import write_bytes_atomic
from crnet.runtime.metrics import FewShotMeter
from crnet.runtime.preprocess import InputError, probability_to_mask

__all__ = ["GOLDEN_FILE", "GOLDEN_KEY", "QUICK_EPISODES", "VERIFY_MODES", "GoldenCheck",
           "GoldenCheckError", "GoldenEpisode", "GoldenSet", "NoGoldenError",
           "check_segmenter", "default_gates", "gate_of", "has_golden", "hash_check_of",
           "load_golden", "startup_check", "write_golden_file"]

GOLDEN_FILE = "golden.npz"
GOLDEN_KEY = "golden"  # the manifest section describing the file
QUICK_EPISODES = 5  # verify="quick": the first episodes (one per class of the fold)
VERIFY_MODES = ("quick", "full")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can record
_ARRAYS = ("query_images", "query_masks", "support_images", "support_masks", "shots",
           "class_ids", "reference_masks", "reference_probabilities")


class NoGoldenError(BundleError):
    """A bundle without golden references (exported before they were recorded)."""


class GoldenCheckError(BundleError):
    """A variant that fails its gate on the bundle's golden episodes; carries the check."""

    def __init__(self, check: GoldenCheck) -> None:
        super().__init__(f"{check.variant} fails its gate on the bundle's golden episodes: "
                         f"{check.summary()}")
        self.check = check


@dataclass(frozen=True)
class GoldenEpisode:
    """One golden episode: supports, query, the query's labels and the reference's answer."""

    class_id: int
    support_images: tuple[np.ndarray, ...]
    support_masks: tuple[np.ndarray, ...]
    query_image: np.ndarray
    query_mask: np.ndarray
    reference_mask: np.ndarray
    reference_probability: np.ndarray


@dataclass(frozen=True)
class GoldenSet:
    """The golden episodes of a bundle and its manifest's ``golden`` section."""

    episodes: tuple[GoldenEpisode, ...]
    entry: dict[str, Any]

    @property
    def threshold(self) -> float:
        """The foreground threshold the reference masks were made with."""
        return float(self.entry.get("threshold", 0.5))


@dataclass(frozen=True)
class GoldenCheck:
    """One variant on the golden episodes: agreement, mIoU, and the gate's verdict."""

    backend: str
    precision: str
    episodes: int
    agreement: float  # percent of query pixels whose mask matches the reference's
    miou_vs_reference: float  # mIoU with the reference masks as the labels
    miou: float  # mIoU against the labels
    reference_miou: float  # the reference's mIoU against the labels
    delta_miou: float  # miou - reference_miou
    max_abs_delta_miou: float  # the gate
    max_probability_diff: float  # largest |probability - reference| at feature size
    seconds: float

    @property
    def passed(self) -> bool:
        """Whether |delta mIoU| is within the gate."""
        return abs(self.delta_miou) <= self.max_abs_delta_miou

    @property
    def variant(self) -> str:
        """``precision on backend``, the name a failure is reported by."""
        return f"{self.precision} on {self.backend}"

    def summary(self) -> str:
        """One line: the figures and the verdict."""
        return (f"mask agreement {self.agreement:.2f}%, mIoU vs reference "
                f"{self.miou_vs_reference:.2f}, mIoU {self.miou:.2f} vs reference "
                f"{self.reference_miou:.2f} (delta {self.delta_miou:+.2f}, gate "
                f"{self.max_abs_delta_miou:.2f}) on {self.episodes} episodes: "
                f"{'pass' if self.passed else 'FAIL'}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures with the verdict."""
        return {**asdict(self), "passed": self.passed}


class SegmenterLike(Protocol):
    """What a check needs of a runtime.Segmenter (golden never imports the Segmenter)."""

    @property
    def backend_name(self) -> str: ...

    @property
    def precision(self) -> str: ...

    def encode_support(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                       channels: str | None = None) -> Any: ...

    def preprocess(self, image: np.ndarray, *, channels: str | None = None
                   ) -> tuple[np.ndarray, tuple[int, int]]: ...

    def infer(self, tensor: np.ndarray, support: Any = None) -> np.ndarray: ...

    def close(self) -> None: ...


def has_golden(bundle: Bundle) -> bool:
    """Whether the manifest describes golden references (their file is not read)."""
    entry = bundle.manifest.get(GOLDEN_KEY)
    return isinstance(entry, dict) and isinstance(entry.get("file"), str)


def _no_golden(bundle: Bundle) -> NoGoldenError:
    return NoGoldenError(
        f"bundle {bundle.root} has no golden references (its manifest has no "
        f"'{GOLDEN_KEY}' section; it was exported before bundles recorded them, or slimmed "
        "without them); add them with `crnet verify BUNDLE --record` where the [export] "
        "extra is installed, or re-export the bundle")


def load_golden(bundle: Bundle) -> GoldenSet:
    """The bundle's golden episodes, their file's sha256 checked against the manifest.

    NoGoldenError without them; BundleError for a file that is missing, modified or
    malformed."""
    if not has_golden(bundle):
        raise _no_golden(bundle)
    entry = bundle.manifest[GOLDEN_KEY]
    name = entry["file"]
    bundle.verify_files([name])  # listed, inside the bundle, sha256 as in the manifest
    path = bundle.root / name
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in _ARRAYS}
    except (OSError, ValueError, KeyError) as error:
        raise BundleError(f"{path} is not a golden-reference file ({error}); expected the "
                          f"arrays {', '.join(_ARRAYS)}; re-record it") from error
    return GoldenSet(_episodes_of(arrays, path), dict(entry))


def _episodes_of(arrays: dict[str, np.ndarray], path: Any) -> tuple[GoldenEpisode, ...]:
    """Split the packed arrays into episodes, checking shapes and dtypes first."""
    shots = arrays["shots"]
    count = len(shots)
    problems = _shape_problems(arrays, count)
    if not problems and int(shots.sum()) != len(arrays["support_images"]):
        problems.append(f"shots sum to {int(shots.sum())} but there are "
                        f"{len(arrays['support_images'])} support images")
    if problems:
        raise BundleError(f"{path} is malformed: {'; '.join(problems)}; re-record it")
    episodes, start = [], 0
    for index in range(count):
        stop = start + int(shots[index])
        episodes.append(GoldenEpisode(
            class_id=int(arrays["class_ids"][index]),
            support_images=tuple(arrays["support_images"][start:stop]),
            support_masks=tuple(arrays["support_masks"][start:stop]),
            query_image=arrays["query_images"][index],
            query_mask=arrays["query_masks"][index],
            reference_mask=arrays["reference_masks"][index],
            reference_probability=arrays["reference_probabilities"][index].astype(np.float32)))
        start = stop
    return tuple(episodes)


def _shape_problems(arrays: dict[str, np.ndarray], count: int) -> list[str]:
    """What is wrong with the packed arrays' dtypes and shapes (empty: nothing)."""
    expected = {"query_images": (np.uint8, 4), "query_masks": (np.uint8, 3),
                "support_images": (np.uint8, 4), "support_masks": (np.uint8, 3),
                "shots": (np.integer, 1), "class_ids": (np.integer, 1),
                "reference_masks": (np.bool_, 3), "reference_probabilities": (np.floating, 3)}
    problems = [f"{key} is {arrays[key].dtype} with {arrays[key].ndim} axes, expected "
                f"{np.dtype(kind).name if kind is not np.integer else 'integer'} with {ndim}"
                for key, (kind, ndim) in expected.items()
                if not np.issubdtype(arrays[key].dtype, kind) or arrays[key].ndim != ndim]
    if problems:
        return problems
    if count == 0:
        return ["it holds no episode"]
    per_episode = ("query_images", "query_masks", "class_ids", "reference_masks",
                   "reference_probabilities")
    problems += [f"{key} has {len(arrays[key])} entries for {count} episodes"
                 for key in per_episode if len(arrays[key]) != count]
    if (arrays["shots"] < 1).any():
        problems.append("an episode has no support")
    if arrays["support_images"].shape[:3] != arrays["support_masks"].shape:
        problems.append("support images and masks differ in size")
    if arrays["query_images"].shape[:3] != arrays["query_masks"].shape or \
            arrays["query_masks"].shape != arrays["reference_masks"].shape:
        problems.append("query images, their masks and the reference masks differ in size")
    return problems


def write_golden_file(path: Any, episodes: Sequence[GoldenEpisode]) -> int:
    """Pack ``episodes`` (all images one size) into a compressed ``.npz`` at ``path``,
    atomically and byte-reproducibly; returns its size in bytes."""
    if not episodes:
        raise InputError("golden references need at least one episode")
    arrays: dict[str, np.ndarray] = {
        "query_images": np.stack([e.query_image for e in episodes]).astype(np.uint8),
        "query_masks": np.stack([e.query_mask for e in episodes]).astype(np.uint8),
        "support_images": np.stack([image for e in episodes
                                    for image in e.support_images]).astype(np.uint8),
        "support_masks": np.stack([mask for e in episodes
                                   for mask in e.support_masks]).astype(np.uint8),
        "shots": np.array([len(e.support_images) for e in episodes], np.int32),
        "class_ids": np.array([e.class_id for e in episodes], np.int32),
        "reference_masks": np.stack([e.reference_mask for e in episodes]).astype(bool),
        "reference_probabilities": np.stack(
            [e.reference_probability for e in episodes]).astype(np.float16),
    }
    buffer = io.BytesIO()
    # np.savez_compressed's layout (one deflated .npy per array) with a fixed timestamp, so
    # the same episodes and answers give the same bytes, and the same sha256, every time
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    return len(data)


def default_gates() -> dict[str, float]:
    """Allowed |delta mIoU| per precision from crnet-deploy's one tolerance file
    (``crnet/gates.json``, read as package data)."""
    text = resources.files("crnet").joinpath("gates.json").read_text()
    gates = json.loads(text)["max_abs_delta_miou"]
    return {str(key): float(value) for key, value in gates.items()}


def gate_of(golden: GoldenSet, precision: str) -> float:
    """The gate of ``precision``: the one recorded with the golden references, else the
    installed tolerance file's."""
    recorded = golden.entry.get("max_abs_delta_miou")
    if isinstance(recorded, dict) and isinstance(recorded.get(precision), int | float):
        return float(recorded[precision])
    gates = default_gates()
    if precision not in gates:
        raise BundleError(f"no accuracy gate for precision {precision!r}; the gates cover "
                          f"{sorted(gates)}")
    return gates[precision]


@dataclass
class _Tally:
    """What a check accumulates over the episodes."""

    to_labels: FewShotMeter
    to_reference: FewShotMeter
    reference_to_labels: FewShotMeter
    agree: int = 0
    pixels: int = 0
    max_probability_diff: float = 0.0


def check_segmenter(segmenter: SegmenterLike, golden: GoldenSet,
                    episodes: int | None = None, gate: float | None = None) -> GoldenCheck:
    """Run ``segmenter`` on the first ``episodes`` golden episodes (None: all) and judge it.

    The masks are made at the reference's threshold and the images read as RGB, whatever
    the Segmenter's own threshold and channel order; its cached support is left alone.
    ``gate``: the largest |delta mIoU| allowed (None: ``gate_of`` the precision).
    """
    chosen = golden.episodes if episodes is None else golden.episodes[:episodes]
    if not chosen:
        raise InputError(f"episodes must be at least 1, got {episodes}")
    classes = sorted({episode.class_id for episode in chosen})
    tally = _Tally(FewShotMeter(classes), FewShotMeter(classes), FewShotMeter(classes))
    started = time.perf_counter()
    for episode in chosen:
        support = segmenter.encode_support(list(episode.support_images),
                                           list(episode.support_masks), channels="rgb")
        tensor, shape = segmenter.preprocess(episode.query_image, channels="rgb")
        probability = segmenter.infer(tensor, support)
        mask = probability_to_mask(probability, shape, golden.threshold)
        reference = episode.reference_mask
        tally.agree += int(np.count_nonzero(mask == reference))
        tally.pixels += mask.size
        tally.max_probability_diff = max(tally.max_probability_diff, float(np.max(np.abs(
            probability - episode.reference_probability))))
        tally.to_labels.update(episode.class_id, mask, episode.query_mask)
        tally.to_reference.update(episode.class_id, mask, reference.astype(np.uint8))
        tally.reference_to_labels.update(episode.class_id, reference, episode.query_mask)
    miou, reference_miou = tally.to_labels.miou(), tally.reference_to_labels.miou()
    return GoldenCheck(
        backend=segmenter.backend_name, precision=segmenter.precision, episodes=len(chosen),
        agreement=100.0 * tally.agree / tally.pixels,
        miou_vs_reference=tally.to_reference.miou(), miou=miou, reference_miou=reference_miou,
        delta_miou=miou - reference_miou,
        max_abs_delta_miou=gate if gate is not None else gate_of(golden, segmenter.precision),
        max_probability_diff=tally.max_probability_diff,
        seconds=round(time.perf_counter() - started, 3))


def hash_check_of(verify: object) -> bool:
    """Whether a Segmenter's ``verify`` asks for the files' sha256 check: True, "quick" and
    "full" do, False does not; anything else raises InputError."""
    if isinstance(verify, bool | np.bool_):
        return bool(verify)
    if isinstance(verify, str) and verify in VERIFY_MODES:
        return True
    raise InputError(f"verify must be True or False (check every file's sha256, or not), or "
                     f"'quick' or 'full' (also run the bundle's golden episodes, "
                     f"{QUICK_EPISODES} or all), got {type(verify).__name__} {verify!r}")


def startup_check(segmenter: SegmenterLike, bundle: Bundle, mode: object) -> GoldenCheck | None:
    """``Segmenter(verify=mode)``'s golden check: None for a bool ``mode``; else run
    ``QUICK_EPISODES`` ("quick") or every episode ("full"). On a failed gate, or a bundle
    without golden references, close ``segmenter`` and raise GoldenCheckError /
    NoGoldenError naming the variant."""
    if not isinstance(mode, str):
        return None
    try:
        golden = load_golden(bundle)
        check = check_segmenter(segmenter, golden,
                                QUICK_EPISODES if mode == "quick" else None)
    except BaseException:
        segmenter.close()
        raise
    if not check.passed:
        segmenter.close()
        raise GoldenCheckError(check)
    return check
