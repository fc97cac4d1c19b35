from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from crnet.deploy import deploy, main
from runtime.backends.base import backend_class
from tests.export.conftest import save_tiny_checkpoint


@pytest.mark.openvino  # deploy adds openvino rows where it is installed: own process
def test_deploy_writes_the_report_and_reuses_artifacts(tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    lines: list[str] = []
    options = dict(episodes=3, bench_iterations=2, precisions=["fp32", "fp16"],
                   parity_episodes=2, threads=1, progress=False, log=lines.append)
    report = deploy(out, checkpoint, **options)

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
    assert on_disk["build"]["target"] in ("onnxruntime-cpu", "tensorrt")
    assert set(on_disk["bench"]) == {"fp32", "fp16"} | (
        {"openvino fp32", "openvino fp16"} if openvino else set())
    markdown = (out / "report.md").read_text()
    assert "| fp16 | onnxruntime |" in markdown
    assert ("| fp16 | openvino |" in markdown) == openvino
    fp32_speed = next(line for line in markdown.splitlines() if line.startswith("| fp32 | ")
                      and "onnxruntime" not in line and "openvino" not in line)
    assert fp32_speed.count(" / ") == 2  # preprocess / inference / postprocess
    assert "![episode 0](pictures/episode-00.png)" in markdown
    picture = Image.open(out / on_disk["pictures"][0])
    assert picture.size[0] > 4 * picture.size[1]  # support, truth, reference, fp32, fp16

    lines.clear()
    again = deploy(out, checkpoint, **options)
    assert again["stages"]["export"]["reused"] and again["stages"]["quantize"]["reused"]
    assert any("reuse evaluation of torch fp32" in line for line in lines)
    assert again["accuracy"] == report["accuracy"]


def test_deploy_rejects_bad_arguments(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit):
        main(["--precisions", "fp16"])
    assert "--precisions must list fp32" in capsys.readouterr().err
