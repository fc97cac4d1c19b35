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
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data.episodes import (
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
                 shots: int = 1, min_pixels: int = DEFAULT_MIN_PIXELS) -> None:
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

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        return self.image_dir / f"{image_id}.jpg", self.label_dir / f"{image_id}.png"

    @property
    def images_by_class(self) -> dict[int, list[str]]:
        """Image ids containing each class of the split (built on first use)."""
        if self._by_class is None:
            by_class: dict[int, list[str]] = {c: [] for c in self.classes}
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
                for c in self.classes:
                    if counts[c] >= self.min_pixels:
                        by_class[c].append(image_id)
            self._by_class = by_class
        return self._by_class

    def _check_counts(self, shots: int) -> None:
        for c, ids in self.images_by_class.items():
            if len(ids) < shots + 1:
                raise DatasetError(
                    f"class {c} ({VOC_CLASS_NAMES[c - 1]}) has {len(ids)} images in "
                    f"{self.list_file} with >= {self.min_pixels} pixels; a {shots}-shot "
                    f"episode needs {shots + 1}"
                )

    def _load(self, image_id: str, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self._paths(image_id)
        image = load_rgb(image_path)
        label = read_label(label_path)
        check_same_size(image_path, label_path, image.shape[:2], label.shape)
        return image, class_mask(label, class_id)

    def episode(self, index: int, shots: int | None = None) -> Episode:
        """Episode ``index``: deterministic from (root contents, fold, split, seed, index)."""
        shots = self.shots if shots is None else check_shots(shots)
        self._check_counts(shots)
        rng = episode_rng(SALT, self.fold, SPLIT_CODE[self.split], self.seed, index)
        class_id = self.classes[int(rng.integers(len(self.classes)))]
        ids = self.images_by_class[class_id]
        return assemble_episode(class_id, ids, shots, rng,
                                lambda image_id: self._load(image_id, class_id))

    def episodes(self, count: int = 1000, shots: int | None = None,
                 start: int = 0) -> Iterator[Episode]:
        """Episodes start .. start+count-1 (1000 per fold is the standard protocol)."""
        for index in range(start, start + count):
            yield self.episode(index, shots)
