"""FolderDataset on a tiny class-per-directory tree written in the test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crnet.data.episodes import DataNotFoundError, DatasetError
from crnet.data.folder import FolderDataset
from tests.data.images import png_header

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


@pytest.mark.parametrize(("side", "megapixels"), [(20_000, 400), (12_248, 150)])
def test_huge_image_refused_from_its_header(tmp_path, monkeypatch, side, megapixels) -> None:  # noqa: ANN001
    """400 MP is past PIL's own bomb limit, 150 MP below it: both are refused by the
    dataset's 100 MP limit, before any pixel is decoded."""
    from PIL import ImageFile

    def no_decoding(self) -> None:  # noqa: ANN001
        raise AssertionError("an image was decoded")

    _tree(tmp_path)
    png_header(tmp_path / "cats" / "im1.png", side, side)
    png_header(tmp_path / "cats" / "im1.mask.png", side, side)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DatasetError, match=rf"image \S*im1.png is (\d+x\d+ \()?{megapixels} "
                       r"MP\)?; at most 100 MP is accepted") as caught:
        FolderDataset(tmp_path)
    assert "\n" not in str(caught.value)


def test_truncated_image_named(tmp_path) -> None:
    _tree(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "cats" / "im1.png"
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:2000])  # the header and part of the pixel data
    dataset = FolderDataset(tmp_path)  # the header is whole
    with pytest.raises(DatasetError, match=r"cannot decode image \S*cats/im1.png: .*truncated"):
        dataset.episode(0, shots=2)  # class "cats": every one of its 3 images is read
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DatasetError, match=r"cannot read image \S*cats/im1.png"):
        FolderDataset(tmp_path)


def test_mask_that_is_a_directory_or_a_link_loop_is_named_as_such(tmp_path) -> None:
    _tree(tmp_path)
    mask = tmp_path / "dogs" / "im2.mask.png"
    mask.unlink()
    mask.mkdir()
    with pytest.raises(DatasetError, match=r"mask \S*im2.mask.png is a directory"):
        FolderDataset(tmp_path)
    mask.rmdir()
    mask.symlink_to(mask.name)
    with pytest.raises(DatasetError, match=r"mask \S*im2.mask.png is a symbolic link loop"):
        FolderDataset(tmp_path)
    mask.unlink()
    mask.symlink_to("gone.png")
    with pytest.raises(DataNotFoundError, match=r"im2.mask.png is a symbolic link to gone.png"):
        FolderDataset(tmp_path)


def test_image_that_is_a_link_loop_is_not_skipped(tmp_path) -> None:
    _tree(tmp_path)
    image = tmp_path / "dogs" / "im2.png"
    image.unlink()
    image.symlink_to(image.name)
    with pytest.raises(DatasetError, match=r"image \S*im2.png is a symbolic link loop"):
        FolderDataset(tmp_path)
