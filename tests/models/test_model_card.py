"""crnet.models.model_card for any checkpoint: a tiny checkpoint on the VOC-layout fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crnet.models.checkpoint import save_checkpoint
from crnet.models.config import CRNetConfig, TrainConfig
from crnet.models.crnet import CRNet
from crnet.models.training import training_record


@pytest.fixture
def tiny_pascal_checkpoint(tiny_config: CRNetConfig, tmp_path: Path) -> Path:
    training = training_record(TrainConfig(dataset="pascal-5i", data_root="/data/VOC2012",
                                           steps=7, batch=2))
    return save_checkpoint(CRNet(tiny_config).eval(), tmp_path / "tiny-fold0",
                           training=training)


def test_card_for_a_pascal_checkpoint(tiny_pascal_checkpoint: Path, voc_root: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main

    assert main(["model-card", "--checkpoint", str(tiny_pascal_checkpoint),
                 "--dataset", "pascal-5i",
                 "--data-root", str(voc_root), "--episodes", "3", "--swap-episodes", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["dataset"] == "pascal-5i" and figures["episodes"] == 3
    assert figures["swap_episodes"] == 2
    assert 0 <= figures["miou_5-shot"] <= 100 and 0 <= figures["fbiou_1-shot"] <= 100
    assert sorted(int(c) for c in figures["per_class_iou_1shot"]) == [1, 2, 3, 4, 5]
    card = tiny_pascal_checkpoint.with_suffix(".md").read_text()
    assert "# Model card: tiny, pascal-5i fold 0" in card
    assert "| 1 | aeroplane |" in card  # VOC names, not synthetic ones
    assert f"--dataset pascal-5i --data-root {voc_root} --fold 0 --shots 5 --episodes 3" in card
    assert "another class present in the query" in card
    assert (f"python -m crnet.models.model_card --checkpoint {tiny_pascal_checkpoint.as_posix()} "
            f"--dataset pascal-5i --data-root {voc_root} --fold 0 --episodes 3 "
            "--swap-episodes 2") in card
    assert "crnet train --preset crnet-lite --dataset pascal-5i --data-root /data/VOC2012" in card
    assert "55.7 (1-shot) / 58.8 (5-shot)" in card
    assert tiny_pascal_checkpoint.with_name("tiny-fold0-examples.png").stat().st_size > 0
    for cls in range(1, 6):  # the 1-shot IoUs in the table are the measured ones
        assert f"| {cls} | " in card
        assert f"{figures['per_class_iou_1shot'][str(cls)]:.1f} |" in card


def test_pascal_swap_pairs_share_the_query_and_differ_in_support(voc_root: Path) -> None:
    from crnet.data.pascal import Pascal5i

    true_episodes, swapped = Pascal5i(voc_root, 0).swapped_support_episodes(4)
    assert len(true_episodes) == len(swapped) == 4
    for true, other in zip(true_episodes, swapped, strict=True):
        assert np.array_equal(true.query_image, other.query_image)
        assert not np.array_equal(true.support_images[0], other.support_images[0])
        assert true.class_id == other.class_id and 1 <= true.class_id <= 5
        assert (other.support_masks[0] == 1).any() and (true.support_masks[0] == 1).any()


def test_card_for_a_folder_has_no_swap_section(tiny_pascal_checkpoint: Path,
                                               tmp_path: Path) -> None:
    from PIL import Image

    from crnet.data.synthetic import Synthetic5i
    from crnet.models.model_card import build_card

    folder = tmp_path / "mine"
    source = Synthetic5i(0, split="test", image_size=64)
    for class_id, name in ((1, "cups"), (2, "keys")):
        (folder / name).mkdir(parents=True)
        for index in range(6):  # 5-shot needs 6 per class
            image, mask = source.sample(class_id, index)
            Image.fromarray(image).save(folder / name / f"{index}.jpg")
            Image.fromarray(mask).save(folder / name / f"{index}.mask.png")  # 0/1/255
    figures = build_card(tiny_pascal_checkpoint, episodes=2, swap_episodes=2, progress=False,
                         dataset="folder", data_root=folder)
    assert figures["swap_episodes"] == 0 and "swap_drop" not in figures
    card = tiny_pascal_checkpoint.with_suffix(".md").read_text()
    assert "No support-swap evidence" in card and "| 2 | keys |" in card


def test_card_usage_errors(tiny_pascal_checkpoint: Path) -> None:
    from crnet.cli import run_subcommand
    from crnet.runtime.errors import UsageError

    with pytest.raises(UsageError, match="needs --data-root"):
        run_subcommand("model-card", ["--checkpoint", str(tiny_pascal_checkpoint),
                                      "--dataset", "pascal-5i"])
    with pytest.raises(UsageError, match="must be >= 1"):
        run_subcommand("model-card", ["--checkpoint", str(tiny_pascal_checkpoint),
                                      "--episodes", "0"])


def test_the_shipped_card_still_renders_from_its_record(tmp_path: Path) -> None:
    """The bundled crnet-lite checkpoint (trained before recipes existed) still gets the
    synthetic-5i scratch card."""
    from crnet.models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_info
    from crnet.models.model_card import render_card

    info = read_checkpoint_info(DEFAULT_CHECKPOINT)
    figures = {"dataset": "synthetic-5i", "fold": 0, "episodes": 1000,
               "miou_1-shot": 1.0, "miou_5-shot": 2.0, "fbiou_1-shot": 3.0,
               "fbiou_5-shot": 4.0, "per_class_iou_1shot": {1: 5.0}, "swap_episodes": 9,
               "swap_true_miou": 6.0, "swap_other_miou": 1.0, "swap_drop": 5.0}
    card = render_card(info, figures, "x.png", Path("models/weights/crnet-lite-fold0.safetensors"))
    assert "trained from scratch on the 15 base classes of synthetic-5i fold 0" in card
    assert ("crnet train --preset crnet-lite --dataset synthetic-5i --fold 0 "
            "--recipe scratch") in card
    assert "Synthetic-5i only" in card
