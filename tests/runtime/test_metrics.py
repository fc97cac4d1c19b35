"""FewShotMeter against hand-computed mIoU / FB-IoU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from crnet.runtime.metrics import FewShotMeter

X = 255  # ignore


def _a(values, dtype=np.uint8) -> np.ndarray:
    return np.array([values], dtype=dtype)


def _meter() -> FewShotMeter:
    meter = FewShotMeter()
    # class 1, ep A: fg I=1 U=3; bg I=2 U=4 (the ignored pixel is predicted fg: no effect)
    meter.update(1, _a([1, 0, 1, 0, 1, 0], bool), _a([1, 1, 0, 0, X, 0]))
    # class 1, ep B: empty prediction: fg I=0 U=4; bg I=2 U=6
    meter.update(1, _a([0, 0, 0, 0, 0, 0], bool), _a([1, 1, 1, 1, 0, 0]))
    # class 2, ep C: class absent from the target: fg I=0 U=1; bg I=4 U=5
    meter.update(2, _a([1, 0, 0, 0, 0, 1], bool), _a([0, 0, 0, 0, 0, X]))
    # class 2, ep D: perfect: fg I=2 U=2; bg I=4 U=4
    meter.update(2, _a([0, 1, 1, 0, 0, 0], bool), _a([0, 1, 1, 0, 0, 0]))
    return meter


def test_hand_computed() -> None:
    meter = _meter()
    assert meter.per_class_iou() == pytest.approx({1: 100 / 7, 2: 200 / 3})
    assert meter.miou() == pytest.approx((100 / 7 + 200 / 3) / 2)
    # fg: I=3 U=10; bg: I=12 U=19
    assert meter.fbiou() == pytest.approx(50 * (3 / 10 + 12 / 19))
    assert meter.episodes == 4


def test_sums_not_means_per_class() -> None:
    meter = FewShotMeter()
    meter.update(5, _a([1, 1, 1, 1], bool), _a([1, 1, 1, 1]))  # IoU 1
    meter.update(5, _a([1, 0, 0, 0], bool), _a([0, 0, 0, 1]))  # IoU 0, U=2
    assert meter.miou() == pytest.approx(100 * 4 / 6)  # not (100 + 0) / 2


def test_perfect_and_uint8_predictions() -> None:
    meter = FewShotMeter()
    target = _a([0, 1, X, 1])
    meter.update(3, np.array([[0, 1, 0, 1]], np.uint8), target)
    assert meter.miou() == 100.0 and meter.fbiou() == 100.0


def test_errors() -> None:
    meter = FewShotMeter()
    with pytest.raises(ValueError, match="shape"):
        meter.update(1, np.zeros((4, 5), bool), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="0, 1 or 255"):
        meter.update(1, np.zeros((2, 2), bool), np.full((2, 2), 7, np.uint8))
    with pytest.raises(ValueError, match="no episodes"):
        meter.miou()


def test_no_torch_import() -> None:
    code = "import sys, runtime.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fold_classes_absent_class_counts_zero() -> None:
    """HSNet/PFENet: the fold mean is over the fold's classes; a class without an episode
    scores 0 instead of leaving the mean."""
    meter = FewShotMeter(classes=[1, 2, 3, 4, 5])
    meter.update(1, _a([1, 1, 0, 0], bool), _a([1, 1, 0, 0]))  # class 1: IoU 100
    meter.update(2, _a([1, 0, 0, 0], bool), _a([1, 1, 0, 0]))  # class 2: IoU 50
    assert meter.per_class_iou() == pytest.approx({1: 100.0, 2: 50.0, 3: 0.0, 4: 0.0, 5: 0.0})
    assert meter.miou() == pytest.approx(150.0 / 5)
    assert meter.missing_classes() == [3, 4, 5]
    seen_only = FewShotMeter()
    seen_only.update(1, _a([1, 1, 0, 0], bool), _a([1, 1, 0, 0]))
    seen_only.update(2, _a([1, 0, 0, 0], bool), _a([1, 1, 0, 0]))
    assert seen_only.miou() == pytest.approx(75.0)
    with pytest.raises(ValueError, match="class 9"):
        meter.update(9, _a([1], bool), _a([1]))
    with pytest.raises(ValueError, match="at least one class"):
        FewShotMeter(classes=[])


def test_zero_union_scores_zero_not_hundred() -> None:
    meter = FewShotMeter(classes=[1, 2])
    meter.update(1, _a([0, 0, 0], bool), _a([0, 0, X]))  # nothing to find, nothing predicted
    meter.update(2, _a([1, 1, 0], bool), _a([1, 1, 0]))
    assert meter.per_class_iou() == {1: 0.0, 2: 100.0}
    assert meter.miou() == pytest.approx(50.0)
    # all-ignored episode: every union is zero, FB-IoU is 0 rather than 100
    empty = FewShotMeter()
    empty.update(3, _a([1, 0], bool), _a([X, X]))
    assert empty.fbiou() == 0.0 and empty.miou() == 0.0
