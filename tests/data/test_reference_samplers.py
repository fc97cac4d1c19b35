"""The hsnet and pfenet samplers against re-implementations of HSNet's and PFENet's test
loops (tests/data/reference_samplers.py) on a generated VOC tree: the full (query, class,
supports) sequences, 1- and 5-shot, two folds; and the episodes crnet eval loads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crnet.data.episodes import load_rgb
from crnet.data.pascal import Pascal5i
from tests.data.reference_samplers import (
    hsnet_test_episodes,
    pfenet_test_episodes,
    write_hsnet_fold_files,
)

H, W = 64, 96
SPLITS_DIR = Path(__file__).resolve().parents[2] / "data" / "splits" / "hsnet" / "pascal" / "val"
HSNET_BLOBS = {0: "3170e6873ab3ace104b4ad2525f6a232f1012fc1",
               1: "f63aa822c7dcbfea07cdfc6c42d976699429745f",
               2: "3033f09423f705528eeaca4b4f3744c7582e6194",
               3: "8a797acfd48c4c3626318201a852184059ddac66"}


def write_mixed_voc(root: Path, count: int = 420, seed: int = 5) -> Path:
    """A VOC2012-layout val tree whose images hold several classes: a left object (a fold-0
    class mostly, 46x46 = 2116 pixels or 40x40 = 1600, under PFENet's 2048), a right one
    (a fold-2 class mostly, person the most), two 6x6 specks of any class and 255 edges.
    Folds 0 and 2 have ~300 query images (PFENet runs 5001 episodes), fold 1 few (its
    20-pass cap ends the run)."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        label = np.zeros((H, W), np.uint8)
        left = int(rng.integers(1, 6)) if rng.random() < 0.85 else int(rng.integers(6, 11))
        side = 46 if rng.random() < 0.8 else 40
        label[2:2 + side, 2:2 + side] = left
        label[1, 2:2 + side] = 255
        if rng.random() < 0.85:
            right = 15 if rng.random() < 0.4 else int(rng.integers(11, 15))
        else:
            right = int(rng.integers(16, 21))
        side = 46 if rng.random() < 0.8 else 40
        label[2:2 + side, 49:49 + side] = right
        label[2:2 + side, 48] = 255
        for slot in range(2):
            label[54:60, 10 + 20 * slot:16 + 20 * slot] = int(rng.integers(1, 21))
        image_id = f"2009_{i:06d}"
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        Image.fromarray(label, mode="L").save(root / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def mixed_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_voc(tmp_path_factory.mktemp("mixed") / "VOC2012")


@pytest.fixture(scope="module")
def hsnet_rule_lists(mixed_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HSNet fold lists for the generated tree, made by the >= 2048-pixel rule."""
    return write_hsnet_fold_files(mixed_voc, tmp_path_factory.mktemp("hsnet-splits"))


@pytest.fixture(scope="module")
def fingerprints(mixed_voc: Path) -> dict[bytes, str]:
    """Decoded image bytes -> image id: which image an episode loaded."""
    table = {}
    for path in sorted((mixed_voc / "JPEGImages").glob("*.jpg")):
        table[hashlib.sha1(load_rgb(path).tobytes()).digest()] = path.stem
    return table


def _loaded(dataset: Pascal5i, count: int, shots: int,
            fingerprints: dict[bytes, str]) -> list[tuple[str, int, tuple[str, ...]]]:
    """(query, class, supports) of the episodes crnet eval would score, read back from
    the images the dataset loaded."""

    def name(image: np.ndarray) -> str:
        return fingerprints[hashlib.sha1(image.tobytes()).digest()]

    return [(name(e.query_image), e.class_id, tuple(name(s) for s in e.support_images))
            for e in dataset.episodes(count, shots=shots)]


def _planned(dataset: Pascal5i, count: int, shots: int) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(p.query, p.class_id, p.supports) for p in dataset.plan(count, shots)]


def _first_difference(a: list, b: list) -> str:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"episode {index}: project {x} vs original {y}"
    return f"lengths {len(a)} vs {len(b)}"


def test_shipped_hsnet_lists_are_hsnets_files() -> None:
    for fold, blob in HSNET_BLOBS.items():
        data = (SPLITS_DIR / f"fold{fold}.txt").read_bytes()
        digest = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert digest == blob, fold  # git's blob id of HSNet's data/splits/pascal/val file


@pytest.mark.parametrize("fold", [0, 2])
@pytest.mark.parametrize("shots", [1, 5])
def test_hsnet_sequence_by_the_pixel_rule(mixed_voc: Path, hsnet_rule_lists: Path,
                                          fold: int, shots: int) -> None:
    original = hsnet_test_episodes(hsnet_rule_lists / f"fold{fold}.txt", shots, seed=0)
    dataset = Pascal5i(mixed_voc, fold, sampler="hsnet", seed=0)
    assert dataset.hsnet_list_source == "rule"
    ours = _planned(dataset, 1000, shots)
    assert ours == original, _first_difference(ours, original)
    if shots == 5:  # HSNet keeps repeated supports; so must the sampler
        assert sum(len(set(s)) < len(s) for _, _, s in original) > 10


@pytest.mark.parametrize("fold", [0, 2])
@pytest.mark.parametrize("shots", [1, 5])
def test_hsnet_episodes_eval_loads(mixed_voc: Path, hsnet_rule_lists: Path,
                                   fingerprints: dict[bytes, str], fold: int,
                                   shots: int) -> None:
    original = hsnet_test_episodes(hsnet_rule_lists / f"fold{fold}.txt", shots, seed=0,
                                   count=250)
    ours = _loaded(Pascal5i(mixed_voc, fold, sampler="hsnet", seed=0), 250, shots,
                   fingerprints)
    assert ours == original, _first_difference(ours, original)


@pytest.mark.parametrize("fold", [0, 2])
@pytest.mark.parametrize("shots", [1, 5])
def test_hsnet_sequence_on_the_published_lists(tmp_path: Path, fold: int, shots: int) -> None:
    """On a tree whose val list holds every image of HSNet's lists, the walk is HSNet's
    published list (no label is read to make it)."""
    ids = sorted({line.split("__")[0] for f in range(4)
                  for line in (SPLITS_DIR / f"fold{f}.txt").read_text().split()})
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text(
        "\n".join(ids + ["2012_999999"]) + "\n")
    dataset = Pascal5i(tmp_path, fold, sampler="hsnet", seed=0)
    assert dataset.hsnet_list_source == "published"
    original = hsnet_test_episodes(SPLITS_DIR / f"fold{fold}.txt", shots, seed=0)
    ours = _planned(dataset, 1000, shots)
    assert ours == original, _first_difference(ours, original)


@pytest.mark.parametrize("fold", [0, 2])
@pytest.mark.parametrize("shots", [1, 5])
def test_pfenet_sequence(mixed_voc: Path, fold: int, shots: int) -> None:
    original = pfenet_test_episodes(mixed_voc, fold, shots, seed=321)
    assert len(original) == 5001  # test_num 5000 and PFENet's break test
    ours = _planned(Pascal5i(mixed_voc, fold, sampler="pfenet", seed=321), 5001, shots)
    assert ours == original, _first_difference(ours, original)


def test_pfenet_twenty_pass_cap(mixed_voc: Path) -> None:
    original = pfenet_test_episodes(mixed_voc, 1, 1, seed=321)
    dataset = Pascal5i(mixed_voc, 1, sampler="pfenet", seed=321)
    queries = len(dataset.query_walk())
    assert len(original) == 20 * queries < 5001
    ours = _planned(dataset, 5001, 1)
    assert ours == original, _first_difference(ours, original)
    assert len(list(dataset.episodes(5001, shots=1))) == 20 * queries


@pytest.mark.parametrize("fold", [0, 2])
@pytest.mark.parametrize("shots", [1, 5])
def test_pfenet_episodes_eval_loads(mixed_voc: Path, fingerprints: dict[bytes, str],
                                    fold: int, shots: int) -> None:
    original = pfenet_test_episodes(mixed_voc, fold, shots, seed=321, test_num=249)
    assert len(original) == 250
    ours = _loaded(Pascal5i(mixed_voc, fold, sampler="pfenet", seed=321), 250, shots,
                   fingerprints)
    assert ours == original, _first_difference(ours, original)


UNIFORM_SHA256 = "96696864a6aaf7b647f71c94b2813e40e6bd7e31e44d83e4a3eb392f1f25af19"


def test_uniform_sampler_draws_are_unchanged(mixed_voc: Path,
                                             fingerprints: dict[bytes, str]) -> None:
    """The default sampler's episodes on this tree, recorded as a hash of their (query,
    class, supports) sequence: the plan and the loaded episodes both give it."""
    fold0, fold2 = Pascal5i(mixed_voc, 0, seed=3), Pascal5i(mixed_voc, 2, seed=3)
    planned = _planned(fold0, 200, 5) + _planned(fold2, 200, 1)
    assert hashlib.sha256(repr(planned).encode()).hexdigest() == UNIFORM_SHA256
    assert _loaded(fold0, 20, 5, fingerprints) == planned[:20]
