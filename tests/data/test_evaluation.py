"""crnet.data.evaluation: the fold mean over the fold's classes, and the sampler choice."""

from __future__ import annotations

import numpy as np
import pytest

from crnet.data.episodes import DatasetError, Episode
from crnet.data.evaluation import episode_source, evaluate, evaluate_many


def _episode(class_id: int, target: list[int]) -> Episode:
    mask = np.array([target], np.uint8)
    image = np.zeros((1, len(target), 3), np.uint8)
    return Episode(class_id, (image,), (mask,), image, mask)


def _perfect(episode: Episode) -> np.ndarray:
    return episode.query_mask == 1


def test_fold_mean_counts_an_absent_class_as_zero() -> None:
    episodes = [_episode(1, [1, 0]), _episode(2, [1, 1])]  # only 2 of the fold's 5 classes
    result = evaluate(_perfect, episodes, progress=False, classes=[1, 2, 3, 4, 5])
    assert result.miou == pytest.approx(40.0)  # (100 + 100 + 0 + 0 + 0) / 5
    assert result.absent_classes == [3, 4, 5]
    assert result.to_dict()["absent_classes"] == [3, 4, 5]
    assert evaluate(_perfect, episodes, progress=False).miou == pytest.approx(100.0)


def test_evaluate_many_passes_the_classes_to_every_meter() -> None:
    episodes = [_episode(6, [1, 0])]
    results = evaluate_many({"a": _perfect, "b": lambda e: np.zeros((1, 2), bool)}, episodes,
                            progress=False, classes=[6, 7])
    assert results["a"].miou == pytest.approx(50.0) and results["b"].miou == 0.0
    assert results["a"].per_class_iou == {6: 100.0, 7: 0.0}


def test_sampler_applies_to_pascal_only(tmp_path) -> None:
    with pytest.raises(DatasetError, match="pascal-5i only"):
        episode_source("synthetic-5i", 0, 0, None, sampler="hsnet")
    with pytest.raises(DatasetError, match="unknown sampler"):
        episode_source("pascal-5i", 0, 0, tmp_path, sampler="random")
    assert episode_source("synthetic-5i", 1, 0, None).classes == [6, 7, 8, 9, 10]
