"""Helpers for the tiny random-weight checkpoint that the export and engine tests use (its
session fixtures, ``tiny_checkpoint`` and ``tiny_bundle``, are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

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
