"""Export of a tiny random-weight model: bundle contents, graphs, dynamic axes, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from crnet.cli import main as crnet_main
from crnet.export.parity import ParityError
from crnet.export.to_onnx import ExportError, export_bundle, failed_dir
from crnet.models import checkpoint as checkpoint_module
from crnet.models.checkpoint import CheckpointError, load_checkpoint
from crnet.runtime.bundle import Bundle, BundleError
from tests.export.conftest import PARITY_EPISODES, make_tiny_config, save_tiny_checkpoint


def siblings(path: Path) -> list[str]:
    """Names beside ``path`` (to catch left-over temporary directories)."""
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


def test_bundle_has_every_file_and_a_complete_manifest(tiny_bundle: Path,
                                                      tiny_checkpoint: Path) -> None:
    bundle = Bundle.load(tiny_bundle)  # verifies every sha256
    manifest = bundle.manifest
    config = make_tiny_config()
    assert sorted(manifest["files"]) == ["backbone.fp32.onnx", "checkpoint.json",
                                         "checkpoint.safetensors", "golden.npz",
                                         "refine.fp32.onnx"]
    assert sorted(p.name for p in tiny_bundle.iterdir()) == sorted([*manifest["files"],
                                                                   "manifest.json"])
    assert manifest["refine_steps"] == config.refine_steps
    assert manifest["input_size"] == list(config.input_size)
    assert manifest["feature_size"] == list(config.feature_size)
    assert manifest["feature_channels"] == config.feature_channels
    assert manifest["shots"] == {"min": 1, "max": 8}
    assert manifest["opset"] >= 17
    assert manifest["source_checkpoint"]["name"] == tiny_checkpoint.name
    assert manifest["source_checkpoint"]["sha256"] == manifest["files"]["checkpoint.safetensors"]
    assert set(manifest["versions"]) == {"torch", "onnx", "onnxruntime", "crnet-deploy"}
    assert manifest["parity"]["passed"] and manifest["parity"]["episodes"] == PARITY_EPISODES
    assert manifest["lint"]["passed"]
    h, w = config.feature_size
    refine_io = bundle.io("refine")
    assert [i["shape"] for i in refine_io["inputs"]] == [
        [1, 16, h, w], ["shots", 16, h, w], ["shots", 1, h, w]]
    assert [o["name"] for o in refine_io["outputs"]] == ["query_logits", "support_logits"]
    assert bundle.io("backbone")["inputs"][0] == {
        "name": "image", "shape": ["batch", 3, *config.input_size], "dtype": "float32"}


def test_bundled_checkpoint_copy_loads(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    copy, _ = load_checkpoint(tiny_bundle / "checkpoint.safetensors")
    source, _ = load_checkpoint(tiny_checkpoint)
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, copy.state_dict()[name]), name


def test_graphs_are_unrolled_with_static_spatial_dims(tiny_bundle: Path) -> None:
    for name in ("backbone.fp32.onnx", "refine.fp32.onnx"):
        model = onnx.load(str(tiny_bundle / name))
        onnx.checker.check_model(model, full_check=True)
        assert not {n.op_type for n in model.graph.node} & {"Loop", "If", "Scan"}
        for value in [*model.graph.input, *model.graph.output]:
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims[1:]), (name, value.name)


def test_dynamic_batch_and_shots_run_in_onnxruntime(tiny_bundle: Path) -> None:
    config = make_tiny_config()
    h, w = config.feature_size
    backbone = ort.InferenceSession(str(tiny_bundle / "backbone.fp32.onnx"),
                                    providers=["CPUExecutionProvider"])
    refine = ort.InferenceSession(str(tiny_bundle / "refine.fp32.onnx"),
                                  providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        (feat,) = backbone.run(None, {"image": rng.standard_normal(
            (batch, 3, *config.input_size), dtype=np.float32)})
        assert feat.shape == (batch, 16, h, w)
    for shots in range(1, 9):
        query, support = refine.run(None, {
            "query_feat": rng.standard_normal((1, 16, h, w), dtype=np.float32),
            "support_feat": rng.standard_normal((shots, 16, h, w), dtype=np.float32),
            "support_mask": np.ones((shots, 1, h, w), np.float32),
        })
        assert query.shape == (1, 2, h, w) and support.shape == (shots, 2, h, w)


def test_corrupted_bundle_file_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "refine.fp32.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "refine.fp32.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"refine\.fp32\.onnx does not match the manifest"):
        Bundle.load(copy)
    (copy / "checkpoint.json").unlink()
    with pytest.raises(BundleError, match=r"checkpoint\.json is listed in the manifest but"):
        Bundle(copy, json.loads((copy / "manifest.json").read_text())).verify_files()


def test_missing_default_checkpoint_says_so(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "DEFAULT_CHECKPOINT",
                        tmp_path / "weights" / "absent.safetensors")
    out = tmp_path / "out" / "bundle"
    with pytest.raises(ExportError, match="bundled trained checkpoint .* does not exist yet"):
        export_bundle(out)
    assert not out.exists() and siblings(out) == []


def test_missing_checkpoint_path_is_a_clear_cli_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    code = crnet_main(["export", "--checkpoint", str(tmp_path / "nope.safetensors"),
                       "--out", str(out)])
    assert code == 1
    assert "checkpoint weights not found" in capsys.readouterr().err
    assert siblings(out) == []


@pytest.mark.parametrize("damage", ["bad_bytes", "hash_mismatch"])
def test_corrupt_checkpoint_is_refused_and_nothing_written(tmp_path: Path, damage: str) -> None:
    weights = save_tiny_checkpoint(tmp_path / "src")
    if damage == "bad_bytes":
        weights.write_bytes(b"\x00" * 64)
        expected = "not a safetensors file"
    else:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01  # flip a bit of the last tensor's data: valid file, wrong hash
        weights.write_bytes(bytes(data))
        expected = "does not match the sha256"
    out = tmp_path / "out" / "bundle"
    with pytest.raises(CheckpointError, match=expected):
        export_bundle(out, weights, progress=False)
    assert siblings(out) == []


def test_non_empty_out_dir_needs_force(tmp_path: Path, tiny_checkpoint: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ExportError, match="not empty and is not a crnet bundle"):
        export_bundle(out, tiny_checkpoint, progress=False)
    assert crnet_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert siblings(out) == ["bundle"]


def test_force_replaces_and_failed_parity_leaves_only_dir_failed(
        tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "crnet-deploy/bundle"}))
    (out / "old.txt").write_text("old")  # --force replaces a bundle, whatever it holds
    manifest = export_bundle(out, tiny_checkpoint, force=True, parity_episodes=2,
                             progress=False)
    assert not (out / "old.txt").exists() and (out / "manifest.json").exists()
    assert manifest["parity"]["passed"] and siblings(out) == ["bundle"]

    import crnet.export.parity as parity

    real_check = parity.check_parity

    def diverging_check(model: torch.nn.Module, *args: object, **kwargs: object
                        ) -> parity.ParityReport:
        refine = model.refine

        def swapped_refine(*inputs: object, **options: object) -> tuple[torch.Tensor, ...]:
            query, support = refine(*inputs, **options)  # PyTorch now predicts the inverse
            return query.flip(1), support.flip(1)

        model.refine = swapped_refine
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(parity, "check_parity", diverging_check)
    with pytest.raises(ParityError, match="foreground agreement") as raised:
        export_bundle(out, tiny_checkpoint, force=True, parity_episodes=2, progress=False)
    assert "query_logits: max |diff|" in str(raised.value)
    assert raised.value.kept_at == failed_dir(out)
    assert (out / "manifest.json").exists() and Bundle.load(out)  # old bundle untouched
    report = json.loads((failed_dir(out) / "parity_report.json").read_text())
    assert not report["passed"] and report["failures"]
    assert siblings(out) == ["bundle", "bundle.failed"]


def test_cli_exports_a_random_weight_preset(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    code = crnet_main(["export", "--preset", "crnet-lite", "--random-weights", "--out",
                       str(out), "--episodes", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "parity on 2 episodes" in capsys.readouterr().out
    manifest = Bundle.load(out).manifest
    assert manifest["source_checkpoint"]["name"] == "random-weights:crnet-lite"
    assert manifest["refine_steps"] == 3 and manifest["feature_size"] == [25, 25]
    assert (out / "manifest.json").stat().st_mode & 0o044  # readable beyond the owner


def test_cli_rejects_random_weights_without_a_preset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crnet_main(["export", "--random-weights", "--out", str(tmp_path / "b")]) == 2
    assert "--preset and --random-weights go together" in capsys.readouterr().err
