"""crnet.runtime.golden: the bundle's golden episodes, loaded hash-checked and judged
without torch, and Segmenter(verify="quick"|"full") at start-up."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime import Segmenter
from crnet.runtime.bundle import Bundle, BundleError, update_manifest
from crnet.runtime.golden import (
    GOLDEN_FILE,
    GOLDEN_KEY,
    QUICK_EPISODES,
    GoldenCheckError,
    NoGoldenError,
    check_segmenter,
    has_golden,
    hash_check_of,
    load_golden,
)
from crnet.runtime.preprocess import InputError


def copy_bundle(bundle: Path, out: Path) -> Path:
    """A private copy of a session bundle to break."""
    shutil.copytree(bundle, out)
    return out


def break_int8(bundle: Path) -> None:
    """Replace the int8 refine graph by the fp32 one with every float weight zeroed (its
    logits become constant) and re-sign the manifest, as a corrupt build would look."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "refine.fp32.onnx"))
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if np.issubdtype(weights.dtype, np.floating):
            initializer.CopyFrom(numpy_helper.from_array(np.zeros_like(weights),
                                                         initializer.name))
    onnx.save(model, str(bundle / "refine.int8.onnx"))
    update_manifest(bundle, lambda manifest: None, added_files=["refine.int8.onnx"])


def drop_golden(bundle: Path) -> None:
    """Make ``bundle`` look like one exported before golden references existed."""
    def change(manifest: dict[str, Any]) -> None:
        del manifest[GOLDEN_KEY]
        del manifest["files"][GOLDEN_FILE]

    update_manifest(bundle, change)
    (bundle / GOLDEN_FILE).unlink()


def test_golden_episodes_load_from_the_bundle(int8_bundle: Path) -> None:
    bundle = Bundle.load(int8_bundle)
    assert has_golden(bundle)
    golden = load_golden(bundle)
    entry = bundle.manifest[GOLDEN_KEY]
    assert len(golden.episodes) == entry["episodes"] == len(entry["shots"])
    assert [len(e.support_images) for e in golden.episodes] == entry["shots"]
    first = golden.episodes[0]
    assert first.query_image.dtype == np.uint8 and first.query_image.ndim == 3
    assert first.reference_mask.dtype == bool
    assert first.reference_mask.shape == first.query_mask.shape
    # the quick check's episodes cover every class of the fold
    assert len({e.class_id for e in golden.episodes[:QUICK_EPISODES]}) == QUICK_EPISODES


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_cpu_variant_passes_its_gate(int8_bundle: Path, precision: str) -> None:
    golden = load_golden(Bundle.load(int8_bundle))
    with Segmenter(int8_bundle, backend="onnxruntime", precision=precision) as segmenter:
        check = check_segmenter(segmenter, golden)
    assert check.passed, check.summary()
    assert check.episodes == len(golden.episodes)
    assert check.variant == f"{precision} on onnxruntime"
    if precision == "fp32":  # the same graphs as the reference: the same masks
        assert check.agreement > 99.9 and abs(check.delta_miou) <= 0.05
    assert check.to_dict()["passed"] is True


def test_a_broken_int8_graph_fails_its_gate(int8_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(int8_bundle, tmp_path / "bundle")
    break_int8(bundle)
    golden = load_golden(Bundle.load(bundle))
    with Segmenter(bundle, backend="onnxruntime", precision="int8") as segmenter:
        check = check_segmenter(segmenter, golden)
    assert not check.passed
    assert abs(check.delta_miou) > check.max_abs_delta_miou
    assert "FAIL" in check.summary()
    with Segmenter(bundle, backend="onnxruntime", precision="fp32") as segmenter:
        assert check_segmenter(segmenter, golden).passed  # only the broken variant fails


def test_verify_quick_at_start_up(int8_bundle: Path, tmp_path: Path) -> None:
    with Segmenter(int8_bundle, backend="onnxruntime", precision="int8",
                   verify="quick") as segmenter:
        assert segmenter.verification is not None
        assert segmenter.verification.passed
        assert segmenter.verification.episodes == QUICK_EPISODES
    with Segmenter(int8_bundle, backend="onnxruntime", verify="full") as segmenter:
        assert segmenter.verification is not None
        assert segmenter.verification.episodes == len(load_golden(Bundle.load(int8_bundle))
                                                      .episodes)
    with Segmenter(int8_bundle, backend="onnxruntime") as segmenter:
        assert segmenter.verification is None  # off by default

    bundle = copy_bundle(int8_bundle, tmp_path / "bundle")
    break_int8(bundle)
    with pytest.raises(GoldenCheckError, match="int8 on onnxruntime fails its gate") as error:
        Segmenter(bundle, backend="onnxruntime", precision="int8", verify="quick")
    assert isinstance(error.value, BundleError)
    assert not error.value.check.passed
    Segmenter(bundle, backend="onnxruntime", precision="fp32", verify="quick").close()


def test_a_bundle_without_golden_references_says_so(int8_bundle: Path,
                                                     tmp_path: Path) -> None:
    bundle = copy_bundle(int8_bundle, tmp_path / "bundle")
    drop_golden(bundle)
    loaded = Bundle.load(bundle)
    assert not has_golden(loaded)
    with pytest.raises(NoGoldenError, match="has no golden references.*crnet verify "
                                            "BUNDLE --record"):
        load_golden(loaded)
    with pytest.raises(NoGoldenError):
        Segmenter(bundle, backend="onnxruntime", verify="quick")
    Segmenter(bundle, backend="onnxruntime").close()  # the default does not need them


def test_a_modified_golden_file_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(int8_bundle, tmp_path / "bundle")
    data = bytearray((bundle / GOLDEN_FILE).read_bytes())
    data[-100] ^= 0xFF
    (bundle / GOLDEN_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_golden(Bundle.load(bundle, verify=False))


def test_a_malformed_golden_file_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(int8_bundle, tmp_path / "bundle")
    with np.load(bundle / GOLDEN_FILE) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["shots"] = arrays["shots"] + 1  # more supports than the file holds
    np.savez_compressed(bundle / GOLDEN_FILE, **arrays)
    update_manifest(bundle, lambda manifest: None, added_files=[GOLDEN_FILE])
    with pytest.raises(BundleError, match="is malformed: shots sum to"):
        load_golden(Bundle.load(bundle))
    del arrays["reference_masks"]
    np.savez_compressed(bundle / GOLDEN_FILE, **arrays)
    update_manifest(bundle, lambda manifest: None, added_files=[GOLDEN_FILE])
    with pytest.raises(BundleError, match="is not a golden-reference file"):
        load_golden(Bundle.load(bundle))


def test_verify_takes_a_flag_or_a_mode() -> None:
    assert hash_check_of(True) and hash_check_of("quick") and hash_check_of("full")
    assert not hash_check_of(False)
    for bad in ("yes", None, 1, "QUICK"):
        with pytest.raises(InputError, match="verify must be True or False .*, or 'quick' "
                                             "or 'full'"):
            hash_check_of(bad)
