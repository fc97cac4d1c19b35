"""Fixtures for the quantization tests: a tiny random-weight bundle whose masks are not
trivial, and copies of it with fp16 and int8 variants (few episodes everywhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crnet.models.checkpoint import save_checkpoint
from crnet.models.config import CRNetConfig, TrainConfig
from crnet.models.crnet import CRNet
from crnet.models.training import training_record
from tests.export.conftest import make_tiny_config

CALIBRATION_EPISODES = 6
SENSITIVITY_EPISODES = 6


def balanced_tiny_model(seed: int = 0, margin_std: float = 4.0) -> CRNet:
    """A random tiny CRNet with decisive, input-dependent masks (see balanced_model)."""
    return balanced_model(make_tiny_config(), seed, margin_std)


def balanced_model(config: CRNetConfig, seed: int = 0, margin_std: float = 4.0) -> CRNet:
    """A random CRNet of ``config`` with decisive, input-dependent masks: the classifier is
    scaled so the fg-bg logit margin spreads by about ``margin_std`` and its bias centred
    so about half of the query pixels are foreground. (An untouched random model gives
    near-constant probabilities; its mIoU would neither show nor hide any accuracy loss
    reliably.)"""
    from crnet.calibration.reader import base_episodes, episode_arrays

    torch.manual_seed(seed)
    model = CRNet(config).eval()
    manifest = {"input_size": list(model.config.input_size),
                "feature_size": list(model.config.feature_size),
                "preprocessing": {"mean": list(model.config.mean), "std": list(model.config.std)}}
    inputs = []
    for episode in base_episodes(0, 4, seed=7):
        images, masks = episode_arrays(episode, manifest)
        inputs.append((torch.from_numpy(images), torch.from_numpy(masks)))
    classifier = model.refinement.classifier
    with torch.no_grad():
        for _ in range(3):  # the refinement feeds its output back: settle in a few passes
            margins = []
            for images, masks in inputs:
                features = model.encode(images)
                query_logits, _ = model.refine(features[1:], features[:1], masks)
                margins.append((query_logits[0, 1] - query_logits[0, 0]).numpy().ravel())
            margin = np.concatenate(margins)
            scale = margin_std / max(float(margin.std()), 1e-6)
            classifier.weight.mul_(scale)
            classifier.bias.mul_(scale)
            classifier.bias[1] -= float(np.median(margin)) * scale
    return model


@pytest.fixture(scope="session")
def tiny_bundle_q(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fp32 bundle of the balanced tiny model (exported once per session)."""
    from crnet.export.to_onnx import export_bundle

    checkpoint = save_checkpoint(balanced_tiny_model(),
                                 tmp_path_factory.mktemp("checkpoint") / "tiny",
                                 training=training_record(TrainConfig(fold=0)))
    out = tmp_path_factory.mktemp("quantize") / "bundle"
    export_bundle(out, checkpoint, parity_episodes=2, progress=False)
    return out


def copy_bundle(source: Path, destination: Path) -> Path:
    """A private copy of a bundle for a test that modifies it."""
    shutil.copytree(source, destination)
    return destination


@pytest.fixture(scope="session")
def quantized_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_q: Path) -> Path:
    """The tiny bundle with fp16 and int8 variants (int8: min-max on a few episodes)."""
    from crnet.calibration.fp16 import quantize_fp16
    from crnet.calibration.int8 import quantize_int8
    from crnet.calibration.options import Fp16Options, Int8Options, SensitivityOptions

    bundle = copy_bundle(tiny_bundle_q, tmp_path_factory.mktemp("variants") / "bundle")
    quantize_fp16(bundle, Fp16Options(check_episodes=2, progress=False))
    quantize_int8(bundle, Int8Options(
        calibration_method="minmax", calibration_episodes=CALIBRATION_EPISODES,
        sensitivity=SensitivityOptions(episodes=SENSITIVITY_EPISODES), progress=False))
    return bundle


VOC_TRAIN_IMAGES = 45  # 3 per base class of fold 0
VOC_TEST_IMAGES = 15  # 3 per novel class


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small VOC2012-layout tree of fold 0 (data.synthetic.write_voc_tree)."""
    from crnet.data.synthetic import write_voc_tree

    return write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", fold=0,
                          train_images=VOC_TRAIN_IMAGES, test_images=VOC_TEST_IMAGES)


def split_ids(root: Path, name: str) -> set[str]:
    """Image ids of one of the tree's lists (train_aug.txt or val.txt)."""
    text = (root / "ImageSets" / "Segmentation" / name).read_text()
    return {line.split()[0] for line in text.splitlines() if line.strip()}


class PascalReads:
    """Every image, image header and label file data.pascal reads, tagged with the current
    phase (set ``phase`` as the test moves on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from crnet.data import pascal

        self.phase = "setup"
        self.reads: list[tuple[str, str]] = []
        load_rgb, read_label = pascal.load_rgb, pascal.read_label
        image_size = pascal.image_size

        def tracked_rgb(path: Path) -> np.ndarray:
            self.reads.append((self.phase, Path(path).stem))
            return load_rgb(path)

        def tracked_label(path: Path) -> np.ndarray:
            self.reads.append((self.phase, Path(path).stem))
            return read_label(path)

        def tracked_size(path: Path) -> tuple[int, int]:
            self.reads.append((self.phase, Path(path).stem))
            return image_size(path)

        monkeypatch.setattr(pascal, "image_size", tracked_size)
        monkeypatch.setattr(pascal, "load_rgb", tracked_rgb)
        monkeypatch.setattr(pascal, "read_label", tracked_label)

    def ids(self, phase: str | None = None) -> set[str]:
        """Ids read (in ``phase``, or in any)."""
        return {stem for read_phase, stem in self.reads if phase in (None, read_phase)}


@pytest.fixture
def pascal_reads(monkeypatch: pytest.MonkeyPatch) -> PascalReads:
    """Records the PASCAL-5i files read during a test."""
    return PascalReads(monkeypatch)
