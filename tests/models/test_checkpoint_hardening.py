"""Checkpoints that must be refused before anything is built: no recorded hash, an
unreasonable config, tensors whose header does not fit, malformed sidecars."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crnet.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_info,
    read_safetensors_header,
    save_checkpoint,
)
from crnet.models.config import ConfigError, CRNetConfig
from crnet.models.crnet import CRNet


def _saved(config: CRNetConfig, directory: Path) -> Path:
    return save_checkpoint(CRNet(config), directory / "model")


def _edit_meta(weights: Path, change) -> None:  # noqa: ANN001
    meta_path = weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("recorded", ["absent", "", None])
def test_a_checkpoint_without_a_recorded_hash_is_refused(tiny_config: CRNetConfig,
                                                         tmp_path: Path, recorded: object) -> None:
    weights = _saved(tiny_config, tmp_path)

    def drop(meta: dict) -> None:
        if recorded == "absent":
            meta.pop("sha256")
        else:
            meta["sha256"] = recorded

    _edit_meta(weights, drop)
    with pytest.raises(CheckpointError, match="allow-unverified-checkpoint"):
        load_checkpoint(weights)
    model, info = load_checkpoint(weights, allow_unverified=True)
    assert info.verified is False and model is not None


def test_a_verified_checkpoint_says_so(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    assert read_checkpoint_info(_saved(tiny_config, tmp_path)).verified is True


def test_export_records_an_unverified_checkpoint(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    from crnet.export.to_onnx import export_bundle

    weights = _saved(tiny_config, tmp_path)
    _edit_meta(weights, lambda meta: meta.pop("sha256"))
    with pytest.raises(CheckpointError):
        export_bundle(tmp_path / "refused", weights, parity_episodes=1, progress=False)
    assert not (tmp_path / "refused").exists()
    manifest = export_bundle(tmp_path / "b", weights, parity_episodes=1, progress=False,
                             allow_unverified_checkpoint=True)
    assert manifest["source_checkpoint"]["verified"] is False
    from crnet.runtime import Segmenter

    with Segmenter(tmp_path / "b", backend="torch") as segmenter:  # the manifest's hash holds
        assert segmenter.backend_name == "torch"


def test_the_cli_flag_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main

    assert main(["export", "--help"]) == 0
    assert "--allow-unverified-checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("field, value", [
    ("trunk_widths", [4096, 8192, 8192]), ("stem_width", 100_000), ("feature_channels", 0),
    ("trunk_blocks", [1, 1, 1000]), ("refine_steps", 10_000), ("input_size", [100_000, 65]),
    ("stem_width", "32"), ("dropout", 2.0), ("mean", [0.5, 0.5]), ("std", [0.0, 1.0, 1.0]),
    ("max_shots", 0), ("name", 7), ("trunk_widths", None), ("reduction", 1.5),
    ("stem_width", True),
])
def test_unreasonable_configs_are_refused_quickly(tiny_config: CRNetConfig, tmp_path: Path,
                                                  field: str, value: object) -> None:
    weights = _saved(tiny_config, tmp_path)
    _edit_meta(weights, lambda meta: meta["config"].update({field: value}))
    started = time.perf_counter()
    with pytest.raises((CheckpointError, ConfigError), match=field):
        load_checkpoint(weights)
    assert time.perf_counter() - started < 20  # the wide config used to take 42 s and 8.8 GB


def test_header_shapes_are_compared_before_the_model_is_built(
        tiny_config: CRNetConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = CRNetConfig(**{**tiny_config.to_dict(), "feature_channels": 24})
    weights = _saved(other, tmp_path)
    _edit_meta(weights, lambda meta: meta.update(config=tiny_config.to_dict()))
    import crnet.models.checkpoint as checkpoint

    real = checkpoint.CRNet

    def no_model(*args: object, **kwargs: object) -> CRNet:
        if torch.get_default_device().type == "meta":  # shapes only, no memory
            return real(*args, **kwargs)
        raise AssertionError("the model was built before the shapes were checked")

    monkeypatch.setattr(checkpoint, "CRNet", no_model)
    with pytest.raises(CheckpointError, match=r"condition.fuse.bias: checkpoint \[24\]"):
        load_checkpoint(weights)


def test_integer_weights_are_refused(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    model = CRNet(tiny_config)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    name = "refinement.classifier.weight"
    tensors[name] = tensors[name].round().to(torch.int64)
    weights = tmp_path / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "crnet-deploy/checkpoint"})
    from crnet.runtime.files import sha256_file

    (tmp_path / "model.json").write_text(json.dumps({
        "format": "crnet-deploy/checkpoint", "format_version": 1,
        "config": tiny_config.to_dict(), "sha256": sha256_file(weights)}))
    with pytest.raises(CheckpointError, match=f"{name}.*I64.*F32"):
        load_checkpoint(weights)


def test_read_safetensors_header_without_torch(tiny_config: CRNetConfig, tmp_path: Path) -> None:
    header = read_safetensors_header(_saved(tiny_config, tmp_path))
    assert header["refinement.classifier.bias"]["shape"] == [2]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="header"):
        read_safetensors_header(bad)


@pytest.mark.parametrize("content", [b"[]", b"3", b"null", b"\xff\xfe{}", b"[" * 100_000,
                                     b'{"format": "crnet-deploy/checkpoint", "sha256": "x"}',
                                     b'{"format": "crnet-deploy/checkpoint", "config": []}'])
def test_malformed_sidecars_raise_checkpoint_error(tiny_config: CRNetConfig, tmp_path: Path,
                                                   content: bytes) -> None:
    weights = _saved(tiny_config, tmp_path)
    weights.with_suffix(".json").write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(weights)


def test_a_sidecar_that_is_a_directory_raises_checkpoint_error(tiny_config: CRNetConfig,
                                                              tmp_path: Path) -> None:
    weights = _saved(tiny_config, tmp_path)
    weights.with_suffix(".json").unlink()
    weights.with_suffix(".json").mkdir()
    with pytest.raises(CheckpointError):
        load_checkpoint(weights)
