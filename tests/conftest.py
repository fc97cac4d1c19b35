"""Shared fixtures: tiny models built in the test, never downloaded."""

from __future__ import annotations

import pytest
import torch

from models.config import CRNetConfig


@pytest.fixture
def tiny_config() -> CRNetConfig:
    """A very small CRNet config that runs in milliseconds."""
    return CRNetConfig(
        name="tiny", stem_width=8, trunk_widths=(8, 16, 16), feature_channels=16,
        refine_steps=2, dropout=0.0, input_size=(65, 65),
    )


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
