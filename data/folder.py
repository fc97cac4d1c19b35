"""Few-shot episodes from a folder of the user's own classes.

Layout (one directory per class; class ids are 1..N in sorted directory-name order)::

    root/<class_name>/<stem>.jpg | .jpeg | .png     images
    root/<class_name>/<stem>.mask.png               the mask of each image

Masks are single-channel PNGs (RGB ones are converted to grey). If a mask holds any value
in 1..254, it is read VOC-style: 0 background, 255 ignore, anything else foreground. A
pure black/white mask (only 0 and 255) is read as 0 background, 255 foreground.

Episode ``index``: class ``classes[index % N]``; query and a permutation of the other
images are drawn from ``SeedSequence((SALT, seed, index))``; supports are the first K of
that permutation. Every image must have a mask of the same size, and every class needs at
least shots + 1 images; violations raise errors naming the file or directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crnet.data.episodes import (
    IGNORE,
    DataNotFoundError,
    DatasetError,
    Episode,
    assemble_episode,
    check_same_size,
    check_shots,
    episode_rng,
    image_size,
    load_rgb,
)

SALT = 0xF01D_E501
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".mask.png"


def mask_path_for(image_path: Path) -> Path:
    """The mask file that belongs to ``image_path``."""
    return image_path.with_name(image_path.stem + MASK_SUFFIX)


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG as HxW uint8 0/1/255 (see the module docstring for the rule)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "1":
            return np.asarray(image, dtype=bool).astype(np.uint8)
        if image.mode not in ("L", "P"):
            image = image.convert("L")
        raw = np.asarray(image, dtype=np.uint8)
    middle = (raw > 0) & (raw < IGNORE)
    if middle.any():
        mask = middle.astype(np.uint8)
        mask[raw == IGNORE] = IGNORE
        return mask
    return (raw == IGNORE).astype(np.uint8)


class FolderDataset:
    """Seeded episodes over root/<class>/ images and masks (see the module docstring)."""

    def __init__(self, root: Path, seed: int = 0, shots: int = 1) -> None:
        self.root = Path(root)
        self.seed = int(seed)
        self.shots = check_shots(shots)
        if not self.root.is_dir():
            raise DataNotFoundError(f"dataset folder {self.root} does not exist")
        self.class_names: list[str] = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.class_names:
            raise DatasetError(f"dataset folder {self.root} has no class directories")
        self.classes: list[int] = list(range(1, len(self.class_names) + 1))
        self.images: dict[int, list[Path]] = {}
        for class_id, name in zip(self.classes, self.class_names, strict=True):
            paths = sorted(
                p for p in (self.root / name).iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not p.name.lower().endswith(MASK_SUFFIX)
            )
            for path in paths:
                mask = mask_path_for(path)
                if not mask.is_file():
                    raise DataNotFoundError(f"missing mask {mask} for image {path}")
                check_same_size(path, mask, image_size(path), image_size(mask))
            self.images[class_id] = paths

    def _check_counts(self, shots: int) -> None:
        for class_id, paths in self.images.items():
            if len(paths) < shots + 1:
                directory = self.root / self.class_names[class_id - 1]
                raise DatasetError(f"class directory {directory} has {len(paths)} images; a "
                                 f"{shots}-shot episode needs {shots + 1}")

    @staticmethod
    def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = load_rgb(path)
        mask_path = mask_path_for(path)
        mask = read_mask(mask_path)
        check_same_size(path, mask_path, image.shape[:2], mask.shape)
        return image, mask

    def episode(self, index: int, shots: int | None = None) -> Episode:
        """Episode ``index``: deterministic from (folder contents, seed, index)."""
        shots = self.shots if shots is None else check_shots(shots)
        self._check_counts(shots)
        class_id = self.classes[index % len(self.classes)]
        paths = self.images[class_id]
        rng = episode_rng(SALT, self.seed, index)
        return assemble_episode(class_id, paths, shots, rng, self._load)

    def episodes(self, count: int, shots: int | None = None, start: int = 0) -> Iterator[Episode]:
        """Episodes start .. start+count-1."""
        for index in range(start, start + count):
            yield self.episode(index, shots)
