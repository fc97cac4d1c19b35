"""The episode protocol of an evaluation as data: which images each episode uses.

``episode_protocol`` lists, for the options of `crnet eval`, the (query id, class, support
ids) of every episode that `crnet eval` scores with those options, without loading an
image, so that a protocol can be inspected, shared and diffed (`crnet episodes`). It opens
the dataset with ``data.evaluation.episode_source``, as `crnet eval` does, and reads the
plan the episodes are loaded from (``Pascal5i.plan``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crnet.data.episodes import DatasetError, check_shots
from crnet.data.evaluation import episode_source

PROTOCOL_FORMAT = 1
"""Version of the JSON layout below."""


def episode_protocol(data_root: Path | str, fold: int = 0, seed: int = 0,
                     sampler: str = "uniform", shots: int = 1, episodes: int = 1000,
                     dataset: str = "pascal-5i", split: str = "test") -> dict[str, Any]:
    """The episodes `crnet eval` scores for these options, as a JSON-ready record.

    ``protocol`` holds one ``{"query", "class", "class_name", "supports"}`` per episode in
    evaluation order (VOC class numbers 1..20; supports in the order they are stacked).
    Only pascal-5i has image ids to list; the pfenet sampler may give fewer episodes than
    asked (its 20 passes end), the record says how many.
    """
    if dataset != "pascal-5i":
        raise DatasetError(f"episode lists name VOC image ids: dataset must be pascal-5i, "
                           f"got {dataset!r}")
    if not isinstance(episodes, int) or episodes < 1:
        raise DatasetError(f"episodes must be a positive integer, got {episodes!r}")
    shots = check_shots(shots)
    source = episode_source(dataset, fold, seed, Path(data_root), split=split,
                            sampler=sampler)
    planned = source.plan(episodes, shots)
    record: dict[str, Any] = {
        "format": PROTOCOL_FORMAT,
        "dataset": dataset,
        "data_root": str(Path(data_root).resolve()),
        "image_list": str(source.list_file),
        "split": split,
        "fold": source.fold,
        "classes": list(source.classes),
        "sampler": sampler,
        "seed": seed,
        "shots": shots,
        "min_pixels": source.min_pixels,
        "episodes_requested": episodes,
        "episodes": len(planned),
        "protocol": [entry.to_dict() for entry in planned],
    }
    if sampler == "hsnet":
        record["hsnet_list"] = source.hsnet_list_source
    return record


def write_protocol(path: Path | str, record: dict[str, Any]) -> Path:
    """Write an ``episode_protocol`` record as JSON (atomically); returns the path."""
    from crnet.runtime.files import write_json_atomic

    write_json_atomic(Path(path), record)
    return Path(path)
