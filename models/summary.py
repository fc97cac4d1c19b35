"""Model summary: parameter count and FLOPs of a preset at its input size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crnet.models.config import CRNetConfig
from crnet.models.crnet import CRNet


@dataclass(frozen=True)
class ModelSummary:
    """Parameter count and FLOPs (2 x multiply-accumulates of conv/linear layers)."""

    name: str
    parameters: int
    encode_flops: int  # one image through the backbone
    refine_flops: int  # one 1-shot refine call (all refinement steps), both branches
    refine_query_flops: int  # the query branch alone (what a cached-support query runs)
    input_size: tuple[int, int]
    feature_size: tuple[int, int]
    refine_steps: int

    @property
    def forward_flops(self) -> int:
        """A 1-shot forward: two images encoded plus one refine."""
        return 2 * self.encode_flops + self.refine_flops

    @property
    def segment_flops(self) -> int:
        """One query against a cached support: one image encoded plus the query branch."""
        return self.encode_flops + self.refine_query_flops


def count_flops(module: nn.Module, run: callable) -> int:
    """FLOPs of conv and linear layers executed while ``run()`` runs."""
    total = 0

    def on_conv(layer: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
        total += 2 * output.numel() * kernel

    def on_linear(layer: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * output.numel() * layer.in_features

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(on_linear))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def summarize(config: CRNetConfig) -> ModelSummary:
    """Build the model for ``config`` (random weights) and measure its size and FLOPs."""
    model = CRNet(config).eval()
    height, width = config.input_size
    image = torch.zeros(1, 3, height, width)
    encode_flops = count_flops(model, lambda: model.encode(image))
    feat = model.encode(image).detach()
    mask = torch.ones(1, 1, *feat.shape[2:])
    refine_flops = count_flops(model, lambda: model.refine(feat, feat, mask))
    refine_query_flops = count_flops(model, lambda: model.refine_query(feat, feat, mask))
    return ModelSummary(
        name=config.name,
        parameters=sum(p.numel() for p in model.parameters()),
        encode_flops=encode_flops,
        refine_flops=refine_flops,
        refine_query_flops=refine_query_flops,
        input_size=config.input_size,
        feature_size=tuple(feat.shape[2:]),
        refine_steps=config.refine_steps,
    )


def flops_entry(config: CRNetConfig) -> dict[str, Any]:
    """The manifest's ``"flops"`` entry: FLOPs per image encode, per 1-shot refine (both
    branches and the query branch alone), per 1-shot forward and per cached-support query."""
    summary = summarize(config)
    return {"encode": summary.encode_flops, "refine": summary.refine_flops,
            "refine_query": summary.refine_query_flops, "forward": summary.forward_flops,
            "segment": summary.segment_flops,
            "counted": "conv and linear layers, 2 x multiply-accumulates"}


def format_summary(summary: ModelSummary) -> str:
    """A short human-readable block for ``crnet info``."""
    height, width = summary.input_size
    feat_h, feat_w = summary.feature_size
    return "\n".join([
        f"{summary.name}",
        f"  parameters      {summary.parameters / 1e6:8.2f} M",
        f"  input           {height}x{width} -> features {feat_h}x{feat_w}",
        f"  encode (1 img)  {summary.encode_flops / 1e9:8.2f} GFLOPs",
        f"  refine (1-shot) {summary.refine_flops / 1e9:8.2f} GFLOPs "
        f"({summary.refine_steps} steps)",
        f"  query branch    {summary.refine_query_flops / 1e9:8.2f} GFLOPs "
        "(the refine a cached-support query runs)",
        f"  segment 1 query {summary.segment_flops / 1e9:8.2f} GFLOPs (encode + query branch)",
        f"  forward 1-shot  {summary.forward_flops / 1e9:8.2f} GFLOPs",
    ])
