"""EpisodeSource: the data selection every stage shares, checked once when made."""

from __future__ import annotations

from pathlib import Path

import pytest

from crnet.data.options import EpisodeSource
from crnet.runtime.errors import CrnetError, UsageError


@pytest.mark.parametrize(("values", "message"), [
    ({"dataset": "coco"}, "dataset 'coco' is not known"),
    ({"dataset": "pascal-5i"}, "--dataset pascal-5i needs --data-root DIR"),
    ({"fold": 4}, "fold must be 0, 1, 2 or 3, got 4"),
    ({"sampler": "random"}, "sampler 'random' is not known"),
    ({"sampler": "hsnet"}, "applies to pascal-5i only"),
])
def test_bad_values_are_usage_errors(values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        EpisodeSource(**values)
    assert isinstance(caught.value, CrnetError)


def test_stamp_fold_and_seed(tmp_path: Path) -> None:
    source = EpisodeSource(dataset="folder", data_root=tmp_path / "." / "classes")
    assert source.stamp() == {"dataset": "folder", "fold": None,
                              "data_root": str((tmp_path / "classes").resolve())}
    assert source.fold_or(2) == 2 and source.with_fold(1).fold_or(2) == 1
    assert source.with_seed(7).seed == 7 and source.seed == 0  # frozen: a new value
    with pytest.raises(AttributeError):
        source.fold = 3  # type: ignore[misc]


def test_open_gives_the_split_of_the_fold() -> None:
    test = EpisodeSource(fold=1, seed=3).open("test")
    train = EpisodeSource(fold=1, seed=3).open("train")
    assert set(test.classes).isdisjoint(train.classes)
    first = test.episode(0, shots=1)
    assert first.class_id in test.classes
