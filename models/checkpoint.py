"""Checkpoints: safetensors weights plus a JSON file (config, preprocessing, provenance).

``name.safetensors`` holds the tensors; ``name.json`` beside it holds the model config,
the preprocessing (input size, mean, std), training provenance and the weights' sha256.
Loading never unpickles anything: a pickle or torch.save file is refused.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.config import CRNetConfig
from models.crnet import CRNet
from runtime.errors import CrnetError
from runtime.files import atomic_path, sha256_file, write_json_atomic

FORMAT = "crnet-deploy/checkpoint"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "crnet-lite-fold0.safetensors"


class CheckpointError(CrnetError, ValueError):
    """A checkpoint that is missing, unsafe, corrupt or does not fit the model."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the JSON beside the weights says, plus where they were read from."""

    weights_path: Path
    config: CRNetConfig
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    sha256: str


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for a checkpoint named by either file or its stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(model: CRNet, path: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write ``path``.safetensors and ``path``.json atomically; return the weights path."""
    weights_path, meta_path = checkpoint_paths(path)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in
               model.state_dict().items()}
    with atomic_path(weights_path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": FORMAT})
    config = model.config
    write_json_atomic(meta_path, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "preprocessing": preprocessing_of(config),
        "training": training or {},
        "sha256": sha256_file(weights_path),
    })
    return weights_path


def preprocessing_of(config: CRNetConfig) -> dict[str, Any]:
    """The preprocessing a checkpoint expects: RGB, resize to input size, scale, normalise."""
    return {
        "color": "RGB",
        "input_size": list(config.input_size),
        "scale": 1.0 / 255.0,
        "mean": list(config.mean),
        "std": list(config.std),
        "resize": "bilinear",
    }


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read and validate the JSON beside a checkpoint and check the weights' hash."""
    weights_path, meta_path = checkpoint_paths(path)
    if not weights_path.exists():
        raise CheckpointError(f"checkpoint weights not found: {weights_path}")
    _refuse_non_safetensors(weights_path)
    if not meta_path.exists():
        raise CheckpointError(
            f"checkpoint metadata not found: {meta_path} (expected beside {weights_path.name})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{meta_path} is not valid JSON: {error}") from error
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a {FORMAT} file (format={meta.get('format')!r})")
    actual = sha256_file(weights_path)
    if meta.get("sha256") and meta["sha256"] != actual:
        raise CheckpointError(
            f"{weights_path} does not match the sha256 recorded in {meta_path.name}: "
            f"expected {meta['sha256']}, got {actual}"
        )
    return CheckpointInfo(
        weights_path=weights_path,
        config=CRNetConfig.from_dict(meta["config"]),
        preprocessing=meta.get("preprocessing", {}),
        training=meta.get("training", {}),
        sha256=actual,
    )


def load_checkpoint(path: str | Path | None = None) -> tuple[CRNet, CheckpointInfo]:
    """Build the model from a checkpoint (the bundled one by default), in eval mode."""
    info = read_checkpoint_info(DEFAULT_CHECKPOINT if path is None else path)
    model = CRNet(info.config)
    try:
        tensors = load_file(str(info.weights_path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {info.weights_path}: {error}") from error
    load_state(model, tensors, source=info.weights_path)
    model.eval()
    return model, info


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy tensors into the model; name missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{name}: checkpoint {list(tensors[name].shape)} vs model {list(expected[name].shape)}"
        for name in sorted(set(expected) & set(tensors))
        if tensors[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    if mismatched:
        problems.append("shape mismatches " + "; ".join(mismatched[:10]))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + ", ".join(problems))
    model.load_state_dict(tensors, strict=True)


def _refuse_non_safetensors(path: Path) -> None:
    """Refuse pickles and torch.save zips by content, whatever the file is called."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a pickle/torch.save file; only safetensors checkpoints are loaded "
            "(pickles can run arbitrary code). Convert it with safetensors.torch.save_file."
        )
    if len(head) < 9:
        raise CheckpointError(f"{path} is too short to be a safetensors file")
    (header_length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_length > path.stat().st_size:
        raise CheckpointError(f"{path} is not a safetensors file (bad header)")
