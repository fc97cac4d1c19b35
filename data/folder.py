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

Files are checked before they are decoded (crnet.data.episodes.open_image): an image or
mask of more than crnet.runtime.preprocess.MAX_PIXELS pixels (100 MP, what a Segmenter
accepts) is refused from its header alone; a directory, a symbolic-link loop or a dangling
link where a file should be, and a file PIL cannot read or decode (a truncated PNG), raise
a DatasetError naming the file and what it is.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crnet.data.episodes import (
    IGNORE,
    DataNotFoundError,
    DatasetError,
    Episode,
    assemble_episode,
    check_same_size,
    check_shots,
    decode_image,
    episode_rng,
    image_size,
    load_rgb,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

SALT = 0xF01D_E501
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".mask.png"


def mask_path_for(image_path: Path) -> Path:
    """The mask file that belongs to ``image_path``."""
    return image_path.with_name(image_path.stem + MASK_SUFFIX)


def check_file(path: Path, what: str) -> None:
    """Raise a DatasetError naming ``path`` unless it is a regular file (or a link to
    one): a missing file, a dangling link, a link loop, a directory and a special file
    each say which they are."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise DataNotFoundError(f"{what} {path} is a symbolic link to {os.readlink(path)}, "
                                    "which does not exist") from None
        raise DataNotFoundError(f"missing {what} {path}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DatasetError(f"{what} {path} is a symbolic link loop (it resolves to "
                               "itself); expected an image file") from None
        raise DatasetError(f"cannot read {what} {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DatasetError(f"{what} {path} is a directory; expected an image file")
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{what} {path} is not a regular file; expected an image file")


def _grey(image: PILImage) -> np.ndarray:
    if image.mode == "1":
        return np.asarray(image, dtype=bool).astype(np.uint8) * np.uint8(IGNORE)
    if image.mode not in ("L", "P"):
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG as HxW uint8 0/1/255 (see the module docstring for the rule)."""
    raw = np.asarray(decode_image(path, "mask", _grey), dtype=np.uint8)
    middle = (raw > 0) & (raw < IGNORE)
    if middle.any():
        mask = middle.astype(np.uint8)
        mask[raw == IGNORE] = IGNORE
        return mask
    white: np.ndarray = (raw == IGNORE).astype(np.uint8)
    return white


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
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not p.name.lower().endswith(MASK_SUFFIX)
            )
            for path in paths:
                _check_pair(path)
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


def _check_pair(path: Path) -> None:
    """An image and its mask: both files, neither too large, of the same size."""
    check_file(path, "image")
    mask = mask_path_for(path)
    check_file(mask, "mask")
    check_same_size(path, mask, image_size(path, "image"), image_size(mask, "mask"))
