"""PASCAL-5i episodes from VOC2012 + SBD (SegmentationClassAug) on the user's disk.

Layout under ``root`` (the usual VOC2012 directory with SBD-aug labels added)::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png      (class-id label maps, 255 = ignore;
                                        SegmentationClass/ is used if Aug is absent)
    ImageSets/Segmentation/val.txt     (test split)
    ImageSets/Segmentation/train_aug.txt, else ImageSets/SegmentationAug/train_aug.txt,
    else ImageSets/Segmentation/train.txt   (train split)

List lines may be bare ids (``2007_000032``) or DeepLab-style pairs
(``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``); the id is the
stem of the first token. Label PNGs may be palette (P) or grey (L) images holding class
ids.

An image belongs to class c when it has at least ``min_pixels`` pixels of c (PFENet's
rule, 2*32*32). Indexing reads every label map of the split once (seconds for val).
Episode ``index``: class, query and a permutation of the other images of that class
are drawn from ``SeedSequence((SALT, fold, split, seed, index))``; the K supports are the
first K of that permutation, so a K-shot episode extends the 1-shot one.

How the query and its class are drawn (``sampler``; FB-IoU, pooled over all episodes,
depends on the class mix; per-class IoU does not):

* ``uniform`` (the default): the class uniformly from the fold's 5, then a query image of
  it. Class-balanced in expectation; reproduces neither evaluator's class mix exactly.
* ``hsnet``: HSNet's walk. A list of (image, class) pairs, one per novel class present in
  each image of the split list (image-major, classes ascending), is walked in order,
  episode i = pair i mod length, so the mix follows the data (fold 2 of VOC val is
  ~54% person). HSNet reads its own fold list files, whose order may differ from the
  split list's, and the pairs here pass the ``min_pixels`` filter, so the mix is close to
  but not always exactly HSNet's. HSNet evaluates 1000 episodes, seed 0.
* ``pfenet``: PFENet's walk. The images holding at least one novel class are walked in
  order (episode i = image i mod count) and a novel class present in the image is drawn.
  PFENet evaluates 5000 episodes with seed 321 at the original image size.

Supports are always drawn from ``rng`` among the other images of the episode's class.
Use ``crnet eval --dataset pascal-5i --sampler hsnet --episodes 1000 --seed 0`` for an
HSNet-comparable FB-IoU and ``--sampler pfenet --episodes 5000 --seed 321`` for PFENet's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crnet.data.episodes import (
    DataNotFoundError,
    DatasetError,
    Episode,
    assemble_episode,
    check_fold,
    check_same_size,
    check_shots,
    check_split,
    class_mask,
    episode_rng,
    fold_classes,
    image_size,
    load_rgb,
)

SALT = 0x5A5C_A15F
SPLIT_CODE = {"train": 1, "test": 2}
DEFAULT_MIN_PIXELS = 2 * 32 * 32
SAMPLERS = ("uniform", "hsnet", "pfenet")

VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def _list_file(root: Path, split: str) -> Path:
    if split == "test":
        candidates = [root / "ImageSets" / "Segmentation" / "val.txt"]
    else:
        candidates = [root / "ImageSets" / "Segmentation" / "train_aug.txt",
                      root / "ImageSets" / "SegmentationAug" / "train_aug.txt",
                      root / "ImageSets" / "Segmentation" / "train.txt"]
    for path in candidates:
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"no {split} image list under {root}; looked for "
        + ", ".join(str(p) for p in candidates)
    )


def _read_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens:
            ids.append(Path(tokens[0]).stem)
    if not ids:
        raise DatasetError(f"image list {path} is empty")
    return ids


def read_label(path: Path) -> np.ndarray:
    """A class-id label map (P or L PNG) as HxW uint8."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            image = image.convert("L")
        return np.asarray(image, dtype=np.uint8)


class Pascal5i:
    """Seeded PASCAL-5i episodes of one fold and split (see the module docstring)."""

    def __init__(self, root: Path, fold: int, split: str = "test", seed: int = 0,
                 shots: int = 1, min_pixels: int = DEFAULT_MIN_PIXELS,
                 sampler: str = "uniform") -> None:
        if sampler not in SAMPLERS:
            raise DatasetError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.sampler = sampler
        self.root = Path(root)
        self.fold = check_fold(fold)
        self.split = check_split(split)
        self.seed = int(seed)
        self.shots = check_shots(shots)
        self.min_pixels = int(min_pixels)
        self.classes: list[int] = fold_classes(self.fold, self.split)
        label_dir = self.root / "SegmentationClassAug"
        if not label_dir.is_dir():
            label_dir = self.root / "SegmentationClass"
        self.label_dir = label_dir
        self.image_dir = self.root / "JPEGImages"
        self.list_file = _list_file(self.root, self.split)
        self.ids = _read_ids(self.list_file)
        self._by_class: dict[int, list[str]] | None = None
        self._present: dict[str, list[int]] | None = None
        self._walk: list[tuple[str, int | None]] | None = None

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        return self.image_dir / f"{image_id}.jpg", self.label_dir / f"{image_id}.png"

    @property
    def classes_present(self) -> dict[str, list[int]]:
        """Per image id of the split list, the VOC classes (1..20) it holds with at least
        ``min_pixels`` pixels (every label map read once, on first use)."""
        if self._present is None:
            present: dict[str, list[int]] = {}
            for image_id in self.ids:
                image_path, label_path = self._paths(image_id)
                if not image_path.is_file():
                    raise DataNotFoundError(f"image {image_path} listed in {self.list_file} "
                                            "does not exist")
                if not label_path.is_file():
                    raise DataNotFoundError(f"mask {label_path} for image {image_path} "
                                            "does not exist")
                label = read_label(label_path)
                check_same_size(image_path, label_path, image_size(image_path), label.shape)
                counts = np.bincount(label.ravel(), minlength=256)
                present[image_id] = [c for c in range(1, len(VOC_CLASS_NAMES) + 1)
                                     if counts[c] >= self.min_pixels]
            self._present = present
        return self._present

    @property
    def images_by_class(self) -> dict[int, list[str]]:
        """Image ids containing each class of the split (built on first use)."""
        if self._by_class is None:
            by_class: dict[int, list[str]] = {c: [] for c in self.classes}
            for image_id, classes in self.classes_present.items():
                for c in classes:
                    if c in by_class:
                        by_class[c].append(image_id)
            self._by_class = by_class
        return self._by_class

    def images_with_class(self, class_id: int) -> list[str]:
        """Image ids of the split list holding any VOC class (base or novel)."""
        return [i for i, classes in self.classes_present.items() if class_id in classes]

    def query_walk(self) -> list[tuple[str, int | None]]:
        """The sampler's fixed walk: (image, class) pairs for ``hsnet``, (image, None) for
        ``pfenet`` (the class is drawn per episode); empty for ``uniform``."""
        wanted = set(self.classes)
        if self.sampler == "hsnet":
            return [(i, c) for i, classes in self.classes_present.items()
                    for c in classes if c in wanted]
        if self.sampler == "pfenet":
            return [(i, None) for i, classes in self.classes_present.items()
                    if wanted.intersection(classes)]
        return []

    def _check_counts(self, shots: int) -> None:
        short = [(c, len(ids)) for c, ids in self.images_by_class.items() if len(ids) < shots + 1]
        if short:
            listed = ", ".join(f"class {c} ({VOC_CLASS_NAMES[c - 1]}) has {count} images"
                               for c, count in short)
            raise DatasetError(
                f"{listed} in {self.list_file} with >= {self.min_pixels} pixels; a "
                f"{shots}-shot episode needs {shots + 1} images of each class of fold "
                f"{self.fold} ({self.split})"
            )

    def _load(self, image_id: str, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self._paths(image_id)
        image = load_rgb(image_path)
        label = read_label(label_path)
        check_same_size(image_path, label_path, image.shape[:2], label.shape)
        return image, class_mask(label, class_id)

    def episode(self, index: int, shots: int | None = None) -> Episode:
        """Episode ``index``: deterministic from (root contents, fold, split, seed, index,
        sampler)."""
        shots = self.shots if shots is None else check_shots(shots)
        self._check_counts(shots)
        rng = episode_rng(SALT, self.fold, SPLIT_CODE[self.split], self.seed, index)
        if self.sampler == "uniform":
            class_id = self.classes[int(rng.integers(len(self.classes)))]
            ids = self.images_by_class[class_id]
            return assemble_episode(class_id, ids, shots, rng,
                                    lambda image_id: self._load(image_id, class_id))
        if self._walk is None:
            self._walk = self.query_walk()
        query_id, class_id = self._walk[index % len(self._walk)]
        if class_id is None:  # pfenet: a novel class present in the image
            choices = [c for c in self.classes_present[query_id] if c in self.classes]
            class_id = choices[int(rng.integers(len(choices)))]
        others = [i for i in self.images_by_class[class_id] if i != query_id]
        chosen = [others[int(k)] for k in rng.permutation(len(others))[:shots]]
        supports = [self._load(image_id, class_id) for image_id in chosen]
        query_image, query_mask = self._load(query_id, class_id)
        return Episode(class_id=class_id, support_images=tuple(s[0] for s in supports),
                       support_masks=tuple(s[1] for s in supports), query_image=query_image,
                       query_mask=query_mask)

    def swapped_support_episodes(self, count: int, salt: int = 7919
                                 ) -> tuple[list[Episode], list[Episode]]:
        """Pairs of 1-shot episodes on the same queries, for the support-swap evidence: the
        true support (another image of the query's novel class), and a support of another
        VOC class present in the query (another image holding it, its mask). Queries are
        walked in list order; only those holding a second class with another image count."""
        true_episodes: list[Episode] = []
        swapped: list[Episode] = []
        for index, (query_id, class_id) in enumerate(
                (i, c) for i, classes in self.classes_present.items() for c in classes
                if c in self.classes):
            if len(true_episodes) >= count:
                break
            rng = episode_rng(salt, self.fold, SPLIT_CODE[self.split], self.seed, index)
            same = [i for i in self.images_by_class[class_id] if i != query_id]
            others = [c for c in self.classes_present[query_id] if c != class_id]
            if not same or not others:
                continue
            other = others[int(rng.integers(len(others)))]
            holding = [i for i in self.images_with_class(other) if i != query_id]
            if not holding:
                continue
            query_image, query_mask = self._load(query_id, class_id)
            true_image, true_mask = self._load(same[int(rng.integers(len(same)))], class_id)
            other_image, other_mask = self._load(holding[int(rng.integers(len(holding)))],
                                                 other)
            true_episodes.append(Episode(class_id, (true_image,), (true_mask,), query_image,
                                         query_mask))
            swapped.append(Episode(class_id, (other_image,), (other_mask,), query_image,
                                   query_mask))
        return true_episodes, swapped

    def episodes(self, count: int = 1000, shots: int | None = None,
                 start: int = 0) -> Iterator[Episode]:
        """Episodes start .. start+count-1 (1000 per fold is the standard protocol)."""
        for index in range(start, start + count):
            yield self.episode(index, shots)
