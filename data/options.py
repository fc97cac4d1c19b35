"""Which episodes a stage reads: one small value shared by deploy, quantize, eval and bench.

The data selection (dataset, its directory, fold, seed, PASCAL-5i sampler) travels as one
``EpisodeSource`` through the stages instead of five keyword arguments side by side. Its
values are checked once, when it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crnet.data.evaluation import DATASETS, SAMPLERS, episode_source, missing_data_root
from crnet.runtime.errors import UsageError

FOLDS = range(4)
DEFAULT_DATASET = "synthetic-5i"


@dataclass(frozen=True)
class EpisodeSource:
    """The episodes a stage draws: a dataset, where it lies, its fold, seed and sampler."""

    dataset: str = DEFAULT_DATASET
    """synthetic-5i (generated), pascal-5i or folder (read from ``data_root``)."""
    data_root: Path | None = None
    """The dataset's directory (pascal-5i: the VOC2012 root); None for synthetic-5i."""
    fold: int | None = None
    """Fold 0-3: its base classes calibrate, its novel classes test; None: the fold the
    checkpoint was trained on where a bundle tells it, else 0."""
    seed: int = 0
    """Seed of the episode draw (the same seed always gives the same episodes)."""
    sampler: str = "uniform"
    """How PASCAL-5i queries are drawn: uniform, hsnet or pfenet (see data.pascal)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UsageError(f"dataset {self.dataset!r} is not known; expected one of "
                             f"{DATASETS}")
        if (problem := missing_data_root(self.dataset, self.data_root)) is not None:
            raise UsageError(problem)
        if self.fold is not None and self.fold not in FOLDS:
            raise UsageError(f"fold must be 0, 1, 2 or 3, got {self.fold!r}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"sampler {self.sampler!r} is not known; expected one of "
                             f"{SAMPLERS}")
        if self.sampler != "uniform" and self.dataset != "pascal-5i":
            raise UsageError(f"sampler {self.sampler!r} applies to pascal-5i only; "
                             f"{self.dataset} takes the uniform sampler")

    @property
    def resolved_root(self) -> str | None:
        """The data root as an absolute path string (how records and stamps name it)."""
        return None if self.data_root is None else str(Path(self.data_root).resolve())

    def fold_or(self, default: int) -> int:
        """The fold, or ``default`` where it is left to the checkpoint."""
        return default if self.fold is None else self.fold

    def with_fold(self, fold: int) -> EpisodeSource:
        """The same source with its fold fixed."""
        return replace(self, fold=fold)

    def with_seed(self, seed: int) -> EpisodeSource:
        """The same source drawing with another seed."""
        return replace(self, seed=seed)

    def open(self, split: str = "test") -> Any:
        """The dataset object of ``split`` (test: the fold's novel classes, train: its
        base classes), from data.evaluation.episode_source."""
        return episode_source(self.dataset, self.fold_or(0), self.seed, self.data_root,
                              split=split, sampler=self.sampler)

    def stamp(self) -> dict[str, Any]:
        """Dataset, fold and resolved data root: what decides whether saved work fits."""
        return {"dataset": self.dataset, "fold": self.fold, "data_root": self.resolved_root}
