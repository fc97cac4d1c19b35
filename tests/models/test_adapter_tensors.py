"""crnet.models.adapter_tensors: adapter tensors copied into a torch CRNet, or refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crnet.models.adapter_tensors import ONNX_PREFIX, AdapterTensorError, apply_tensors
from crnet.models.config import CRNetConfig
from crnet.models.crnet import CRNet


def test_tensors_land_on_their_parameters(tiny_config: CRNetConfig) -> None:
    model = CRNet(tiny_config)
    name = "refinement.classifier.bias"
    apply_tensors(model, {ONNX_PREFIX + name: np.array([1.5, -2.0], np.float32)})
    assert torch.equal(dict(model.named_parameters())[name].detach(),
                       torch.tensor([1.5, -2.0]))
    apply_tensors(model, {"graph.bias": np.array([3.0, 4.0], np.float32)},
                  torch_names={"graph.bias": name})  # the export record's mapping
    assert dict(model.named_parameters())[name].detach().tolist() == [3.0, 4.0]


@pytest.mark.parametrize(("tensors", "message"), [
    ({"model.refinement.nothing.weight": np.zeros(2, np.float32)}, "names no parameter"),
    ({"model.refinement.classifier.bias": np.zeros(3, np.float32)}, "has shape \\[3\\]"),
])
def test_tensors_that_do_not_fit_change_nothing(tiny_config: CRNetConfig, tensors,
                                                message: str) -> None:
    model = CRNet(tiny_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = {"model.refinement.classifier.weight": np.ones((2, 16, 1, 1), np.float32)}
    with pytest.raises(AdapterTensorError, match=message):
        apply_tensors(model, {**good, **tensors})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
