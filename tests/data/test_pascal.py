"""Pascal5i on a tiny VOC-layout tree written in the test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.pascal import Pascal5i

H, W = 48, 64


def _label(class_id: int, other: int) -> np.ndarray:
    label = np.zeros((H, W), np.uint8)
    label[10:30, 10:30] = class_id
    label[9, 10:30] = 255
    label[30:40, 40:60] = other
    return label


def _tree(root, classes=(1, 1, 1, 2, 2, 2), list_name="val.txt", palette=True) -> list[str]:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = []
    for i, c in enumerate(classes):
        image_id = f"2007_{i:06d}"
        rgb = np.full((H, W, 3), 15 * i, np.uint8)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.jpg")
        label = Image.fromarray(_label(c, 15))
        if palette:
            label = label.convert("P")
        label.save(root / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
    (root / "ImageSets" / "Segmentation" / list_name).write_text("\n".join(lines) + "\n")
    return ids


def test_episodes(tmp_path) -> None:
    _tree(tmp_path)
    dataset = Pascal5i(tmp_path, fold=0, split="test", seed=0, min_pixels=1)
    assert dataset.images_by_class[1] == ["2007_000000", "2007_000001", "2007_000002"]
    assert dataset.images_by_class[3] == []  # absent class is fine until it is needed
    with pytest.raises(ValueError, match="class 3"):
        dataset.episode(0)


def test_masks_and_determinism(tmp_path) -> None:
    ids = _tree(tmp_path, classes=(1, 2, 3, 4, 5) * 3, palette=False)
    dataset = Pascal5i(tmp_path, fold=0, split="test", seed=0, min_pixels=1)
    for index in range(10):
        episode = dataset.episode(index, shots=2)
        expected = np.zeros((H, W), np.uint8)
        expected[10:30, 10:30] = 1
        expected[9, 10:30] = 255
        for mask in (*episode.support_masks, episode.query_mask):
            assert np.array_equal(mask, expected)  # person (15) is background, 255 kept
        assert episode.query_image.shape == (H, W, 3) and episode.shots == 2
    a = [Pascal5i(tmp_path, 0, seed=0, min_pixels=1).episode(i, 2) for i in range(5)]
    b = [Pascal5i(tmp_path, 0, seed=0, min_pixels=1).episode(i, 2) for i in range(5)]
    c = [Pascal5i(tmp_path, 0, seed=7, min_pixels=1).episode(i, 2) for i in range(5)]
    key = [(e.class_id, *(int(s[0, 0, 0]) for s in e.support_images), int(e.query_image[0, 0, 0]))
           for e in a]
    assert key == [(e.class_id, *(int(s[0, 0, 0]) for s in e.support_images),
                    int(e.query_image[0, 0, 0])) for e in b]
    assert key != [(e.class_id, *(int(s[0, 0, 0]) for s in e.support_images),
                    int(e.query_image[0, 0, 0])) for e in c]
    for e in a:  # supports distinct and distinct from the query
        values = [int(s[0, 0, 0]) for s in e.support_images] + [int(e.query_image[0, 0, 0])]
        assert len(set(values)) == 3
    assert len(ids) == 15


def test_train_list_and_min_pixels(tmp_path) -> None:
    _tree(tmp_path, classes=(6, 6, 7), list_name="train.txt")
    dataset = Pascal5i(tmp_path, fold=0, split="train", min_pixels=401)
    assert dataset.images_by_class[6] == []  # 400 pixels < 401
    dataset = Pascal5i(tmp_path, fold=0, split="train", min_pixels=400)
    assert len(dataset.images_by_class[6]) == 2


def test_missing_list(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="val.txt"):
        Pascal5i(tmp_path, fold=0)


def test_missing_mask(tmp_path) -> None:
    ids = _tree(tmp_path)
    (tmp_path / "SegmentationClassAug" / f"{ids[2]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ids[2]}.png"):
        Pascal5i(tmp_path, fold=0, min_pixels=1).episode(0)


def test_size_mismatch(tmp_path) -> None:
    ids = _tree(tmp_path)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(
        tmp_path / "SegmentationClassAug" / f"{ids[4]}.png")
    with pytest.raises(ValueError, match=f"{ids[4]}.png"):
        Pascal5i(tmp_path, fold=0, min_pixels=1).episode(0)
