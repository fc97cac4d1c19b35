"""Checkpoints: safetensors weights plus a JSON file (config, preprocessing, provenance).

``name.safetensors`` holds the tensors; ``name.json`` beside it holds the model config,
the preprocessing (input size, mean, std), training provenance and the weights' sha256.
Loading never unpickles anything: a pickle or torch.save file is refused.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from crnet.models.config import ConfigError, CRNetConfig
from crnet.models.crnet import CRNet
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import (
    atomic_path,
    read_json_file,
    sha256_file,
    sha256_regular_file,
    write_json_atomic,
)
from crnet.runtime.safetensors_header import read_safetensors_header as read_header

FORMAT = "crnet-deploy/checkpoint"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "crnet-lite-fold0.safetensors"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
                       torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                       torch.bool: "BOOL"}


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
    verified: bool = True  # False: the sidecar recorded no hash (loaded on explicit opt-out)


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


def read_checkpoint_info(path: str | Path, *, allow_unverified: bool = False
                         ) -> CheckpointInfo:
    """Read and validate the JSON beside a checkpoint and check the weights' hash.

    A sidecar without a recorded sha256 is refused unless ``allow_unverified`` (the
    commands' ``--allow-unverified-checkpoint``); the result's ``verified`` says which.
    The config is validated (types, ranges) here, before any model is built.
    """
    weights_path, meta_path = checkpoint_paths(path)
    if not weights_path.exists():
        raise CheckpointError(f"checkpoint weights not found: {weights_path}")
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint weights {weights_path} is not a regular file")
    _refuse_non_safetensors(weights_path)
    if not meta_path.exists():
        raise CheckpointError(
            f"checkpoint metadata not found: {meta_path} (expected beside {weights_path.name})"
        )
    try:
        meta = read_json_file(meta_path)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {meta_path}: {error}") from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} holds a JSON {type(meta).__name__}; expected an "
                              "object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a {FORMAT} file (format={meta.get('format')!r})")
    for key in ("preprocessing", "training"):
        if not isinstance(meta.get(key, {}), dict):
            raise CheckpointError(f"{meta_path}: {key} is {meta[key]!r}; expected an object")
    recorded = meta.get("sha256")
    if recorded in (None, ""):
        if not allow_unverified:
            raise CheckpointError(
                f"{meta_path.name} records no sha256 for {weights_path.name}, so the weights "
                "cannot be verified; re-save the checkpoint, or pass "
                "--allow-unverified-checkpoint (allow_unverified=True) to load it unverified")
    elif not isinstance(recorded, str) or not _SHA256.match(recorded):
        raise CheckpointError(f"{meta_path}: sha256 is {recorded!r}; expected 64 hex digits")
    try:
        actual = sha256_regular_file(weights_path)
    except ValueError as error:
        raise CheckpointError(f"{weights_path}: {error}") from error
    if recorded and recorded != actual:
        raise CheckpointError(
            f"{weights_path} does not match the sha256 recorded in {meta_path.name}: "
            f"expected {recorded}, got {actual}"
        )
    if "config" not in meta:
        raise CheckpointError(f"{meta_path} has no 'config' (the model's architecture)")
    try:
        config = CRNetConfig.from_dict(meta["config"])
    except ConfigError as error:
        raise CheckpointError(f"{meta_path}: config: {error}") from error
    except TypeError as error:  # a missing/odd field the dataclass cannot take
        raise CheckpointError(f"{meta_path}: config: {error}") from error
    return CheckpointInfo(
        weights_path=weights_path,
        config=config,
        preprocessing=meta.get("preprocessing", {}),
        training=meta.get("training", {}),
        sha256=actual,
        verified=bool(recorded),
    )


def read_safetensors_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), read
    without torch (crnet.runtime.safetensors_header); CheckpointError for a malformed one."""
    return read_header(path, CheckpointError)[0]


def check_header_fits(header: dict[str, dict[str, Any]], config: CRNetConfig,
                      source: Path) -> None:
    """Compare the header's names, shapes and dtypes with the model ``config`` describes
    (built on the meta device: no memory, no weights), before the real model is built."""
    with torch.device("meta"):
        expected = {name: (list(t.shape), _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)))
                    for name, t in CRNet(config).state_dict().items()}
    found = {name: (entry["shape"], entry["dtype"]) for name, entry in header.items()}
    _raise_mismatch(source, expected, found)


def _raise_mismatch(source: Path, expected: dict[str, tuple[list[int], str]],
                    found: dict[str, tuple[list[int], str]]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    common = sorted(set(expected) & set(found))
    mismatched = [f"{name}: checkpoint {found[name][0]} vs model {expected[name][0]}"
                  for name in common if list(found[name][0]) != list(expected[name][0])]
    wrong_types = [f"{name}: checkpoint {found[name][1]} vs model {expected[name][1]}"
                   for name in common if found[name][1] != expected[name][1]]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    if mismatched:
        problems.append("shape mismatches " + "; ".join(mismatched[:10]))
    if wrong_types:
        problems.append("dtype mismatches (refused rather than cast) "
                        + "; ".join(wrong_types[:10]))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + ", ".join(problems))


def load_checkpoint(path: str | Path | None = None, *, allow_unverified: bool = False
                    ) -> tuple[CRNet, CheckpointInfo]:
    """Build the model from a checkpoint (the bundled one by default), in eval mode.

    Order: sidecar and hash (``read_checkpoint_info``), config bounds, the safetensors
    header's names/shapes/dtypes against the config, and only then the model and weights.
    """
    info = read_checkpoint_info(DEFAULT_CHECKPOINT if path is None else path,
                                allow_unverified=allow_unverified)
    check_header_fits(read_safetensors_header(info.weights_path), info.config,
                      info.weights_path)
    model = CRNet(info.config)
    try:
        tensors = load_file(str(info.weights_path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {info.weights_path}: {error}") from error
    check_finite_weights(tensors, info.weights_path)
    load_state(model, tensors, source=info.weights_path)
    model.eval()
    return model, info


def check_finite_weights(tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor: a hash only
    says the file is the one that was saved, not that training produced usable numbers."""
    for name, tensor in sorted(tensors.items()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{source}: the checkpoint's weights are not finite: tensor {name!r} has "
                f"{bad} NaN or infinite value(s) of {tensor.numel()} (a diverged or broken "
                "training run); retrain or pick an earlier checkpoint")


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy tensors into the model; name missing/unexpected keys and shape mismatches."""
    expected = {name: (list(t.shape), _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)))
                for name, t in model.state_dict().items()}
    found = {name: (list(t.shape), _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)))
             for name, t in tensors.items()}
    _raise_mismatch(source, expected, found)
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
