"""crnet.export.golden: the export records golden references, hashed in the manifest, that
the PyTorch model reproduces; add_golden adds them to a bundle exported without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crnet.evaluate import load_gates
from crnet.export.golden import GOLDEN_PLAN, add_golden, reference_segmenter
from crnet.models.checkpoint import load_checkpoint
from crnet.runtime.bundle import Bundle, BundleError
from crnet.runtime.files import sha256_file
from crnet.runtime.golden import GOLDEN_FILE, GOLDEN_KEY, check_segmenter, load_golden
from tests.export.conftest import save_tiny_checkpoint
from tests.runtime.test_golden import copy_bundle, drop_golden


def test_export_records_hashed_golden_references(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    entry = bundle.manifest[GOLDEN_KEY]
    path = tiny_bundle / GOLDEN_FILE
    assert bundle.manifest["files"][GOLDEN_FILE] == sha256_file(path)
    assert entry["bytes"] == path.stat().st_size
    assert entry["shots"] == [shots for shots, count in GOLDEN_PLAN for _ in range(count)]
    assert entry["fold"] == 0 and entry["dataset"] == "synthetic-5i"
    assert entry["image_size"] == bundle.manifest["input_size"]  # drawn at the input size
    assert entry["max_abs_delta_miou"] == load_gates()  # the bundle carries its gates
    golden = load_golden(bundle)
    assert {e.class_id for e in golden.episodes} == {1, 2, 3, 4, 5}  # fold 0's novel


def test_the_pytorch_model_reproduces_the_references(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    model, _ = load_checkpoint(tiny_bundle / bundle.manifest["checkpoint"]["weights"])
    golden = load_golden(bundle)
    with reference_segmenter(model, bundle.manifest) as reference:
        check = check_segmenter(reference, golden)
    assert check.agreement == 100.0 and check.delta_miou == 0.0
    assert check.max_probability_diff < 1e-3  # float16 storage
    assert check.reference_miou == pytest.approx(bundle.manifest[GOLDEN_KEY]["reference_miou"],
                                                 abs=1e-3)


def test_add_golden_records_the_same_references(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    drop_golden(bundle)
    entry = add_golden(bundle)
    loaded = Bundle.load(bundle)  # every file, the new one included, verifies
    assert loaded.manifest[GOLDEN_KEY] == entry
    # seeded episodes, the same answers, a fixed zip timestamp: the export's very bytes
    assert loaded.manifest["files"][GOLDEN_FILE] == sha256_file(tiny_bundle / GOLDEN_FILE)
    with np.load(bundle / GOLDEN_FILE) as added, np.load(tiny_bundle / GOLDEN_FILE) as exported:
        assert sorted(added.files) == sorted(exported.files)
        for key in exported.files:  # seeded: the export's episodes and answers again
            assert np.array_equal(added[key], exported[key]), key

    with pytest.raises(BundleError, match="already has golden references"):
        add_golden(bundle)
    assert add_golden(bundle, replace=True) == entry


def test_add_golden_refuses_another_checkpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    drop_golden(bundle)
    other = save_tiny_checkpoint(tmp_path, seed=1)
    with pytest.raises(BundleError, match="is not the one bundle .* was exported from"):
        add_golden(bundle, other)
    assert not (bundle / GOLDEN_FILE).exists()  # nothing half-written
    assert GOLDEN_KEY not in Bundle.load(bundle).manifest
