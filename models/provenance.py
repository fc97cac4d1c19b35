"""Reading a checkpoint's training provenance: the one reader of what `crnet train` records.

``models/training.py`` (`crnet train`) writes the checkpoint JSON's ``training`` section as
``{"recipe", "train": {TrainConfig fields: "preset", "fold", "dataset", ...}, "history",
...}``. Every stage that needs to know how a checkpoint was trained (quantization
calibrates on its fold's base classes; the export's parity check and the model card use
its fold) asks this module, never the dict. Stdlib only: no torch.
"""

from __future__ import annotations

from typing import Any

from crnet.runtime.errors import CrnetError

NUM_FOLDS = 4


class ProvenanceError(CrnetError, ValueError):
    """A checkpoint's training record that says something impossible (e.g. fold 7)."""


def training_config(training: dict[str, Any] | None) -> dict[str, Any]:
    """The TrainConfig fields `crnet train` recorded, or {} for an untrained/foreign model."""
    if not isinstance(training, dict):
        return {}
    recorded = training.get("train")
    return dict(recorded) if isinstance(recorded, dict) else {}


def training_fold(training: dict[str, Any] | None) -> int | None:
    """The PASCAL-5i-style fold the checkpoint was trained on, or None when not recorded."""
    fold = training_config(training).get("fold")
    if fold is None:
        return None
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise ProvenanceError(
            f"the checkpoint's training record has fold {fold!r}; expected an integer "
            f"0..{NUM_FOLDS - 1}")
    return fold


def training_dataset(training: dict[str, Any] | None) -> str | None:
    """The dataset name the checkpoint was trained on (None when not recorded)."""
    dataset = training_config(training).get("dataset")
    return str(dataset) if dataset else None
