"""Few-shot segmentation metrics (numpy only): mIoU and FB-IoU in percent.

mIoU: per class, intersections and unions are summed over all episodes of that class,
IoU = sum(I) / sum(U). The mean is over the fold's classes when the meter is given them
(``FewShotMeter(classes=[...])``): a class without an episode counts 0, as in HSNet's
``compute_iou`` and PFENet's ``class_miou``. Without a class list it is over the classes
seen. FB-IoU: foreground and background IoU, each summed over all episodes regardless of
class, averaged. Target pixels labelled 255 never count. A union of zero pixels scores
IoU 0 (HSNet and PFENet divide by max(union, 1) / union + 1e-10), never 100.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

IGNORE = 255


def _iou(intersection: int, union: int) -> float:
    return intersection / union if union else 0.0


class FewShotMeter:
    """Accumulates per-episode confusion counts; see the module docstring for the rules."""

    def __init__(self, classes: Iterable[int] | None = None) -> None:
        self.classes: list[int] | None = None if classes is None else sorted(
            {int(c) for c in classes})
        if self.classes is not None and not self.classes:
            raise ValueError("FewShotMeter(classes=...) needs at least one class id")
        self._inter: dict[int, int] = {}
        self._union: dict[int, int] = {}
        self._fg = [0, 0]  # intersection, union
        self._bg = [0, 0]
        self.episodes = 0

    def update(self, class_id: int, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add one episode: ``prediction`` HxW bool (nonzero = foreground), ``target`` 0/1/255."""
        prediction = np.asarray(prediction)
        target = np.asarray(target)
        if prediction.ndim != 2 or prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {prediction.shape} must equal target shape {target.shape} "
                "and be 2-D (HxW)"
            )
        key = int(class_id)
        if self.classes is not None and key not in self.classes:
            raise ValueError(f"episode of class {key}, which is not among the meter's classes "
                             f"{self.classes}")
        bad = (target != 0) & (target != 1) & (target != IGNORE)
        if bad.any():
            raise ValueError(f"target values must be 0, 1 or 255, got {np.unique(target[bad])}")
        pred = prediction.astype(bool, copy=False)
        valid = target != IGNORE
        fg = target == 1
        bg = target == 0
        pred_v = pred & valid
        inter_fg = int(np.count_nonzero(pred_v & fg))
        union_fg = int(np.count_nonzero(pred_v | fg))
        nopred_v = valid & ~pred
        inter_bg = int(np.count_nonzero(nopred_v & bg))
        union_bg = int(np.count_nonzero(nopred_v | bg))
        self._inter[key] = self._inter.get(key, 0) + inter_fg
        self._union[key] = self._union.get(key, 0) + union_fg
        self._fg[0] += inter_fg
        self._fg[1] += union_fg
        self._bg[0] += inter_bg
        self._bg[1] += union_bg
        self.episodes += 1

    def _require_data(self) -> None:
        if self.episodes == 0:
            raise ValueError("FewShotMeter has no episodes; call update() first")

    def missing_classes(self) -> list[int]:
        """The meter's classes that no episode covered (they count 0 in ``miou``)."""
        return [] if self.classes is None else [c for c in self.classes if c not in self._inter]

    def per_class_iou(self) -> dict[int, float]:
        """IoU in percent per class, keyed by class id (sorted): the meter's classes when
        given (0 for a class without an episode), else the classes seen."""
        keys = self.classes if self.classes is not None else sorted(self._inter)
        return {c: 100.0 * _iou(self._inter.get(c, 0), self._union.get(c, 0)) for c in keys}

    def miou(self) -> float:
        """Mean per-class IoU in percent, over the meter's classes (or those seen)."""
        self._require_data()
        values = list(self.per_class_iou().values())
        return float(sum(values) / len(values))

    def fbiou(self) -> float:
        """Mean of foreground IoU and background IoU over all episodes, in percent."""
        self._require_data()
        return 100.0 * (_iou(*self._fg) + _iou(*self._bg)) / 2.0
