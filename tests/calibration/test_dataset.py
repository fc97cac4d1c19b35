"""Calibration and checks on a chosen dataset: PASCAL-5i's base-class train split only."""

from __future__ import annotations

from pathlib import Path

import pytest

from crnet.calibration.fp16 import quantize_fp16
from crnet.calibration.int8 import quantize_int8
from crnet.calibration.options import Fp16Options, Int8Options, SensitivityOptions
from crnet.calibration.ranges import ranges_fit
from crnet.calibration.variants import QuantizeError
from crnet.data.episodes import fold_classes
from crnet.data.options import EpisodeSource
from crnet.runtime.bundle import Bundle
from tests.calibration.conftest import PascalReads, copy_bundle, split_ids


def test_pascal_calibration_reads_only_base_class_train_images(
        tiny_bundle_q: Path, voc_root: Path, pascal_reads: PascalReads,
        tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle_q, tmp_path / "bundle")
    pascal_reads.phase = "quantize"
    pascal = EpisodeSource(dataset="pascal-5i", data_root=voc_root)
    quantize_fp16(bundle, Fp16Options(check_episodes=2, progress=False, data=pascal))
    manifest = quantize_int8(bundle, Int8Options(
        calibration_method="minmax", calibration_episodes=4,
        sensitivity=SensitivityOptions(episodes=3), progress=False, data=pascal))

    train, test = split_ids(voc_root, "train_aug.txt"), split_ids(voc_root, "val.txt")
    read = pascal_reads.ids("quantize")
    assert read and read <= train, sorted(read - train)
    assert not read & test
    base = fold_classes(0, "train")
    how = manifest["variants"]["int8"]["how"]
    for record in (how["calibration"], how["sensitivity"],
                   manifest["variants"]["fp16"]["how"]["check"]):
        assert record["dataset"] == "pascal-5i" and record["split"] == "train"
        assert record["fold"] == 0 and record["classes"] == base
        assert record["data_root"] == str(voc_root.resolve())
        assert "pascal-5i fold 0 train split" in record["data"]
    assert ranges_fit(bundle, Int8Options(data=pascal.with_fold(0)))
    assert not ranges_fit(bundle, Int8Options(data=EpisodeSource(fold=0)))
    with pytest.raises(QuantizeError, match="dataset 'synthetic-5i'.*--recalibrate"):
        quantize_int8(bundle, Int8Options(sensitivity=SensitivityOptions(enabled=False),
                                          progress=False))
    Bundle.load(bundle)


def test_pascal_needs_a_data_root(quantized_bundle: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main as crnet_main

    assert crnet_main(["quantize", str(quantized_bundle), "--precision", "int8",
                       "--dataset", "pascal-5i"]) == 2
    assert "--dataset pascal-5i needs --data-root DIR" in capsys.readouterr().err


def test_saved_synthetic_ranges_default_to_synthetic(quantized_bundle: Path) -> None:
    assert ranges_fit(quantized_bundle, Int8Options(data=EpisodeSource(fold=0)))
    assert not ranges_fit(quantized_bundle, Int8Options(data=EpisodeSource(fold=1)))
    how = Bundle.load(quantized_bundle).manifest["variants"]["int8"]["how"]
    assert how["calibration"]["dataset"] == "synthetic-5i"
    assert how["sensitivity"]["rank_method"] == "full"  # "auto" on a model of few layers
