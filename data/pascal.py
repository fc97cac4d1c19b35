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

Which (query, class, supports) each episode uses is its *plan* (``Pascal5i.plan``, what
`crnet episodes` writes); ``episode(index)`` loads the images of plan entry ``index``.
``sampler`` picks how plans are drawn (docs/pascal-samplers.md has the table of what each
reproduces, as far as tests/data/test_reference_samplers.py shows):

* ``uniform`` (the default): episode ``index`` is drawn alone from
  ``SeedSequence((SALT, fold, split, seed, index))``: the class uniformly from the fold's
  classes, a query image of it, and the first K of a permutation of its other images as
  supports (a K-shot episode extends the 1-shot one). Class-balanced in expectation.
* ``hsnet``: HSNet's test loop. Episode i is entry ``i mod length`` of a list of
  (image, class) pairs; each support is drawn with ``RandomState(seed).choice(pool, 1,
  replace=False)`` from one RNG running through all episodes (HSNet's ``fix_randseed``),
  the pool being the list's images of that class, redrawn only when it is the query, so
  K-shot supports may repeat an image. The list is HSNet's published one for the fold
  (data/splits/hsnet) when every image it names is in the tree's val list (the standard
  VOC2012 + SBD tree), else every (image, fold class) pair with at least ``min_pixels``
  pixels, sorted by image id then class (the published lists' order). HSNet evaluates
  1000 episodes with seed 0.
* ``pfenet``: PFENet's test loop with ``workers: 0``. The images holding a fold class with
  at least ``min_pixels`` pixels are walked in list order, at most 20 passes; each draws
  its class with Python's ``random.Random(seed)`` among the fold classes in its label at
  any pixel count, then K supports among the images holding that class with
  ``min_pixels``, each after one discarded draw, rejecting the query and repeats; the
  supports are stacked last-drawn first. PFENet's ``test_num = 5000`` evaluates 5001
  episodes (``--episodes 5001 --seed 321``). With DataLoader workers PFENet seeds each
  worker's ``random`` from torch's RNG, which is not reproduced.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crnet.data.episodes import (
    DataNotFoundError,
    DatasetError,
    Episode,
    check_fold,
    check_same_size,
    check_shots,
    check_split,
    class_mask,
    decode_image,
    draw_query_and_supports,
    episode_rng,
    fold_classes,
    image_size,
    load_rgb,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

SALT = 0x5A5C_A15F
SPLIT_CODE = {"train": 1, "test": 2}
DEFAULT_MIN_PIXELS = 2 * 32 * 32
SAMPLERS = ("uniform", "hsnet", "pfenet")
HSNET_LISTS = ("auto", "published", "rule")
"""Which (image, class) list the hsnet sampler walks: the published one when the tree
holds its images (auto), always the published one, or always the pixel rule."""
PFENET_MAX_PASSES = 20
"""PFENet's test loop stops after this many passes over its query images."""

VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass(frozen=True)
class PlannedEpisode:
    """The images of one episode: the query id, the VOC class (1..20) and the support ids
    in the order they are stacked for the model."""

    query: str
    class_id: int
    supports: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: query, class, class_name, supports."""
        return {"query": self.query, "class": self.class_id,
                "class_name": VOC_CLASS_NAMES[self.class_id - 1],
                "supports": list(self.supports)}


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
    """A class-id label map (P or L PNG) as HxW uint8, size-checked from its header."""
    return decode_image(path, "label", _class_ids)


def _class_ids(image: PILImage) -> np.ndarray:
    if image.mode not in ("P", "L"):
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def published_hsnet_list(fold: int) -> list[tuple[str, int]]:
    """HSNet's published test list of ``fold`` (data/splits/hsnet/pascal/val): (image id,
    VOC class 1..20) pairs in file order."""
    fold = check_fold(fold)
    name = f"splits/hsnet/pascal/val/fold{fold}.txt"
    text = resources.files("crnet.data").joinpath(name).read_text()
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        image_id, _, class_text = line.strip().partition("__")
        if not image_id or not class_text.isdigit():
            raise DatasetError(f"line {number} of crnet.data/{name} is {line!r}; expected "
                               "<image id>__<class number>")
        pairs.append((image_id, int(class_text)))
    return pairs


class Pascal5i:
    """Seeded PASCAL-5i episodes of one fold and split (see the module docstring)."""

    def __init__(self, root: Path, fold: int, split: str = "test", seed: int = 0,
                 shots: int = 1, min_pixels: int = DEFAULT_MIN_PIXELS,
                 sampler: str = "uniform", hsnet_lists: str = "auto") -> None:
        if sampler not in SAMPLERS:
            raise DatasetError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if hsnet_lists not in HSNET_LISTS:
            raise DatasetError(f"hsnet_lists must be one of {HSNET_LISTS}, got "
                               f"{hsnet_lists!r}")
        self.sampler = sampler
        self.hsnet_lists = hsnet_lists
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
        self._counts: dict[str, np.ndarray] | None = None
        self._present: dict[str, list[int]] | None = None
        self._hsnet_pairs: list[tuple[str, int]] | None = None
        self._hsnet_source: str | None = None
        self._streams: dict[int, tuple[Iterator[PlannedEpisode], list[PlannedEpisode]]] = {}

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        return self.image_dir / f"{image_id}.jpg", self.label_dir / f"{image_id}.png"

    @property
    def pixel_counts(self) -> dict[str, np.ndarray]:
        """Per image id of the split list, its pixel count of each label value 0..20 (every
        label map read once, on first use)."""
        if self._counts is None:
            counts: dict[str, np.ndarray] = {}
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
                counts[image_id] = np.bincount(label.ravel(), minlength=256)[
                    :len(VOC_CLASS_NAMES) + 1]
            self._counts = counts
        return self._counts

    @property
    def classes_present(self) -> dict[str, list[int]]:
        """Per image id of the split list, the VOC classes (1..20) it holds with at least
        ``min_pixels`` pixels."""
        if self._present is None:
            self._present = {image_id: [c for c in range(1, len(VOC_CLASS_NAMES) + 1)
                                        if counts[c] >= self.min_pixels]
                             for image_id, counts in self.pixel_counts.items()}
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

    @property
    def hsnet_list_source(self) -> str:
        """Where the hsnet sampler's (image, class) list comes from: ``published`` (HSNet's
        own list of the fold) or ``rule`` (the pixel rule on this tree's split list)."""
        if self._hsnet_source is None:
            self._hsnet_source = self._choose_hsnet_source()
        return self._hsnet_source

    def _choose_hsnet_source(self) -> str:
        if self.hsnet_lists == "rule":
            return "rule"
        if self.split != "test":
            if self.hsnet_lists == "published":
                raise DatasetError("HSNet's published lists are test lists; the train split "
                                   "takes hsnet_lists='rule' or 'auto'")
            return "rule"
        listed = set(self.ids)
        missing = [i for i, _ in published_hsnet_list(self.fold) if i not in listed]
        if not missing:
            return "published"
        if self.hsnet_lists == "published":
            raise DatasetError(
                f"{len(missing)} images of HSNet's fold {self.fold} list (e.g. {missing[0]}) "
                f"are not in {self.list_file}; the published list needs the standard VOC2012 "
                "val list (use hsnet_lists='rule' for another tree)")
        return "rule"

    def hsnet_pairs(self) -> list[tuple[str, int]]:
        """The (image id, class) list the hsnet sampler walks (see hsnet_list_source)."""
        if self._hsnet_pairs is None:
            if self.hsnet_list_source == "published":
                self._hsnet_pairs = published_hsnet_list(self.fold)
            else:
                wanted = set(self.classes)
                self._hsnet_pairs = sorted((i, c) for i, classes in self.classes_present.items()
                                           for c in classes if c in wanted)
        return self._hsnet_pairs

    def query_walk(self) -> list[tuple[str, int | None]]:
        """The sampler's fixed walk: (image, class) pairs for ``hsnet``, (image, None) for
        ``pfenet`` (the class is drawn per episode); empty for ``uniform``."""
        if self.sampler == "hsnet":
            return list(self.hsnet_pairs())
        if self.sampler == "pfenet":
            wanted = set(self.classes)
            return [(i, None) for i, classes in self.classes_present.items()
                    if wanted.intersection(classes)]
        return []

    @property
    def episode_limit(self) -> int | None:
        """How many episodes the sampler can give: PFENet's 20 passes over its query
        images for ``pfenet``; None (no end) otherwise."""
        if self.sampler == "pfenet":
            return PFENET_MAX_PASSES * len(self.query_walk())
        return None

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

    def _too_few_supports(self, query: str, class_id: int, pool: list[str], shots: int,
                          what: str) -> DatasetError:
        others = len({i for i in pool if i != query})
        return DatasetError(
            f"query {query}: class {class_id} ({VOC_CLASS_NAMES[class_id - 1]}) has {others} "
            f"other {what} for a {shots}-shot episode of fold {self.fold} ({self.split}, "
            f"{self.sampler} sampler, data from {self.list_file}); it needs "
            f"{1 if self.sampler == 'hsnet' else shots}")

    def _uniform_plan(self, index: int, shots: int) -> PlannedEpisode:
        self._check_counts(shots)
        rng = episode_rng(SALT, self.fold, SPLIT_CODE[self.split], self.seed, index)
        class_id = self.classes[int(rng.integers(len(self.classes)))]
        ids = self.images_by_class[class_id]
        query, supports = draw_query_and_supports(len(ids), shots, rng)
        return PlannedEpisode(ids[query], class_id, tuple(ids[i] for i in supports))

    def _hsnet_stream(self, shots: int) -> Iterator[PlannedEpisode]:
        pairs = self.hsnet_pairs()
        if not pairs:
            raise DatasetError(f"no image of {self.list_file} holds a class of fold "
                               f"{self.fold} ({self.split}) with >= {self.min_pixels} pixels")
        pools: dict[int, list[str]] = {}
        for image_id, class_id in pairs:
            pools.setdefault(class_id, []).append(image_id)
        rng = np.random.RandomState(self.seed)  # one legacy stream, seeded once, as HSNet's
        index = 0
        while True:
            query, class_id = pairs[index % len(pairs)]
            pool = pools[class_id]
            if all(i == query for i in pool):
                raise self._too_few_supports(query, class_id, pool, shots,
                                             "listed images")
            supports: list[str] = []
            while len(supports) < shots:  # repeats are kept; only the query is redrawn
                pick = pool[int(rng.choice(len(pool), size=1, replace=False)[0])]
                if pick != query:
                    supports.append(pick)
            yield PlannedEpisode(query, class_id, tuple(supports))
            index += 1

    def _pfenet_stream(self, shots: int) -> Iterator[PlannedEpisode]:
        queries = [i for i, _ in self.query_walk()]
        if not queries:
            raise DatasetError(f"no image of {self.list_file} holds a class of fold "
                               f"{self.fold} ({self.split}) with >= {self.min_pixels} pixels")
        files = self.images_by_class
        rng = random.Random(self.seed)
        for _ in range(PFENET_MAX_PASSES):
            for query in queries:
                counts = self.pixel_counts[query]
                choices = [c for c in self.classes if counts[c] > 0]  # any pixel count
                class_id = choices[rng.randrange(len(choices))]
                pool = files[class_id]
                if len([i for i in pool if i != query]) < shots:
                    raise self._too_few_supports(query, class_id, pool, shots,
                                                 f"images with >= {self.min_pixels} pixels")
                picked: list[int] = []
                for _k in range(shots):
                    rng.randrange(len(pool))  # drawn and discarded before each support
                    while True:
                        slot = rng.randrange(len(pool))
                        if pool[slot] != query and slot not in picked:
                            break
                    picked.append(slot)
                yield PlannedEpisode(query, class_id,
                                     tuple(pool[slot] for slot in reversed(picked)))

    def _planned(self, index: int, shots: int) -> PlannedEpisode | None:
        """Plan entry ``index``, or None past the end of a sampler that ends (pfenet)."""
        if self.sampler == "uniform":
            return self._uniform_plan(index, shots)
        if shots not in self._streams:
            stream = (self._hsnet_stream(shots) if self.sampler == "hsnet"
                      else self._pfenet_stream(shots))
            self._streams[shots] = (stream, [])
        stream, made = self._streams[shots]
        while len(made) <= index:
            planned = next(stream, None)
            if planned is None:
                return None
            made.append(planned)
        return made[index]

    def plan(self, count: int = 1000, shots: int | None = None,
             start: int = 0) -> list[PlannedEpisode]:
        """The (query, class, supports) of episodes start .. start+count-1 without loading
        an image: exactly what ``episodes`` loads (shorter where pfenet's passes end)."""
        shots = self.shots if shots is None else check_shots(shots)
        planned = []
        for index in range(start, start + count):
            entry = self._planned(index, shots)
            if entry is None:
                break
            planned.append(entry)
        return planned

    def _load(self, image_id: str, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self._paths(image_id)
        image = load_rgb(image_path)
        label = read_label(label_path)
        check_same_size(image_path, label_path, image.shape[:2], label.shape)
        return image, class_mask(label, class_id)

    def load(self, planned: PlannedEpisode) -> Episode:
        """The images and class masks of a planned episode."""
        supports = [self._load(image_id, planned.class_id) for image_id in planned.supports]
        query_image, query_mask = self._load(planned.query, planned.class_id)
        return Episode(class_id=planned.class_id, support_images=tuple(s[0] for s in supports),
                       support_masks=tuple(s[1] for s in supports), query_image=query_image,
                       query_mask=query_mask)

    def episode(self, index: int, shots: int | None = None) -> Episode:
        """Episode ``index``: deterministic from (root contents, fold, split, seed, index,
        sampler)."""
        shots = self.shots if shots is None else check_shots(shots)
        planned = self._planned(index, shots)
        if planned is None:
            raise DatasetError(
                f"the pfenet sampler ends after {PFENET_MAX_PASSES} passes over its "
                f"{len(self.query_walk())} query images ({self.episode_limit} episodes); "
                f"episode {index} does not exist")
        return self.load(planned)

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
        """Episodes start .. start+count-1 (1000 per fold is the standard protocol; the
        pfenet sampler stops after its 20 passes)."""
        shots = self.shots if shots is None else check_shots(shots)
        for index in range(start, start + count):
            planned = self._planned(index, shots)
            if planned is None:
                return
            yield self.load(planned)
