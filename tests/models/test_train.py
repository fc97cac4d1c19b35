from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.config import CRNetConfig, TrainConfig
from models.training import learning_rate, train


def test_train_evaluates_saves_and_resumes(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    settings = dict(steps=2, batch=2, eval_every=2, eval_episodes=2, save_every=1, warmup=1,
                    threads=1)
    first = train(TrainConfig(**settings), tmp_path, model_config=tiny_config, progress=False)
    assert first["step"] == 2 and math.isfinite(first["loss"]) and 0 <= first["miou_1shot"] <= 100
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["step"] == 2 and len(state["history"]) == 1

    resumed = train(TrainConfig(**{**settings, "steps": 4}), tmp_path, resume=True,
                    model_config=tiny_config, progress=False)
    assert resumed["step"] == 4
    state = json.loads((tmp_path / "state.json").read_text())
    assert [entry["step"] for entry in state["history"]] == [2, 4]
    assert state["history"][1]["total_elapsed_s"] >= state["history"][0]["total_elapsed_s"]

    model, info = load_checkpoint(tmp_path / "tiny-fold0.safetensors")
    assert info.training["steps_done"] == 4 and info.config == tiny_config
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_learning_rate_schedule() -> None:
    config = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, config) == 0.1
    assert learning_rate(9, config) == 1.0
    assert math.isclose(learning_rate(100, config), 0.1)
    assert learning_rate(50, config) < learning_rate(20, config)


def test_the_trained_fold_reaches_calibration_and_parity(tiny_config: CRNetConfig,
                                                         tmp_path: Path) -> None:
    """A checkpoint from `crnet train --fold 2` is calibrated and checked on fold 2: the
    fold is read from what training really writes (training.train.fold)."""
    from calibration.quantize import default_fold
    from export.to_onnx import export_bundle
    from models.provenance import training_fold
    from runtime.bundle import Bundle

    settings = dict(fold=2, steps=1, batch=1, eval_every=1, eval_episodes=1, save_every=1,
                    warmup=1, threads=1)
    train(TrainConfig(**settings), tmp_path / "run", model_config=tiny_config, progress=False)
    weights = tmp_path / "run" / "tiny-fold2.safetensors"
    recorded = json.loads(weights.with_suffix(".json").read_text())["training"]
    assert "fold" not in recorded and recorded["train"]["fold"] == 2
    assert training_fold(recorded) == 2

    manifest = export_bundle(tmp_path / "bundle", weights, parity_episodes=1, progress=False)
    assert manifest["parity"]["fold"] == 2
    assert default_fold(Bundle.load(tmp_path / "bundle")) == 2


def test_provenance_refuses_an_impossible_fold() -> None:
    from models.provenance import ProvenanceError, training_fold

    assert training_fold({}) is None and training_fold({"fold": 3}) is None
    with pytest.raises(ProvenanceError, match="fold 7"):
        training_fold({"train": {"fold": 7}})
