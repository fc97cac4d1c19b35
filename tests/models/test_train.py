from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from crnet.models.checkpoint import load_checkpoint
from crnet.models.config import CRNetConfig, TrainConfig
from crnet.models.training import learning_rate, train


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
    from crnet.calibration.variants import default_fold
    from crnet.export.to_onnx import export_bundle
    from crnet.models.provenance import training_fold
    from crnet.runtime.bundle import Bundle

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
    from crnet.models.provenance import ProvenanceError, training_fold

    assert training_fold({}) is None and training_fold({"fold": 3}) is None
    with pytest.raises(ProvenanceError, match="fold 7"):
        training_fold({"train": {"fold": 7}})


def test_frozen_trunk_stays_as_it_was_and_the_head_trains(tiny_config: CRNetConfig,
                                                         tmp_path: Path) -> None:
    """CaNet's recipe on the tiny model: SGD, the trunk (BatchNorm statistics included)
    leaves training bit-identical, the rest changes. (The crnet-r50 + --init-trunk version
    is tests/models/test_imagenet_init.py, marked slow.)"""
    from crnet.models.crnet import CRNet

    config = TrainConfig.for_recipe("canet", steps=2, batch=2, input_size=65, eval_every=2,
                                    eval_episodes=1, save_every=2, threads=1)
    assert config.freeze_trunk and config.optimizer == "sgd"
    train(config, tmp_path, model_config=tiny_config, progress=False)
    model, info = load_checkpoint(tmp_path / "tiny-fold0.safetensors")
    torch.manual_seed(config.seed)
    initial = CRNet(tiny_config)
    for key, value in initial.trunk.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[key], value), key
    changed = [k for k, v in initial.state_dict().items()
               if not k.startswith("trunk.") and not torch.equal(model.state_dict()[k], v)]
    assert changed
    assert info.training["train"]["recipe"] == "canet"
    scratch = TrainConfig(steps=1, batch=1, eval_every=1, eval_episodes=1, save_every=1,
                          warmup=1, threads=1)
    train(scratch, tmp_path / "scratch", model_config=tiny_config, progress=False)
    trained, _ = load_checkpoint(tmp_path / "scratch" / "tiny-fold0.safetensors")
    assert not torch.equal(trained.trunk.stem[1].running_mean, initial.trunk.stem[1].running_mean)


def test_amp_on_cpu_trains_with_bfloat16(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch=2, eval_every=2, eval_episodes=1, save_every=2,
                         warmup=1, threads=1, amp=True)
    final = train(config, tmp_path, model_config=tiny_config, progress=False)
    assert math.isfinite(final["loss"])
    model, info = load_checkpoint(tmp_path / "tiny-fold0.safetensors")
    assert info.training["amp_dtype"] == "bfloat16" and info.training["train"]["amp"] is True
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_with_amp_and_grad_scaler(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    config = TrainConfig(steps=3, batch=2, eval_every=3, eval_episodes=2, save_every=1,
                         warmup=1, device="cuda", amp=True)
    final = train(config, tmp_path, model_config=tiny_config, progress=False)
    assert math.isfinite(final["loss"])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["grad_scaler"]["scale"] > 0
    info = load_checkpoint(tmp_path / "tiny-fold0.safetensors")[1]
    assert info.training["amp_dtype"] == "float16"
    resumed = train(TrainConfig(**{**config.__dict__, "steps": 4}), tmp_path, resume=True,
                    model_config=tiny_config, progress=False)
    assert resumed["step"] == 4


def test_cuda_without_a_gpu_says_so(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present here")
    from crnet.models.training import TrainingError

    with pytest.raises(TrainingError, match="--device cuda: torch .* sees no CUDA device"):
        train(TrainConfig(device="cuda", steps=1), tmp_path / "run", model_config=tiny_config,
              progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_without_state_is_an_error(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    from crnet.models.training import TrainingError

    with pytest.raises(TrainingError, match=r"--resume: no saved state in .*drop --resume"):
        train(TrainConfig(steps=1), tmp_path, resume=True, model_config=tiny_config,
              progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be >= 1, got 0"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "-3"], "--steps must be >= 1, got -3"),
    (["--recipe", "canet"], "give --init-trunk PATH"),
    (["--dataset", "pascal-5i"], "--dataset pascal-5i needs --data-root DIR"),
    (["--lr", "0"], "lr must be > 0"),
    (["--input-size", "20"], "input_size must be 0"),
    (["--momentum", "1.5"], r"momentum must be in \[0, 1\)"),
    (["--weight-decay", "-1"], "weight_decay must be >= 0"),
    (["--min-lr-ratio", "2"], r"min_lr_ratio must be in \[0, 1\]"),
    (["--preset", "crnet-r101"], "unknown preset"),
])
def test_cli_usage_errors_write_nothing(argv: list[str], message: str, tmp_path: Path) -> None:
    from crnet.cli import run_subcommand
    from crnet.runtime.errors import UsageError

    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match=message):
        run_subcommand("train", [*argv, "--run-dir", str(run_dir)])
    assert not run_dir.exists()  # in particular no untrained checkpoint


def test_cli_bad_run_dir_resume_and_device(tmp_path: Path) -> None:
    from crnet.cli import run_subcommand
    from crnet.models.training import TrainingError
    from crnet.runtime.errors import UsageError

    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    with pytest.raises(UsageError, match="is a file; expected a directory"):
        run_subcommand("train", ["--run-dir", str(a_file), "--steps", "1"])
    with pytest.raises(TrainingError, match="--resume: no saved state"):
        run_subcommand("train", ["--run-dir", str(tmp_path / "empty"), "--resume",
                                 "--steps", "1"])
    with pytest.raises(UsageError, match="--init-trunk .* does not exist"):
        run_subcommand("train", ["--run-dir", str(tmp_path / "r"),
                                 "--init-trunk", str(tmp_path / "none.pth")])
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="sees no CUDA device"):
            run_subcommand("train", ["--run-dir", str(tmp_path / "r"), "--device", "cuda",
                                     "--steps", "1"])


def test_cli_recipe_defaults_follow_init_trunk(tmp_path: Path) -> None:
    from crnet.cli import build_parser
    from crnet.cli.commands.train import train_config as train_config_from_args

    parser = build_parser("train")
    lite = train_config_from_args(parser.parse_args([]))
    assert (lite.recipe, lite.optimizer, lite.lr, lite.batch) == ("scratch", "adamw", 2e-3, 8)
    weights = tmp_path / "resnet50.pth"
    r50 = train_config_from_args(parser.parse_args(
        ["--preset", "crnet-r50", "--init-trunk", str(weights), "--dataset", "pascal-5i",
         "--data-root", str(tmp_path), "--fold", "2", "--amp", "--momentum", "0.8"]))
    assert (r50.recipe, r50.optimizer, r50.lr, r50.weight_decay, r50.batch, r50.input_size,
            r50.freeze_trunk, r50.momentum, r50.dataset, r50.fold, r50.amp) == (
        "canet", "sgd", 0.0025, 5e-4, 4, 321, True, 0.8, "pascal-5i", 2, True)
    unfrozen = train_config_from_args(parser.parse_args(["--recipe", "canet",
                                                         "--no-freeze-trunk"]))
    assert unfrozen.optimizer == "sgd" and not unfrozen.freeze_trunk
