"""Calibration inputs for both graphs, built from base-class episodes (never the test split)
of any dataset data.evaluation.episode_source opens (synthetic-5i, pascal-5i, folder).

Every array goes through runtime.preprocess, the one preprocessing of the runtime:

* backbone graph: ``image`` = the episode's support images then its query, [K+1,3,H,W];
* refine graph: ``query_feat``, ``support_feat`` = the fp32 backbone's features of those
  images, ``support_mask`` = the preprocessed support masks [K,1,h,w].

``EpisodeFeeds`` holds these feed dicts (and the ground truth needed to score them);
``FeedReader`` serves a list of feeds to ONNX Runtime's calibrators. The same arguments
always give the same arrays (episodes are seeded, preprocessing is pure numpy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.data.episodes import Episode
from crnet.runtime.bundle import Bundle
from crnet.runtime.preprocess import preprocess_image, preprocess_mask
from crnet.runtime.progress import track

CALIBRATION_SPLIT = "train"  # base classes only: the novel test classes are never seen
DEFAULT_DATASET = "synthetic-5i"
Feed = dict[str, np.ndarray]


@dataclass
class EpisodeFeeds:
    """Preprocessed graph inputs of a list of episodes, and what is needed to score them."""

    backbone: list[Feed] = field(default_factory=list)
    refine: list[Feed] = field(default_factory=list)
    class_ids: list[int] = field(default_factory=list)
    query_shapes: list[tuple[int, int]] = field(default_factory=list)
    query_masks: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.backbone)


class FeedReader:
    """An onnxruntime ``CalibrationDataReader`` over a fixed list of feed dicts.

    Deterministic: ``rewind()`` restarts it and it yields the same arrays again.
    """

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self.feeds = list(feeds)
        self.start, self.end = 0, len(self.feeds)
        self.position = 0

    def get_next(self) -> Feed | None:
        """The next feed dict, or None at the end."""
        if self.position >= self.end:
            return None
        feed = self.feeds[self.position]
        self.position += 1
        return feed

    def rewind(self) -> None:
        """Start again from the first feed of the current range."""
        self.position = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only feeds[start_index:end_index] (ORT's strided calibration uses this)."""
        self.start, self.end = start_index, min(end_index, len(self.feeds))
        self.position = self.start

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Any:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed


def calibration_source(fold: int, seed: int = 0, dataset: str = DEFAULT_DATASET,
                       data_root: Path | None = None) -> Any:
    """The episode source calibration reads: ``dataset``'s base classes of ``fold``, train
    split (data.evaluation.episode_source, the one place a dataset is opened).

    A ``folder`` dataset has no split: its classes are the user's own, all of them read.
    """
    from crnet.data.evaluation import episode_source

    return episode_source(dataset, fold, seed, data_root, split=CALIBRATION_SPLIT)


def describe_source(source: Any, dataset: str, fold: int,
                    data_root: Path | None = None) -> dict[str, Any]:
    """What calibrated (or checked) a variant, for the manifest: dataset, split, fold,
    class ids and, for data on disk, the root directory."""
    split = getattr(source, "split", None)
    record: dict[str, Any] = {
        "dataset": dataset,
        "split": split if split is not None else "all (a folder dataset has no split)",
        "fold": fold,
        "classes": [int(c) for c in getattr(source, "classes", [])],
    }
    if data_root is not None:
        record["data_root"] = str(Path(data_root).resolve())
    return record


def describe_data(description: dict[str, Any]) -> str:
    """One line: "pascal-5i fold 0 train split (base classes 6..20)"."""
    if description.get("split") not in ("train", "test"):
        return f"{description['dataset']} ({description['split']})"
    return (f"{description['dataset']} fold {description['fold']} {description['split']} "
            f"split (base classes only: {description['classes']})")


def base_episodes(fold: int, count: int, shots: int = 1, seed: int = 0,
                  start: int = 0, dataset: str = DEFAULT_DATASET,
                  data_root: Path | None = None, source: Any = None) -> Iterable[Episode]:
    """Episodes ``start .. start+count-1`` of ``dataset``'s base-class (train) split of
    ``fold`` (``source``: an already opened calibration_source, to reuse its index)."""
    if count < 1:
        raise ValueError(f"need at least one calibration episode, got {count}")
    if source is None:
        source = calibration_source(fold, seed, dataset, data_root)
    return (source.episode(index, shots=shots) for index in range(start, start + count))


def episode_arrays(episode: Episode, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Images [K+1,3,H,W] (supports, then the query) and support masks [K,1,h,w]."""
    input_size = manifest["input_size"]
    feature_size = manifest["feature_size"]
    preprocessing = manifest["preprocessing"]
    mean, std = preprocessing["mean"], preprocessing["std"]
    images = [preprocess_image(image, input_size, mean, std, what=f"support image {i}")
              for i, image in enumerate(episode.support_images)]
    images.append(preprocess_image(episode.query_image, input_size, mean, std,
                                   what="query image"))
    masks = [preprocess_mask(mask, input_size, feature_size, image_shape=image.shape,
                             what=f"support mask {i}")
             for i, (mask, image) in enumerate(zip(episode.support_masks,
                                                   episode.support_images, strict=True))]
    return np.concatenate(images), np.concatenate(masks)


def cpu_session(path: str | Path | bytes) -> Any:
    """A quiet single-model ONNX Runtime CPU session (path or serialized model)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def collect_feeds(bundle_dir: str | Path, episodes: Iterable[Episode], total: int | None = None,
                  progress: bool = True, description: str = "calibration episodes"
                  ) -> EpisodeFeeds:
    """Preprocess ``episodes`` and run the bundle's fp32 backbone to get refine inputs."""
    bundle = Bundle.load(bundle_dir, verify=False)
    backbone = cpu_session(bundle.graph_path("backbone", "fp32"))
    feeds = EpisodeFeeds()
    for episode in track(episodes, progress, description, total=total):
        images, masks = episode_arrays(episode, bundle.manifest)
        (features,) = backbone.run(None, {"image": images})
        shots = episode.shots
        feeds.backbone.append({"image": images})
        feeds.refine.append({"query_feat": np.ascontiguousarray(features[shots:]),
                             "support_feat": np.ascontiguousarray(features[:shots]),
                             "support_mask": masks})
        feeds.class_ids.append(int(episode.class_id))
        feeds.query_shapes.append(tuple(episode.query_image.shape[:2]))
        feeds.query_masks.append(episode.query_mask)
    if not len(feeds):
        raise ValueError("no calibration episodes were produced")
    return feeds
