"""Fixtures for the export tests: a tiny random-weight checkpoint and its exported bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crnet.models.checkpoint import save_checkpoint
from crnet.models.config import CRNetConfig, TrainConfig
from crnet.models.crnet import CRNet
from crnet.models.training import training_record
from tests.conftest import tiny_config

PARITY_EPISODES = 4


def make_tiny_config() -> CRNetConfig:
    """The shared ``tiny_config`` (tests/conftest.py), callable outside a test's scope."""
    return tiny_config.__wrapped__()


def save_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A random-weight tiny model saved as a checkpoint; returns the weights path."""
    torch.manual_seed(seed)
    model = CRNet(make_tiny_config()).eval()
    return save_checkpoint(model, directory / "tiny", training=training_record(TrainConfig(fold=0)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights path of a tiny random-weight checkpoint (with its json beside it)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A bundle exported once per session from the tiny checkpoint (parity on 4 episodes)."""
    from crnet.export.to_onnx import export_bundle

    out = tmp_path_factory.mktemp("export") / "bundle"
    export_bundle(out, tiny_checkpoint, parity_episodes=PARITY_EPISODES, progress=False)
    return out
