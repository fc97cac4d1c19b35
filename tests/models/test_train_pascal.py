"""The user's path on the VOC-layout fixture: `crnet train --dataset pascal-5i` ->
checkpoint -> `crnet eval --checkpoint ... --dataset pascal-5i`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crnet.cli import main as crnet


def _eval(checkpoint: Path, voc_root: Path, out: Path, *extra: str) -> dict:
    code = crnet(["eval", "--checkpoint", str(checkpoint), "--dataset", "pascal-5i",
                  "--data-root", str(voc_root), "--fold", "0", "--episodes", "3",
                  "--no-progress", "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_lite_on_pascal_trains_and_evaluates(voc_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code = crnet(["train", "--preset", "crnet-lite", "--dataset", "pascal-5i", "--data-root",
                  str(voc_root), "--fold", "0", "--steps", "2", "--batch", "2",
                  "--input-size", "97", "--eval-every", "2", "--eval-episodes", "2",
                  "--threads", "2", "--run-dir", str(run_dir)])
    assert code == 0
    checkpoint = run_dir / "crnet-lite-fold0.safetensors"
    recorded = json.loads(checkpoint.with_suffix(".json").read_text())["training"]
    assert recorded["train"]["dataset"] == "pascal-5i" and recorded["train"]["fold"] == 0
    assert recorded["train"]["data_root"] == str(voc_root)
    assert recorded["train"]["recipe"] == "scratch" and recorded["steps_done"] == 2

    uniform = _eval(checkpoint, voc_root, tmp_path / "uniform.json")
    assert uniform["dataset"] == "pascal-5i" and uniform["sampler"] == "uniform"
    assert uniform["episodes"] == 3 and 0 <= uniform["miou"] <= 100
    assert sorted(uniform["per_class_iou"]) == ["1", "2", "3", "4", "5"]  # the fold's classes
    hsnet = _eval(checkpoint, voc_root, tmp_path / "hsnet.json", "--sampler", "hsnet")
    assert hsnet["sampler"] == "hsnet" and 0 <= hsnet["fbiou"] <= 100


def test_eval_sampler_is_refused_on_synthetic(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = crnet(["eval", "--sampler", "pfenet", "--episodes", "1", "--no-progress"])
    assert code == 2  # a combination of options that cannot work: a bad command line
    assert "applies to pascal-5i only" in capsys.readouterr().err


@pytest.mark.slow
def test_r50_with_init_trunk_on_pascal(voc_root: Path, tmp_path: Path) -> None:
    from crnet.models.checkpoint import load_checkpoint
    from crnet.models.imagenet_init import trunk_key
    from tests.models.test_imagenet_init import resnet50_state_dict

    weights = tmp_path / "resnet50-11ad3fa6.pth"
    source = resnet50_state_dict(seed=3)
    torch.save(source, weights)
    run_dir = tmp_path / "r50"
    code = crnet(["train", "--preset", "crnet-r50", "--dataset", "pascal-5i", "--data-root",
                  str(voc_root), "--fold", "0", "--device", "cpu", "--init-trunk",
                  str(weights), "--steps", "2", "--batch", "1", "--input-size", "129",
                  "--eval-every", "2", "--eval-episodes", "1", "--threads", "2",
                  "--run-dir", str(run_dir)])
    assert code == 0
    checkpoint = run_dir / "crnet-r50-fold0.safetensors"
    model, info = load_checkpoint(checkpoint)
    assert info.training["train"]["recipe"] == "canet"
    assert info.training["init_trunk"]["file"] == weights.name
    trunk = model.trunk.state_dict()
    for key, value in source.items():
        if not key.startswith(("fc.", "layer4.")):
            assert torch.equal(trunk[trunk_key(key)], value), key
    result = _eval(checkpoint, voc_root, tmp_path / "r50.json", "--shots", "5")
    assert result["shots"] == 5 and 0 <= result["miou"] <= 100


def test_eval_counts_classes_without_an_episode_as_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """synthetic-5i cycles through the fold's classes: 2 episodes cover classes 1 and 2
    only; the mean is still over 5 classes and the run says so."""
    out = tmp_path / "eval.json"
    assert crnet(["eval", "--episodes", "2", "--no-progress", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["absent_classes"] == [3, 4, 5]
    per_class = record["per_class_iou"]
    assert per_class["3"] == per_class["4"] == per_class["5"] == 0.0
    assert record["miou"] == pytest.approx((per_class["1"] + per_class["2"]) / 5)
    assert "classes [3, 4, 5] had no episode and count 0" in capsys.readouterr().out
