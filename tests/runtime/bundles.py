"""Test bundles for the runtime tests, exported with the project's export function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crnet.models.crnet import CRNet
from tests.conftest import tiny_config

# A random-weight model's logits are nearly equal (every probability ~0.52), which makes
# every mask all-foreground and a parity test vacuous. Scaling the classifier spreads the
# probabilities over (0, 1) so masks have real boundaries to disagree on.
CLASSIFIER_SCALE = 200.0


def tiny_model(seed: int = 0) -> CRNet:
    """The shared tiny config (tests/conftest.py) with random weights and spread logits."""
    torch.manual_seed(seed)
    model = CRNet(tiny_config.__wrapped__()).eval()
    classifier = model.refinement.classifier
    with torch.no_grad():
        classifier.weight.mul_(CLASSIFIER_SCALE)
        classifier.bias.zero_()
        # Centre the query logit difference on one episode so masks are about half full.
        from crnet.data.synthetic import Synthetic5i
        from crnet.runtime.preprocess import mask_at_input_size, preprocess_image

        config = model.config
        episode = Synthetic5i(0, split="test", seed=seed).episode(0, 1)
        query = preprocess_image(episode.query_image, config.input_size, config.mean, config.std)
        support = preprocess_image(episode.support_images[0], config.input_size, config.mean,
                                   config.std)
        mask = mask_at_input_size(episode.support_masks[0], config.input_size)
        logits, _ = model(torch.from_numpy(query), torch.from_numpy(support),
                          torch.from_numpy(mask))
        classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    return model


def export_tiny_bundle(out: Path, seed: int = 0) -> Path:
    """Export ``tiny_model(seed)`` to ``out`` with export.to_onnx.export_bundle."""
    from crnet.export.to_onnx import export_bundle

    export_bundle(out, model=tiny_model(seed), parity_episodes=2, progress=False)
    return out


def export_int8_bundle(root: Path) -> Path:
    """A tiny bundle with decisive masks and an int8 variant (min-max on a few episodes),
    under ``root``; returns the bundle directory. It uses tests/calibration's balanced
    model, not ``tiny_model``, whose x200 classifier turns any int8 rounding into mask
    flips."""
    from crnet.calibration.int8 import quantize_int8
    from crnet.calibration.options import Int8Options, SensitivityOptions
    from crnet.export.to_onnx import export_bundle
    from crnet.models.checkpoint import save_checkpoint
    from tests.calibration.conftest import balanced_tiny_model

    checkpoint = save_checkpoint(balanced_tiny_model(), root / "tiny", training={"fold": 0})
    bundle = root / "bundle"
    export_bundle(bundle, checkpoint, parity_episodes=2, progress=False)
    quantize_int8(bundle, Int8Options(calibration_method="minmax", calibration_episodes=4,
                                      sensitivity=SensitivityOptions(enabled=False),
                                      progress=False))
    return bundle


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image (test helper)."""
    from crnet.runtime.preprocess import resize_bilinear

    return np.clip(np.rint(resize_bilinear(image, size)), 0, 255).astype(np.uint8)


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label mask (test helper)."""
    rows = np.minimum((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1], mask.shape[1] - 1)
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]
