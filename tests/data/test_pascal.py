"""Pascal5i on a tiny VOC-layout tree written in the test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crnet.data.episodes import DatasetError
from crnet.data.pascal import Pascal5i
from tests.data.images import png_header

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


def _multi_class_tree(root, images: list[tuple[int, ...]], list_name: str = "val.txt") -> list[str]:
    """Image i is filled with grey value 10*i and holds one 8x8 block per listed class."""
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, classes in enumerate(images):
        image_id = f"2008_{i:06d}"
        Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg", quality=100)
        label = np.zeros((H, W), np.uint8)
        for slot, c in enumerate(classes):
            label[4:12, 4 + 10 * slot:12 + 10 * slot] = c
        Image.fromarray(label).save(root / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets" / "Segmentation" / list_name).write_text("\n".join(ids) + "\n")
    return ids


# fold 2: novel classes 11..15 (15 = person); 16 is a base class
FOLD2_IMAGES = [(11, 15), (15,), (12, 15), (13,), (14, 15), (15, 16), (11, 12, 13, 14), (16,)]


def _query_number(episode) -> int:
    return round(float(episode.query_image.mean()) / 10)


def test_hsnet_sampler_walks_query_class_pairs_in_order(tmp_path) -> None:
    ids = _multi_class_tree(tmp_path, FOLD2_IMAGES)
    dataset = Pascal5i(tmp_path, fold=2, sampler="hsnet", min_pixels=1)
    pairs = [(0, 11), (0, 15), (1, 15), (2, 12), (2, 15), (3, 13), (4, 14), (4, 15), (5, 15),
             (6, 11), (6, 12), (6, 13), (6, 14)]
    assert dataset.query_walk() == [(ids[i], c) for i, c in pairs]
    walked = [(_query_number(e), e.class_id) for e in dataset.episodes(len(pairs) + 3)]
    assert walked == pairs + pairs[:3]  # in order, wrapping around
    episode = dataset.episode(1)  # query 0 as person: the mask is the person block only
    assert episode.query_mask.sum() == 64 and episode.query_mask[4, 14] == 1
    support_numbers = {round(float(s.mean()) / 10) for s in episode.support_images}
    assert 0 not in support_numbers  # supports are other images of the class


def test_pfenet_sampler_walks_images_and_draws_a_present_class(tmp_path) -> None:
    _multi_class_tree(tmp_path, FOLD2_IMAGES)
    dataset = Pascal5i(tmp_path, fold=2, sampler="pfenet", min_pixels=1)
    walked = [(_query_number(e), e.class_id) for e in dataset.episodes(14)]
    images_with_novel = [0, 1, 2, 3, 4, 5, 6]  # image 7 holds only base class 16
    assert [n for n, _ in walked] == images_with_novel * 2
    for number, class_id in walked:
        assert class_id in FOLD2_IMAGES[number] and 11 <= class_id <= 15
    classes_of_6 = {c for n, c in walked if n == 6}
    many = {dataset.episode(6 + 7 * k).class_id for k in range(20)}
    assert classes_of_6 <= many and len(many) > 1  # the class is drawn, not fixed
    assert dataset.episode_limit == 20 * 7  # PFENet's 20 passes over its query images
    assert len(list(dataset.episodes(200))) == 140
    with pytest.raises(DatasetError, match="ends after 20 passes"):
        dataset.episode(140)


def test_uniform_sampler_draws_classes_evenly(tmp_path) -> None:
    _multi_class_tree(tmp_path, FOLD2_IMAGES + [(13, 14), (11, 12)])
    uniform = Pascal5i(tmp_path, fold=2, min_pixels=1)
    hsnet = Pascal5i(tmp_path, fold=2, sampler="hsnet", min_pixels=1)
    counts = np.bincount([e.class_id for e in uniform.episodes(500)], minlength=16)[11:]
    assert counts.min() > 70 and counts.max() < 130  # ~100 each
    person_share = np.mean([e.class_id == 15 for e in hsnet.episodes(len(hsnet.query_walk()))])
    assert person_share == pytest.approx(5 / 17)


def test_unknown_sampler(tmp_path) -> None:
    _multi_class_tree(tmp_path, FOLD2_IMAGES)
    with pytest.raises(ValueError, match="sampler must be one of"):
        Pascal5i(tmp_path, fold=2, sampler="random")


def test_voc_tree_without_aug_falls_back_to_palette_labels(tmp_path) -> None:
    """write_voc_tree's palette PNGs (SegmentationClass) hold the same class ids as the
    grey SegmentationClassAug ones; without the Aug folder they are read instead."""
    import shutil

    from crnet.data.synthetic import write_voc_tree

    root = write_voc_tree(tmp_path / "voc", fold=0, train_images=3, test_images=10)
    with_aug = Pascal5i(root, fold=0)
    assert with_aug.label_dir.name == "SegmentationClassAug"
    reference = [with_aug.episode(i) for i in range(3)]
    shutil.rmtree(root / "SegmentationClassAug")
    palette = Pascal5i(root, fold=0)
    assert palette.label_dir.name == "SegmentationClass"
    with Image.open(next((root / "SegmentationClass").glob("*.png"))) as label:
        assert label.mode == "P"
    assert palette.images_by_class == with_aug.images_by_class
    for index, expected in enumerate(reference):
        episode = palette.episode(index)
        assert episode.class_id == expected.class_id
        assert np.array_equal(episode.query_mask, expected.query_mask)
        assert (episode.query_mask == 255).any()  # the boundary bands survive the palette


def test_too_few_images_names_the_class(tmp_path) -> None:
    from crnet.data.synthetic import write_voc_tree

    root = write_voc_tree(tmp_path / "voc", fold=1, train_images=3, test_images=10)
    dataset = Pascal5i(root, fold=1)
    counts = {c: len(v) for c, v in dataset.images_by_class.items()}
    dataset.episode(0, shots=1)  # 2 images per class are enough for 1 shot
    fewest = min(counts.values())
    short = [c for c in sorted(counts) if counts[c] == fewest]
    with pytest.raises(ValueError) as error:
        dataset.episode(0, shots=fewest)
    message = str(error.value)
    for c in counts:
        named = f"class {c} (" in message
        assert named == (c in short), (c, message)
    assert f"has {fewest} images" in message and f"needs {fewest + 1}" in message


def test_hsnet_and_pfenet_name_a_class_without_enough_supports(tmp_path) -> None:
    # fold 2; class 13 is in one image only: no support for it but the query itself
    _multi_class_tree(tmp_path, [(11,), (11,), (13,), (12,), (12,)])
    hsnet = Pascal5i(tmp_path, fold=2, sampler="hsnet", min_pixels=1)
    assert [p.class_id for p in hsnet.plan(2)] == [11, 11]
    with pytest.raises(DatasetError, match=r"query 2008_000002: class 13 \(horse\) has 0 other"):
        hsnet.plan(3)
    pfenet = Pascal5i(tmp_path, fold=2, sampler="pfenet", min_pixels=1)
    assert len(pfenet.plan(2, shots=1)) == 2
    with pytest.raises(DatasetError, match=r"class 11 \(diningtable\) has 1 other.*needs 2"):
        pfenet.plan(1, shots=2)


def test_hsnet_list_choice(tmp_path) -> None:
    _multi_class_tree(tmp_path, FOLD2_IMAGES)
    assert Pascal5i(tmp_path, fold=2, sampler="hsnet").hsnet_list_source == "rule"
    with pytest.raises(DatasetError, match="not in .*val.txt; the published list needs"):
        _ = Pascal5i(tmp_path, fold=2, sampler="hsnet", hsnet_lists="published").hsnet_pairs()
    with pytest.raises(DatasetError, match="hsnet_lists must be one of"):
        Pascal5i(tmp_path, fold=2, sampler="hsnet", hsnet_lists="theirs")


def test_plan_is_what_the_episodes_load(tmp_path) -> None:
    _multi_class_tree(tmp_path, FOLD2_IMAGES + [(13, 14), (11, 12)])
    for sampler in ("uniform", "hsnet", "pfenet"):
        dataset = Pascal5i(tmp_path, fold=2, sampler=sampler, min_pixels=1)
        for planned, episode in zip(dataset.plan(12, shots=2), dataset.episodes(12, shots=2),
                                    strict=True):
            assert planned.class_id == episode.class_id
            numbers = [int(name[-6:]) for name in (*planned.supports, planned.query)]
            loaded = [_query_number_of(image) for image in
                      (*episode.support_images, episode.query_image)]
            assert numbers == loaded, sampler


def _query_number_of(image: np.ndarray) -> int:
    return round(float(image.mean()) / 10)


@pytest.mark.parametrize("folder", ["JPEGImages", "SegmentationClassAug"])
def test_a_huge_image_or_label_is_refused_from_its_header(tmp_path, monkeypatch,
                                                          folder) -> None:  # noqa: ANN001
    """A 150 MP file (below PIL's own bomb limit) is refused by the 100 MP limit, named,
    before any pixel is decoded."""
    from PIL import ImageFile

    decode = ImageFile.ImageFile.load

    def no_decoding(self):  # noqa: ANN001, ANN202 - the small files decode as usual
        if self.size[0] * self.size[1] > 100_000_000:
            raise AssertionError("the huge image was decoded")
        return decode(self)

    ids = _tree(tmp_path)
    suffix = ".jpg" if folder == "JPEGImages" else ".png"
    png_header(tmp_path / folder / f"{ids[0]}{suffix}", 12_248, 12_248)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DatasetError, match=rf"{ids[0]}{suffix} is 12248x12248 \(150 MP\); at "
                       "most 100 MP is accepted"):
        dataset = Pascal5i(tmp_path, fold=0, split="test", seed=0, min_pixels=1)
        dataset.episode(0)
