"""The paper-size crnet-r50 through `crnet deploy` on a VOC-layout tree (slow: -m slow).

Random weights (training is models/'s business): the path, the scaled budgets and the
local sensitivity ranking are what is checked here, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_r50_deploys_on_pascal_with_local_sensitivity(tmp_path: Path, voc_root: Path,
                                                      pascal_reads) -> None:
    import torch

    from crnet.data.options import EpisodeSource
    from crnet.deploy.options import DeployOptions
    from crnet.deploy.pipeline import deploy
    from crnet.models.checkpoint import save_checkpoint
    from crnet.models.config import TrainConfig, preset
    from crnet.models.crnet import CRNet
    from crnet.models.training import training_record
    from tests.calibration.conftest import split_ids

    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        CRNet(preset("crnet-r50")).eval(), tmp_path / "crnet-r50-fold0",
        training=training_record(TrainConfig(preset="crnet-r50", fold=0)))
    out = tmp_path / "out"

    def log(line: str) -> None:  # the stage headers say which stage reads the files
        for number, phase in ((2, "quantize"), (4, "evaluate")):
            if line.startswith(f"\n[{number}/6]"):
                pascal_reads.phase = phase

    summary = deploy(out, DeployOptions(
        checkpoint=checkpoint, data=EpisodeSource(dataset="pascal-5i", data_root=voc_root),
        episodes=2, parity_episodes=2, calibration_episodes=2, sensitivity_episodes=2,
        check_episodes=2, bench_iterations=2, threads=2, progress=False), log=log)
    report = json.loads((out / "report.json").read_text())
    assert summary["passed"] == report["passed"]
    assert report["budget"]["model"] == "large" and report["budget"]["gflops_per_query"] > 10
    assert {r["precision"] for r in report["accuracy"]} == {"fp32", "fp16", "int8"}
    assert all(r["passed"] in (True, False) for r in report["accuracy"])
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    sensitivity = manifest["variants"]["int8"]["how"]["sensitivity"]
    assert sensitivity["rank_method"] == "local" and sensitivity["layers"] > 40
    assert len(sensitivity["ranking"]) == sensitivity["layers"]
    assert len(sensitivity["confirmed"]) == 4
    assert len(sensitivity["kept_fp32_layers"]) <= 4
    assert report["calibration"]["int8_calibration"]["split"] == "train"
    train, test = split_ids(voc_root, "train_aug.txt"), split_ids(voc_root, "val.txt")
    assert pascal_reads.ids("quantize") and pascal_reads.ids("quantize") <= train
    assert pascal_reads.ids("evaluate") and pascal_reads.ids("evaluate") <= test
    for stage in ("export", "quantize", "build", "evaluate", "bench"):
        assert report["stages"][stage]["peak_rss_mb"] > 0
