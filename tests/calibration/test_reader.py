"""Calibration inputs: deterministic, base classes only, refine inputs from the fp32 backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crnet.calibration.reader import FeedReader, base_episodes, collect_feeds, cpu_session
from crnet.data.episodes import novel_classes
from crnet.runtime.bundle import Bundle


def feeds_of(bundle: Path, count: int = 3, shots: int = 1, seed: int = 0):
    return collect_feeds(bundle, base_episodes(0, count, shots, seed), total=count,
                         progress=False)


def test_same_arguments_give_the_same_arrays(tiny_bundle_q: Path) -> None:
    first, second = feeds_of(tiny_bundle_q), feeds_of(tiny_bundle_q)
    assert len(first) == len(second) == 3
    for graph in ("backbone", "refine"):
        for a, b in zip(getattr(first, graph), getattr(second, graph), strict=True):
            assert a.keys() == b.keys()
            for name in a:
                assert a[name].dtype == np.float32
                np.testing.assert_array_equal(a[name], b[name])


def test_reader_serves_the_same_feeds_after_rewind(tiny_bundle_q: Path) -> None:
    reader = FeedReader(feeds_of(tiny_bundle_q).refine)
    first = [reader.get_next() for _ in range(len(reader))]
    assert reader.get_next() is None
    reader.rewind()
    again = list(iter(reader.get_next, None))
    assert [id(f) for f in first] == [id(f) for f in again]
    reader.set_range(1, 2)
    assert reader.get_next() is first[1] and reader.get_next() is None


def test_calibration_uses_base_classes_only() -> None:
    classes = {episode.class_id for episode in base_episodes(0, 20)}
    assert classes and not classes & set(novel_classes(0))


def test_refine_inputs_are_the_fp32_backbone_features(tiny_bundle_q: Path) -> None:
    feeds = feeds_of(tiny_bundle_q, count=2, shots=2)
    backbone = cpu_session(Bundle.load(tiny_bundle_q).graph_path("backbone", "fp32"))
    for backbone_feed, refine_feed in zip(feeds.backbone, feeds.refine, strict=True):
        assert backbone_feed["image"].shape[0] == 3  # two supports, then the query
        (features,) = backbone.run(None, backbone_feed)
        np.testing.assert_array_equal(refine_feed["support_feat"], features[:2])
        np.testing.assert_array_equal(refine_feed["query_feat"], features[2:])
        assert refine_feed["support_mask"].shape == (2, 1, *features.shape[2:])


def test_no_episodes_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        base_episodes(0, 0)
