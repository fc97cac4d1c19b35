"""The shipped crnet-lite checkpoint through the whole runtime path (slow: -m slow).

The fast suite checks the runtime on a tiny random-weight model; this checks the real
trained weights: exported with the default settings, the onnxruntime Segmenter (one fused
session per query, the refine graph cut to the query branch) must agree with the torch
Segmenter on the masks and keep the model card's accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crnet.runtime import Segmenter

pytestmark = pytest.mark.slow

EPISODES = 100
MIN_AGREEMENT = 0.999
MIN_MIOU = 60.0  # the model card reports 66.9 on 1000 episodes


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crnet.export.to_onnx import export_bundle

    out = tmp_path_factory.mktemp("shipped") / "bundle"
    export_bundle(out, parity_episodes=8, progress=False)
    return out


def test_shipped_model_onnxruntime_agrees_with_torch(shipped_bundle: Path) -> None:
    from crnet.data.evaluation import evaluate, segmenter_predictor
    from crnet.data.synthetic import Synthetic5i

    candidate = Segmenter(shipped_bundle, backend="onnxruntime", threads=1)
    reference = Segmenter(shipped_bundle, backend="torch", threads=1)
    assert candidate.describe()["query_refine"]["chained"] == "yes"
    dataset = Synthetic5i(0, split="test", seed=0)
    episodes = [dataset.episode(index, 1) for index in range(EPISODES)]
    kept: dict[str, list[np.ndarray]] = {}
    for name, segmenter in (("onnxruntime", candidate), ("torch", reference)):
        result = evaluate(segmenter_predictor(segmenter), episodes, progress=False,
                          keep_predictions=True)
        assert result.miou >= MIN_MIOU, f"{name}: mIoU {result.miou:.1f}"
        kept[name] = result.predictions
    agree = sum(int(np.count_nonzero(a == b))
                for a, b in zip(kept["onnxruntime"], kept["torch"], strict=True))
    total = sum(mask.size for mask in kept["torch"])
    assert agree / total >= MIN_AGREEMENT, f"mask agreement {100 * agree / total:.3f}%"
