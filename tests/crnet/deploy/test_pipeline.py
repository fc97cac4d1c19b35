from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from crnet.calibration.options import Int8Options
from crnet.cli import main
from crnet.data.options import EpisodeSource
from crnet.deploy.options import DeployOptions
from crnet.deploy.pipeline import deploy
from crnet.runtime.backends.base import backend_class
from tests.export.conftest import save_tiny_checkpoint


@pytest.mark.openvino  # deploy adds openvino rows where it is installed: own process
def test_deploy_writes_the_report_and_reuses_artifacts(tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    lines: list[str] = []
    options = DeployOptions(checkpoint=checkpoint, episodes=3, bench_iterations=2,
                            precisions=("fp32", "fp16"), parity_episodes=2, threads=1,
                            progress=False)
    report = deploy(out, options, log=lines.append)

    assert {p.name for p in out.iterdir()} >= {"bundle", "report.md", "report.json",
                                              "pictures", "cache"}
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["checkpoint_sha256"] == report["checkpoint_sha256"]
    openvino = backend_class("openvino").is_available()[0]
    variants = {record["precision"]: record for record in on_disk["accuracy"]
                if record["backend"] == "onnxruntime"}
    assert set(variants) == {"fp32", "fp16"}
    extra = {record["precision"] for record in on_disk["accuracy"]
             if record["backend"] == "openvino"}
    assert extra == ({"fp32", "fp16"} if openvino else set())
    for record in on_disk["accuracy"]:
        assert record["episodes"] == 3
        assert record["max_abs_delta_miou"] in (0.05, 0.3)
        assert abs(record["delta_miou"]) == abs(record["miou"] - record["reference_miou"])
        assert record["passed"] == (abs(record["delta_miou"]) <= record["max_abs_delta_miou"])
    # the gates are in the bundle, where backend="auto" reads them
    from crnet.runtime.bundle import Bundle

    bundle = Bundle.load(out / "bundle")
    for precision in ("fp32", "fp16"):
        recorded = bundle.gate_results(precision)
        assert set(recorded) == {"onnxruntime"} | ({"openvino"} if openvino else set())
        for backend, gate in recorded.items():
            record = next(r for r in on_disk["accuracy"]
                          if (r["backend"], r["precision"]) == (backend, precision))
            assert gate["passed"] == record["passed"] and gate["episodes"] == 3
            assert gate["graphs"] == bundle.variant_hashes(precision)
    assert on_disk["build"]["target"] in ("onnxruntime-cpu", "tensorrt")
    assert set(on_disk["bench"]) == {"fp32", "fp16"} | (
        {"openvino fp32", "openvino fp16"} if openvino else set())
    markdown = (out / "report.md").read_text()
    assert "| fp16 | onnxruntime |" in markdown
    assert ("| fp16 | openvino |" in markdown) == openvino
    fp32_speed = next(line for line in markdown.splitlines() if line.startswith("| fp32 | ")
                      and "onnxruntime" not in line and "openvino" not in line)
    assert fp32_speed.count(" + ") == 2 and " = " in fp32_speed  # stage means and their sum
    assert "![episode 0](pictures/episode-00.png)" in markdown
    picture = Image.open(out / on_disk["pictures"][0])
    assert picture.size[0] > 3.5 * picture.size[1]  # support, truth, reference, fp32, fp16
    assert on_disk["speed_target_met"] in (True, False)  # fp32 was compared with torch

    lines.clear()
    again = deploy(out, options, log=lines.append)
    assert again["stages"]["export"]["reused"] and again["stages"]["quantize"]["reused"]
    assert any("reuse evaluation of torch fp32" in line for line in lines)
    assert again["accuracy"] == report["accuracy"]


def test_deploy_rejects_bad_arguments(capsys) -> None:
    assert main(["deploy", "--precisions", "fp16"]) == 2
    assert "--precisions must list fp32" in capsys.readouterr().err


def test_deploy_on_a_voc_tree_calibrates_on_train_and_gates_on_test(
        tmp_path: Path, voc_root: Path, pascal_reads) -> None:
    from tests.calibration.conftest import split_ids

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"

    def log(line: str) -> None:  # the stage headers say which stage reads the files
        for number, phase in ((2, "quantize"), (4, "evaluate"), (5, "bench")):
            if line.startswith(f"\n[{number}/6]"):
                pascal_reads.phase = phase

    options = DeployOptions(checkpoint=checkpoint, episodes=3, bench_iterations=2,
                            parity_episodes=2, threads=1, progress=False,
                            data=EpisodeSource(dataset="pascal-5i", data_root=voc_root),
                            check_episodes=2, calibration_episodes=4, sensitivity_episodes=3,
                            int8=Int8Options(calibration_method="minmax"))
    report = deploy(out, options, log=log)

    train, test = split_ids(voc_root, "train_aug.txt"), split_ids(voc_root, "val.txt")
    calibration_reads = pascal_reads.ids("quantize")
    assert calibration_reads and calibration_reads <= train
    assert not calibration_reads & test  # calibration never reads a test-split image
    assert pascal_reads.ids("evaluate") <= test and pascal_reads.ids("bench") <= test
    assert pascal_reads.ids("evaluate") and pascal_reads.ids("bench")

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["settings"]["dataset"] == "pascal-5i" and on_disk["settings"]["fold"] == 0
    assert {r["precision"] for r in on_disk["accuracy"]} == {"fp32", "fp16", "int8"}
    for record in on_disk["accuracy"]:
        assert record["dataset"] == "pascal-5i" and record["split"] == "test"
        assert record["passed"] in (True, False) and record["max_abs_delta_miou"] > 0
        assert set(record["per_class_iou"]) <= {"1", "2", "3", "4", "5"}  # novel classes
    for key in ("int8_calibration", "int8_sensitivity", "fp16_check"):
        assert on_disk["calibration"][key]["dataset"] == "pascal-5i"
        assert on_disk["calibration"][key]["split"] == "train"
    assert on_disk["bench"]["int8"]["episodes"]["dataset"] == "pascal-5i"
    markdown = (out / "report.md").read_text()
    assert "## Accuracy (pascal-5i fold 0 test episodes" in markdown
    assert "* int8 calibration: 4 episodes of pascal-5i fold 0 train split" in markdown
    assert report["passed"] == all(r["passed"] for r in on_disk["accuracy"])

    pascal_reads.phase = "again"
    lines: list[str] = []
    again = deploy(out, replace(options, data=EpisodeSource(), precisions=("fp32", "int8")),
                   log=lines.append)  # synthetic-5i now: recalibrate
    assert any("saved int8 ranges came from other data or settings: recalibrating" in line
               for line in lines)
    calibration = again["calibration"]["int8_calibration"]
    assert calibration["dataset"] == "synthetic-5i" and calibration["split"] == "train"


def test_deploy_dataset_needs_a_data_root(capsys) -> None:
    assert main(["deploy", "--dataset", "pascal-5i"]) == 2
    assert "--dataset pascal-5i needs --data-root DIR" in capsys.readouterr().err


def test_deploy_with_a_missing_checkpoint_writes_nothing(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    out = tmp_path / "out"
    assert main(["deploy", "--checkpoint", str(tmp_path / "absent.safetensors"),
                       "--out", str(out)]) == 1
    assert "checkpoint weights not found" in capsys.readouterr().err
    assert not out.exists()
