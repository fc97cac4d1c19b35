"""The few-shot episode shared by every data source, and the PASCAL-5i fold split."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from crnet.runtime.errors import CrnetError
from crnet.runtime.metrics import IGNORE
from crnet.runtime.preprocess import MAX_PIXELS

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["CLASSES_PER_FOLD", "IGNORE", "NUM_CLASSES", "NUM_FOLDS", "SPLITS", "DataNotFoundError",
           "DatasetError", "Episode", "assemble_episode", "check_fold", "check_shots",
           "check_split", "class_mask", "decode_image", "draw_query_and_supports",
           "episode_rng", "fold_classes", "image_size", "load_rgb", "novel_classes",
           "open_image"]

T = TypeVar("T")

NUM_CLASSES = 20
NUM_FOLDS = 4
CLASSES_PER_FOLD = 5
SPLITS = ("train", "test")


class DatasetError(CrnetError, ValueError):
    """Episodes that cannot be made: a bad fold/split/shots value, or data that is missing
    or malformed (the message names the file)."""


class DataNotFoundError(DatasetError, FileNotFoundError):
    """A dataset directory, image or mask that does not exist."""


@dataclass(frozen=True)
class Episode:
    """K labelled supports and one query, all of one class.

    Images are HxWx3 uint8 RGB; masks are HxW uint8 with 0 = background,
    1 = the episode's class, 255 = ignore.
    """

    class_id: int
    support_images: tuple[np.ndarray, ...]
    support_masks: tuple[np.ndarray, ...]
    query_image: np.ndarray
    query_mask: np.ndarray

    @property
    def shots(self) -> int:
        """Number of support images (K)."""
        return len(self.support_images)


def check_fold(fold: int) -> int:
    """Return ``fold`` or raise a DatasetError if it is not 0..3."""
    if not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < NUM_FOLDS:
        raise DatasetError(f"fold must be an integer in 0..{NUM_FOLDS - 1}, got {fold!r}")
    return int(fold)


def check_split(split: str) -> str:
    """Return ``split`` or raise a DatasetError if it is not 'train' or 'test'."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_shots(shots: int) -> int:
    """Return ``shots`` or raise a DatasetError if it is not a positive integer."""
    if not isinstance(shots, (int, np.integer)) or int(shots) < 1:
        raise DatasetError(f"shots must be a positive integer, got {shots!r}")
    return int(shots)


def novel_classes(fold: int) -> list[int]:
    """The 5 novel (test) class ids of ``fold``: 5*fold+1 .. 5*fold+5."""
    fold = check_fold(fold)
    return list(range(CLASSES_PER_FOLD * fold + 1, CLASSES_PER_FOLD * fold + CLASSES_PER_FOLD + 1))


def fold_classes(fold: int, split: str) -> list[int]:
    """Class ids of a fold's split: 'train' -> the 15 base classes, 'test' -> the 5 novel ones."""
    novel = novel_classes(fold)
    if check_split(split) == "test":
        return novel
    return [c for c in range(1, NUM_CLASSES + 1) if c not in novel]


def assemble_episode(class_id: int, items: Sequence[T], shots: int, rng: np.random.Generator,
                     load: Callable[[T], tuple[np.ndarray, np.ndarray]]) -> Episode:
    """An episode from one class's items: a random query and ``shots`` other items as
    supports, each turned into (image, mask) by ``load``."""
    query, others = draw_query_and_supports(len(items), shots, rng)
    supports = [load(items[i]) for i in others]
    query_image, query_mask = load(items[query])
    return Episode(
        class_id=class_id,
        support_images=tuple(s[0] for s in supports),
        support_masks=tuple(s[1] for s in supports),
        query_image=query_image,
        query_mask=query_mask,
    )


def draw_query_and_supports(count: int, shots: int, rng: np.random.Generator
                            ) -> tuple[int, list[int]]:
    """Indices into ``count`` items: a random query and the first ``shots`` of a random
    permutation of the others (so a K-shot draw extends the 1-shot one)."""
    query = int(rng.integers(count))
    others = [int(i) for i in rng.permutation(count) if i != query][:shots]
    return query, others


def class_mask(label: np.ndarray, class_id: int) -> np.ndarray:
    """Binary episode mask from a class-id label map: 1 where label == class_id, 255 kept."""
    mask = (label == class_id).astype(np.uint8)
    mask[label == IGNORE] = IGNORE
    return mask


def episode_rng(*key: int) -> np.random.Generator:
    """A numpy Generator seeded from a tuple of non-negative ints (never Python's hash())."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def open_image(path: Path, what: str = "image") -> PILImage:
    """``path`` opened by PIL, its header read and nothing decoded; refused when it is not
    an image or has more than MAX_PIXELS pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # MAX_PIXELS below is the limit: PIL's own warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        # PIL refuses sizes past twice its own limit before giving the size; it names
        # the pixel count in its message
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found[1]) if found else 2 * (Image.MAX_IMAGE_PIXELS or 0)
        size = f"{pixels / 1e6:.0f} MP" if found else f"over {pixels / 1e6:.0f} MP"
        raise _too_large(path, what, size) from None
    except FileNotFoundError:
        raise DataNotFoundError(f"{what} {path} does not exist") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read {what} {path}: {error}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise _too_large(path, what, f"{width}x{height} ({width * height / 1e6:.0f} MP)")
    return image


def _too_large(path: Path, what: str, size: str) -> DatasetError:
    return DatasetError(f"{what} {path} is {size}; at most {MAX_PIXELS / 1e6:.0f} MP is "
                        "accepted (read from its header, nothing decoded): downscale it")


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(height, width) of an image file from its header only, checked as open_image does."""
    with open_image(path, what) as image:
        width, height = image.size
    return height, width


def decode_image(path: Path, what: str, convert: Callable[[PILImage], np.ndarray]
                 ) -> np.ndarray:
    """``convert(image)`` of the opened, size-checked file; a decoding error (a truncated
    or corrupt file) names the file."""
    with open_image(path, what) as image:
        try:
            return convert(image)
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"cannot decode {what} {path}: {error}") from None


def _rgb(image: PILImage) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_rgb(path: Path, what: str = "image") -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, size-checked from its header before decoding."""
    return decode_image(path, what, _rgb)


def check_same_size(image_path: Path, mask_path: Path, image_hw: tuple[int, int],
                    mask_hw: tuple[int, int]) -> None:
    """Raise a DatasetError naming both files when an image and its mask differ in size."""
    if tuple(image_hw) != tuple(mask_hw):
        raise DatasetError(
            f"mask size {mask_hw[1]}x{mask_hw[0]} of {mask_path} does not match image size "
            f"{image_hw[1]}x{image_hw[0]} of {image_path}"
        )
