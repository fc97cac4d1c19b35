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


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory: pytest.TempPathFactory):
    """A small VOC2012-layout tree (data.synthetic.write_voc_tree), fold 0: 30 base-class
    train_aug images, 30 novel-class val images (at least 6 per novel class: 5-shot works)."""
    from data.synthetic import write_voc_tree

    return write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", fold=0,
                          train_images=30, test_images=30)
