"""Adapter tensors on a torch CRNet: which parts adapt, how the exported refine graph
names their parameters, and copying an adapter's tensors into a model in place.

Shared by the finetune (crnet.models.finetune) and the torch backend
(crnet.models.torch_backend), which runs a model with an adapter applied.
"""

from __future__ import annotations

import numpy as np
import torch

from crnet.runtime.errors import CrnetError

PARTS = ("cross_reference", "condition", "refinement")
ONNX_PREFIX = "model."
"""The export wraps the model as ``RefineGraph.model``, so the refine graph names the
initializer of torch parameter ``p`` ``model.p`` (export/graphs.py)."""


class AdapterTensorError(CrnetError, ValueError):
    """Adapter tensors that do not fit the model (unknown name, other shape)."""


def apply_tensors(model: torch.nn.Module, tensors: dict[str, np.ndarray],
                  torch_names: dict[str, str] | None = None) -> None:
    """Copy adapter tensors (ONNX names) into ``model`` in place; ``torch_names`` maps an
    ONNX name to the torch name (default: the export's ``model.`` prefix dropped)."""
    parameters = dict(model.named_parameters())
    updates = {}
    for name, value in tensors.items():
        torch_name = (torch_names or {}).get(name) or _strip_prefix(name)
        target = parameters.get(torch_name)
        if target is None:
            raise AdapterTensorError(f"adapter tensor {name} names no parameter of the "
                                     f"model ({torch_name}); the adapter is for another model")
        if tuple(target.shape) != tuple(np.shape(value)):
            raise AdapterTensorError(f"adapter tensor {name} has shape "
                                     f"{list(np.shape(value))}; the model's {torch_name} is "
                                     f"{list(target.shape)}")
        updates[torch_name] = value
    with torch.no_grad():
        for torch_name, value in updates.items():
            target = parameters[torch_name]
            target.copy_(torch.as_tensor(np.asarray(value, np.float32)).to(target.device,
                                                                           target.dtype))


def _strip_prefix(name: str) -> str:
    return name[len(ONNX_PREFIX):] if name.startswith(ONNX_PREFIX) else name
