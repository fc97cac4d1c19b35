"""`crnet train --init-trunk PATH`: an ImageNet ResNet-50 state dict into models/trunk.py.

Reads the two files users have:

* torchvision's ``resnet50-*.pth``: a pickled state dict, loaded with
  ``torch.load(path, weights_only=True, map_location="cpu")`` (never unrestricted pickle);
* timm's ``resnet50*.safetensors`` or ``.pth`` / ``.bin``: the same key names. Training
  checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) and
  DataParallel's ``module.`` prefix are unwrapped.

Key mapping onto the trunk (``trunk.`` in CRNet's state dict): ``conv1`` -> ``stem.0``,
``bn1`` -> ``stem.1``, ``layerN.i.downsample.{0,1}`` -> ``layerN.i.shortcut.{0,1}``, the
rest keeps its name. ``fc.*`` and ``layer4.*`` are unused (CRNet cuts the trunk after
layer3). Anything else unused (a deeper ResNet's extra blocks), any missing trunk weight
(``num_batches_tracked`` aside, absent from older files) or a shape mismatch is refused
with the key named.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crnet.runtime.errors import CrnetError
from crnet.runtime.files import sha256_file

UNUSED_PREFIXES = ("fc.", "layer4.")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
PROBE_KEYS = ("conv1.weight", "layer1.0.conv1.weight", "layer3.0.conv1.weight")


class TrunkInitError(CrnetError, ValueError):
    """An --init-trunk file that cannot be read or does not fit the trunk (names the file)."""


@dataclass
class TrunkInitReport:
    """What an import did: which keys were mapped, left unused, or missing."""

    path: Path
    sha256: str
    mapped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the training log."""
        return (f"--init-trunk {self.path.name}: {len(self.mapped)} tensors mapped, "
                f"{len(self.unused)} unused (fc, layer4), {len(self.missing)} missing"
                + (f" ({', '.join(self.missing[:4])}{' ...' if len(self.missing) > 4 else ''})"
                   if self.missing else ""))

    def to_dict(self) -> dict[str, Any]:
        """The record kept in the checkpoint JSON (training.init_trunk)."""
        return {"file": self.path.name, "sha256": self.sha256, "mapped": len(self.mapped),
                "unused": len(self.unused), "missing": list(self.missing)}


def trunk_key(source_key: str) -> str:
    """torchvision/timm ResNet key -> the key inside models.trunk.ResNetTrunk."""
    key = re.sub(r"^conv1\.", "stem.0.", source_key)
    key = re.sub(r"^bn1\.", "stem.1.", key)
    return re.sub(r"^(layer\d+\.\d+)\.downsample\.", r"\1.shortcut.", key)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torchvision .pth or timm .safetensors/.pth file, safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise TrunkInitError(f"--init-trunk file {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise TrunkInitError(f"--init-trunk file {path} is a truncated or corrupt "
                                 f"safetensors file: {error}") from error
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise TrunkInitError(
            f"--init-trunk file {path} holds pickled Python objects, not a state dict (a "
            "whole model saved with torch.save(model)?); it is loaded with "
            "torch.load(weights_only=True), which refuses objects because unpickling them can "
            "run code. Save model.state_dict() instead, or use torchvision's/timm's "
            f"resnet50 weights file. ({str(error).splitlines()[0]})") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise TrunkInitError(
            f"--init-trunk file {path} cannot be read as a torch or safetensors file; it is "
            f"truncated or not a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); expected torchvision's "
            "resnet50-*.pth or timm's resnet50 .safetensors/.pth") from error
    return _tensors_of(loaded, path)


def _tensors_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict": ...} / {"model": ...} and "module." prefixes; tensors only."""
    for _ in range(3):
        if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor)
                                                for v in loaded.values()):
            inner = next((loaded[k] for k in WRAPPER_KEYS if isinstance(loaded.get(k), dict)),
                         None)
            if inner is None:
                break
            loaded = inner
    if not isinstance(loaded, dict) or not loaded:
        raise TrunkInitError(f"--init-trunk file {path} holds a {type(loaded).__name__}, not a "
                             "state dict of tensors; expected a ResNet-50 state dict")
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise TrunkInitError(f"--init-trunk file {path} holds no tensors; expected a "
                             "ResNet-50 state dict")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def map_trunk(tensors: dict[str, torch.Tensor], trunk_state: dict[str, torch.Tensor],
              path: Path, trunk_name: str = "ResNet-50 trunk"
              ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map source keys onto the trunk; return (trunk tensors, unused keys, missing keys)."""
    if not any(k in tensors for k in PROBE_KEYS):
        sample = ", ".join(sorted(tensors)[:4])
        raise TrunkInitError(
            f"--init-trunk file {path} is not a ResNet checkpoint: none of "
            f"{', '.join(PROBE_KEYS)} is in it (it has {sample}, ...); expected torchvision's "
            "or timm's ResNet-50 state dict")
    mapped: dict[str, torch.Tensor] = {}
    unused, foreign = [], []
    for key in sorted(tensors):
        target = trunk_key(key)
        if target in trunk_state:
            mapped[target] = tensors[key]
        elif key.startswith(UNUSED_PREFIXES):
            unused.append(key)
        else:
            foreign.append(key)
    mismatched = [f"{source} {list(mapped[target].shape)} (trunk.{target} expects "
                  f"{list(trunk_state[target].shape)})"
                  for source, target in ((k, trunk_key(k)) for k in sorted(tensors))
                  if target in mapped and mapped[target].shape != trunk_state[target].shape]
    if mismatched:
        raise TrunkInitError(
            f"--init-trunk file {path} does not fit the {trunk_name}: shape mismatch at "
            + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else "")
            + "; expected ImageNet ResNet-50 weights with the crnet-r50 preset")
    if foreign:
        raise TrunkInitError(
            f"--init-trunk file {path} has {len(foreign)} weights that the {trunk_name} "
            f"does not have: {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; "
            "expected ResNet-50 (a deeper ResNet or another architecture?)")
    missing = sorted(k for k in trunk_state if k not in mapped)
    essential = [k for k in missing if not k.endswith("num_batches_tracked")]
    if essential:
        raise TrunkInitError(
            f"--init-trunk file {path} lacks {len(essential)} trunk weights: "
            f"{', '.join(essential[:5])}{' ...' if len(essential) > 5 else ''}; expected a "
            "complete ResNet-50 state dict")
    return mapped, unused, missing


def init_trunk(model: torch.nn.Module, path: str | Path) -> TrunkInitReport:
    """Copy an ImageNet ResNet-50 file into ``model.trunk``; report what was mapped."""
    path = Path(path)
    tensors = read_state_dict(path)
    trunk_state = model.trunk.state_dict()
    config = getattr(model, "config", None)
    trunk_name = ("ResNet-50 trunk" if config is None else
                  f"{config.name} trunk ({config.block} blocks {list(config.trunk_blocks)}, "
                  f"widths {list(config.trunk_widths)})")
    mapped, unused, missing = map_trunk(tensors, trunk_state, path, trunk_name)
    with torch.no_grad():
        for key, value in mapped.items():
            trunk_state[key].copy_(value.to(trunk_state[key].dtype))
    return TrunkInitReport(path=path, sha256=sha256_file(path),
                           mapped=[f"trunk.{k}" for k in sorted(mapped)], unused=unused,
                           missing=[f"trunk.{k}" for k in missing])


def freeze_trunk(model: torch.nn.Module) -> None:
    """CaNet's frozen trunk: no gradients, and its BatchNorm layers kept in eval mode
    (call again after every ``model.train()``)."""
    for parameter in model.trunk.parameters():
        parameter.requires_grad_(False)
    model.trunk.eval()
