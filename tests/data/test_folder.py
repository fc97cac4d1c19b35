"""FolderDataset on a tiny class-per-directory tree written in the test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crnet.data.folder import FolderDataset

H, W = 48, 64


def _tree(root, counts=None, binary_white=False) -> None:
    counts = counts or {"cats": 3, "dogs": 4}
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(root / name / f"im{i}.png")
            mask = np.zeros((H, W), np.uint8)
            mask[5:20, 5:25] = 255 if binary_white else 1
            if not binary_white:
                mask[4, 5:25] = 255
            Image.fromarray(mask).save(root / name / f"im{i}.mask.png")


def test_episodes_and_masks(tmp_path) -> None:
    _tree(tmp_path)
    dataset = FolderDataset(tmp_path, seed=0)
    assert dataset.class_names == ["cats", "dogs"] and dataset.classes == [1, 2]
    episodes = list(dataset.episodes(4, shots=2))
    assert [e.class_id for e in episodes] == [1, 2, 1, 2]
    expected = np.zeros((H, W), np.uint8)
    expected[5:20, 5:25] = 1
    expected[4, 5:25] = 255
    for e in episodes:
        assert e.shots == 2
        for mask in (*e.support_masks, e.query_mask):
            assert np.array_equal(mask, expected)
        values = {int(s[0, 0, 0]) for s in e.support_images} | {int(e.query_image[0, 0, 0])}
        assert len(values) == 3
    again = list(FolderDataset(tmp_path, seed=0).episodes(4, shots=2))
    for a, b in zip(episodes, again, strict=True):
        assert np.array_equal(a.query_image, b.query_image)


def test_black_and_white_masks(tmp_path) -> None:
    _tree(tmp_path, binary_white=True)
    mask = FolderDataset(tmp_path).episode(0).query_mask
    assert set(np.unique(mask)) == {0, 1} and np.count_nonzero(mask) == 15 * 20


def test_missing_mask(tmp_path) -> None:
    _tree(tmp_path)
    (tmp_path / "dogs" / "im2.mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="im2.mask.png"):
        FolderDataset(tmp_path)


def test_size_mismatch(tmp_path) -> None:
    _tree(tmp_path)
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(tmp_path / "cats" / "im1.mask.png")
    with pytest.raises(ValueError, match="im1.mask.png"):
        FolderDataset(tmp_path)


def test_too_few_images(tmp_path) -> None:
    _tree(tmp_path, counts={"cats": 2, "dogs": 4})
    FolderDataset(tmp_path).episode(0, shots=1)
    with pytest.raises(ValueError, match="cats"):
        FolderDataset(tmp_path).episode(0, shots=2)
