"""synthetic-5i: determinism, fold split, mask values, target presence, distractor rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crnet.cli import main
from crnet.data.episodes import IGNORE, fold_classes
from crnet.data.pascal import Pascal5i
from crnet.data.synthetic import CLASS_NAMES, CLASS_STYLES, Synthetic5i

SIZE = 321


def _same(a, b) -> bool:
    pairs = [*zip(a.support_images, b.support_images, strict=True),
             *zip(a.support_masks, b.support_masks, strict=True)]
    return (a.class_id == b.class_id
            and all(np.array_equal(x, y) for x, y in pairs)
            and np.array_equal(a.query_image, b.query_image)
            and np.array_equal(a.query_mask, b.query_mask))


def test_class_table() -> None:
    assert len(CLASS_NAMES) == 20 == len(set(CLASS_NAMES)) == len(CLASS_STYLES)
    shapes = [s.shape for s in CLASS_STYLES]
    hues = [s.hue for s in CLASS_STYLES]
    # every outline is shared by two classes, so shape alone never identifies a class
    assert all(shapes.count(s) == 2 for s in shapes)
    assert len({(s.shape, s.texture, s.hue) for s in CLASS_STYLES}) == 20
    assert len(set(hues)) < 20


def test_fold_classes() -> None:
    for fold in range(4):
        train, test = fold_classes(fold, "train"), fold_classes(fold, "test")
        assert test == [5 * fold + i for i in range(1, 6)]
        assert len(train) == 15 and not set(train) & set(test)
        assert sorted(train + test) == list(range(1, 21))
        assert Synthetic5i(fold, "test").classes == test
        assert Synthetic5i(fold, "train").classes == train
    with pytest.raises(ValueError, match="split"):
        fold_classes(0, "val")
    with pytest.raises(ValueError, match="fold"):
        fold_classes(4, "test")


def test_deterministic_and_seeded() -> None:
    a = Synthetic5i(1, "test", seed=0).episode(3, shots=2)
    b = Synthetic5i(1, "test", seed=0).episode(3, shots=2)
    c = Synthetic5i(1, "test", seed=1).episode(3, shots=2)
    assert _same(a, b)
    assert not np.array_equal(a.query_image, c.query_image)
    # the K-shot episode extends the 1-shot one
    one = Synthetic5i(1, "test", seed=0).episode(3, shots=1)
    assert np.array_equal(one.query_image, a.query_image)
    assert np.array_equal(one.support_images[0], a.support_images[0])


def test_train_and_test_differ() -> None:
    train = Synthetic5i(0, "train", seed=0).episode(0)
    test = Synthetic5i(0, "test", seed=0).episode(0)
    assert not np.array_equal(train.query_image, test.query_image)


def test_episode_contents() -> None:
    dataset = Synthetic5i(2, "test", seed=0)
    for index in range(10):
        episode = dataset.episode(index, shots=2)
        assert episode.shots == 2
        assert episode.class_id == dataset.classes[index % 5]
        for image, mask in [*zip(episode.support_images, episode.support_masks, strict=True),
                            (episode.query_image, episode.query_mask)]:
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1, IGNORE}
            fraction = np.count_nonzero(mask == 1) / mask.size
            assert 0.02 <= fraction <= 0.6
            assert np.count_nonzero(mask == IGNORE) > 0


def test_train_split_uses_base_classes_only() -> None:
    dataset = Synthetic5i(0, "train", seed=0)
    novel = set(fold_classes(0, "test"))
    for index in range(30):
        supports, query = dataset.episode_scenes(index)
        for scene in [*supports, query]:
            present = set(np.unique(scene.label)) - {0, IGNORE}
            assert scene.target in present and not present & novel


def test_distractor_rate() -> None:
    dataset = Synthetic5i(3, "test", seed=0)
    queries = [dataset.episode_scenes(index)[1] for index in range(100)]
    rate = np.mean([q.has_distractor for q in queries])
    assert rate >= 0.5
    for q in queries:
        assert q.target not in q.distractors
        assert all(c in np.unique(q.label) for c in q.distractors)


def test_sample_and_errors() -> None:
    dataset = Synthetic5i(0, "test", seed=0, image_size=129)
    image, mask = dataset.sample(2, 0)
    assert image.shape == (129, 129, 3) and mask.shape == (129, 129)
    assert np.count_nonzero(mask == 1) > 0
    with pytest.raises(ValueError, match="class 7"):
        dataset.sample(7, 0)
    with pytest.raises(ValueError, match="shots"):
        dataset.episode(0, shots=0)


def test_write_voc_round_trip(tmp_path) -> None:
    dataset = Synthetic5i(0, "test", seed=0, image_size=97)
    dataset.write_voc(tmp_path, 10)
    assert len(list((tmp_path / "JPEGImages").glob("*.jpg"))) == 10
    pascal = Pascal5i(tmp_path, fold=0, split="test", min_pixels=1)
    episode = pascal.episode(0)
    assert episode.query_image.shape == (97, 97, 3)
    assert np.count_nonzero(episode.query_mask == 1) > 0


def test_preview(tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    assert main(["synthetic", "--preview", str(out), "--episodes", "1"]) == 0
    assert out.stat().st_size > 0


def test_write_voc_tree_is_read_by_the_pascal_loader(tmp_path: Path) -> None:
    from PIL import Image

    from crnet.data.pascal import Pascal5i
    from crnet.data.synthetic import voc_palette, write_voc_tree

    root = write_voc_tree(tmp_path / "voc", fold=1, train_images=45, test_images=10)
    grey = sorted((root / "SegmentationClassAug").glob("*.png"))
    assert len(grey) == 55 and len(list((root / "JPEGImages").glob("*.jpg"))) == 55
    with Image.open(root / "SegmentationClass" / grey[0].name) as palette_png, \
            Image.open(grey[0]) as grey_png:
        assert palette_png.mode == "P" and palette_png.getpalette()[:6] == voc_palette()[:6]
        assert np.array_equal(np.asarray(palette_png), np.asarray(grey_png))
        assert 255 in np.asarray(grey_png)  # boundary bands
    test_episode = Pascal5i(root, 1, split="test").episode(0, 1)
    assert test_episode.class_id in range(6, 11)
    train_episode = Pascal5i(root, 1, split="train").episode(0, 1)
    assert train_episode.class_id not in range(6, 11)
