from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch

from crnet.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state,
    read_safetensors_header,
    save_checkpoint,
)
from crnet.models.config import CRNetConfig
from crnet.models.crnet import CRNet


def test_save_load_round_trip_is_bit_exact(tiny_config: CRNetConfig, tmp_path) -> None:
    model = CRNet(tiny_config)
    weights = save_checkpoint(model, tmp_path / "tiny", training={"episodes": 3})
    loaded, info = load_checkpoint(weights)
    assert info.config == tiny_config
    assert info.training == {"episodes": 3}
    assert info.preprocessing["input_size"] == [65, 65]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not loaded.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_pickle_file_is_refused(tiny_config: CRNetConfig, tmp_path) -> None:
    save_checkpoint(CRNet(tiny_config), tmp_path / "model")
    weights = tmp_path / "model.safetensors"
    torch.save(CRNet(tiny_config).state_dict(), weights)
    with pytest.raises(CheckpointError, match="pickle/torch.save file"):
        load_checkpoint(weights)
    weights.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle/torch.save file"):
        load_checkpoint(weights)


def test_shape_and_key_mismatch_named(tiny_config: CRNetConfig, tmp_path) -> None:
    other = CRNetConfig(**{**tiny_config.to_dict(), "feature_channels": 24})
    save_checkpoint(CRNet(other), tmp_path / "model")
    meta_path = tmp_path / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"] = tiny_config.to_dict()
    meta_path.write_text(json.dumps(meta))
    expected = r"shape mismatches condition.fuse.bias: checkpoint \[24\] vs model \[16\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "model.safetensors")


def test_missing_and_unexpected_keys_named(tiny_config: CRNetConfig, tmp_path) -> None:
    model = CRNet(tiny_config)
    tensors = dict(model.state_dict())
    tensors["extra.weight"] = tensors.pop("refinement.classifier.bias")
    with pytest.raises(CheckpointError, match=r"missing keys \['refinement.classifier.bias'\]"
                       r".*unexpected keys \['extra.weight'\]"):
        load_state(CRNet(tiny_config), tensors, source=tmp_path / "x.safetensors")


def test_missing_and_corrupt_checkpoints(tiny_config: CRNetConfig, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="weights not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    save_checkpoint(CRNet(tiny_config), tmp_path / "model")
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(weights)
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="metadata not found"):
        load_checkpoint(weights)


def test_non_finite_weights_refused_at_load_naming_the_tensor(tiny_config: CRNetConfig,
                                                              tmp_path) -> None:
    """The hash is valid (the file is what was saved), but the numbers are unusable."""
    model = CRNet(tiny_config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    weights = save_checkpoint(model, tmp_path / "nan")
    first = min(name for name, _ in model.named_parameters())  # reported in name order
    with pytest.raises(CheckpointError, match=rf"weights are not finite: tensor '{first}' "
                       r"has (\d+) NaN or infinite value\(s\) of \1"):
        load_checkpoint(weights)
    model = CRNet(tiny_config)
    with torch.no_grad():
        model.refinement.classifier.bias[1] = float("inf")
    weights = save_checkpoint(model, tmp_path / "inf")
    with pytest.raises(CheckpointError, match=r"tensor 'refinement.classifier.bias' has 1 NaN"):
        load_checkpoint(weights)


def _sparse_safetensors(path, header_length: int, size: int):  # noqa: ANN001, ANN202
    """A file of ``size`` bytes (sparse: no disk used) whose header length says
    ``header_length``."""
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", header_length) + b"{")
        handle.truncate(size)
    return path


def test_safetensors_header_over_the_limit_states_the_limit(tmp_path) -> None:
    # a header past safetensors' limit that does fit in its file
    path = _sparse_safetensors(tmp_path / "big.safetensors", 104_866_415, 107_810_247)
    with pytest.raises(CheckpointError, match=r"header of 104866415 bytes is over safetensors' "
                       r"limit of 100000000 bytes \(100 MB\)"):
        read_safetensors_header(path)
    # at the limit, the length is accepted and the (blank) JSON is what is wrong
    path = _sparse_safetensors(tmp_path / "limit.safetensors", 100_000_000, 100_000_100)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_safetensors_header(path)
    path = _sparse_safetensors(tmp_path / "short.safetensors", 5_000, 1_000)
    with pytest.raises(CheckpointError, match=r"header of 5000 bytes does not fit the "
                       r"1000-byte file"):
        read_safetensors_header(path)
