"""HSNet's and PFENet's PASCAL-5i test episodes, re-implemented to compare the project's
samplers with.

Written from reading the evaluators' own code, independently of crnet.data.pascal:

* HSNet (github.com/juhongm999/hsnet): ``data/pascal.py`` (``DatasetPASCAL``:
  ``build_img_metadata``, ``build_img_metadata_classwise``, ``__getitem__``,
  ``sample_episode``), ``data/dataset.py`` (the test loader: no shuffling, no workers),
  ``test.py`` (``utils.fix_randseed(0)`` once before the loop) and ``common/utils.py``
  (``fix_randseed`` seeds numpy's global RNG).
* PFENet (github.com/dvlab-research/PFENet): ``util/dataset.py`` (``make_dataset``,
  ``SemData.__getitem__``) and ``test.py`` (``validate``: ``random.seed(manual_seed)``,
  ``test_num = 5000``, the 20-pass loop and its break test), with ``workers: 0``.

Each function returns the episodes as (query id, VOC class 1..20, support ids) in the
order the evaluator feeds them to the model. The global RNGs are seeded as the originals
seed them and restored afterwards so that other tests are not affected.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

Draw = tuple[str, int, tuple[str, ...]]

SMALL_OBJECT_PIXELS = 2 * 32 * 32  # PFENet's make_dataset threshold


def fold_novel_classes(fold: int) -> list[int]:
    """VOC class numbers tested in ``fold`` (PFENet's ``sub_val_list``)."""
    return list(range(5 * fold + 1, 5 * fold + 6))


def read_grey_label(path: Path) -> np.ndarray:
    """A SegmentationClassAug label as the array of class numbers (grey PNG)."""
    with Image.open(path) as label:
        return np.array(label)


def write_hsnet_fold_files(voc_root: Path, out_dir: Path,
                           min_pixels: int = SMALL_OBJECT_PIXELS) -> Path:
    """HSNet-format test lists (``fold{f}.txt``, lines ``<id>__<cc>``, sorted) for a VOC
    tree's val list: every (image, novel class) with at least ``min_pixels`` pixels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [Path(line.split()[0]).stem
           for line in (voc_root / "ImageSets/Segmentation/val.txt").read_text().splitlines()
           if line.strip()]
    labels = {i: read_grey_label(voc_root / "SegmentationClassAug" / f"{i}.png") for i in ids}
    for fold in range(4):
        lines = []
        for image_id in ids:
            for c in fold_novel_classes(fold):
                if int((labels[image_id] == c).sum()) >= min_pixels:
                    lines.append(f"{image_id}__{c:02d}")
        (out_dir / f"fold{fold}.txt").write_text("".join(line + "\n" for line in sorted(lines)))
    return out_dir


def hsnet_test_episodes(fold_file: Path, shot: int, seed: int = 0,
                        count: int = 1000) -> list[Draw]:
    """HSNet's test loop over a fold list: episode ``idx`` is list entry ``idx % len``;
    each support is ``np.random.choice(class pool, 1, replace=False)`` from the global RNG
    seeded once, redrawn only when it is the query (repeats are kept)."""
    metadata = []
    for entry in fold_file.read_text().split("\n")[:-1]:
        name, number = entry.split("__")
        metadata.append((name, int(number) - 1))  # HSNet's classes count from 0
    classwise: dict[int, list[str]] = {c: [] for c in range(20)}
    for name, class_sample in metadata:
        classwise[class_sample] += [name]

    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        draws = []
        for idx in range(count):
            query_name, class_sample = metadata[idx % len(metadata)]
            support_names: list[str] = []
            while True:
                support_name = np.random.choice(classwise[class_sample], 1, replace=False)[0]
                if query_name != support_name:
                    support_names.append(str(support_name))
                if len(support_names) == shot:
                    break
            draws.append((query_name, class_sample + 1, tuple(support_names)))
        return draws
    finally:
        np.random.set_state(saved)


def pfenet_lists(voc_root: Path, fold: int) -> tuple[list[tuple[str, str]],
                                                      dict[int, list[tuple[str, str]]]]:
    """PFENet's make_dataset on the tree's val list: the query items (an image holding a
    novel class with >= 2*32*32 pixels) and, per novel class, the items holding it so."""
    novel = fold_novel_classes(fold)
    items, per_class = [], {c: [] for c in novel}
    for line in (voc_root / "ImageSets/Segmentation/val.txt").read_text().splitlines():
        if not line.strip():
            continue
        image_id = Path(line.split()[0]).stem
        item = (str(voc_root / "JPEGImages" / f"{image_id}.jpg"),
                str(voc_root / "SegmentationClassAug" / f"{image_id}.png"))
        label = read_grey_label(Path(item[1]))
        present = [c for c in np.unique(label).tolist() if c not in (0, 255)]
        kept = [c for c in present if c in novel and (label == c).sum() >= SMALL_OBJECT_PIXELS]
        if kept:
            items.append(item)
            for c in kept:
                per_class[c].append(item)
    return items, per_class


def pfenet_test_episodes(voc_root: Path, fold: int, shot: int, seed: int = 321,
                         test_num: int = 5000) -> list[Draw]:
    """PFENet's validate() with ``workers: 0`` and batch 1: passes over the query items in
    order, at most 20, while ``(iter_num - 1) >= test_num`` is false (5001 episodes); each
    item draws its class with Python's ``random`` among the novel classes in its label
    (any pixel count) and K supports rejecting the query and repeats; the K supports are
    stacked last-drawn first."""
    items, per_class = pfenet_lists(voc_root, fold)
    novel = fold_novel_classes(fold)

    def getitem(index: int) -> Draw:
        image_path, label_path = items[index]
        label = read_grey_label(Path(label_path))
        label_class = [c for c in np.unique(label).tolist() if c not in (0, 255) and c in novel]
        assert len(label_class) > 0
        class_chosen = label_class[random.randint(1, len(label_class)) - 1]
        files = per_class[class_chosen]
        num_file = len(files)
        chosen_paths, chosen_indices = [], []
        for _ in range(shot):
            support_idx = random.randint(1, num_file) - 1
            support_image_path, support_label_path = image_path, label_path
            while ((support_image_path == image_path and support_label_path == label_path)
                   or support_idx in chosen_indices):
                support_idx = random.randint(1, num_file) - 1
                support_image_path, support_label_path = files[support_idx]
            chosen_indices.append(support_idx)
            chosen_paths.append(support_image_path)
        stacked = [chosen_paths[0]]
        for k in range(1, shot):
            stacked = [chosen_paths[k]] + stacked
        return (Path(image_path).stem, class_chosen, tuple(Path(p).stem for p in stacked))

    saved = random.getstate()
    random.seed(seed)
    try:
        draws: list[Draw] = []
        iter_num = 0
        for _ in range(20):
            for index in range(len(items)):
                batch = getitem(index)  # the loader yields the item before the break test
                if (iter_num - 1) * 1 >= test_num:
                    break
                iter_num += 1
                draws.append(batch)
        return draws
    finally:
        random.setstate(saved)
