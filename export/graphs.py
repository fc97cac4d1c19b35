"""The torch side of the export: the two graph wrappers and torch.onnx.export.

Kept apart from export/to_onnx.py (the command and the bundle writer) so that the
wrappers' qualified names are the same whichever entry point runs the export
(``python export/to_onnx.py`` or ``crnet deploy``): the ONNX node metadata records
them, and the same checkpoint must give the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from crnet.models.crnet import CRNet
from crnet.runtime.layout import graph_file

DEFAULT_OPSET = 18
BATCH_AXIS, SHOTS_AXIS = "batch", "shots"


class BackboneGraph(nn.Module):
    """Export wrapper: normalised images [N,3,H,W] -> features [N,C,h,w] (model.encode)."""

    def __init__(self, model: CRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


class RefineGraph(nn.Module):
    """Export wrapper: model.refine with the config's refinement steps, unrolled."""

    def __init__(self, model: CRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, query_feat: torch.Tensor, support_feat: torch.Tensor,
                support_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.refine(query_feat, support_feat, support_mask,
                                 steps=self.model.config.refine_steps)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's informational warnings and log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_graphs(model: CRNet, out_dir: str | Path, opset: int = DEFAULT_OPSET
                  ) -> dict[str, Path]:
    """Export the backbone and refine graphs (fp32) of an eval-mode model into ``out_dir``."""
    model.eval()
    config = model.config
    height, width = config.input_size
    feat_h, feat_w = config.feature_size
    channels = config.feature_channels
    out_dir = Path(out_dir)
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=1024)
    shots = torch.export.Dim(SHOTS_AXIS, min=1, max=1024)
    jobs = {
        "backbone": (
            BackboneGraph(model), (torch.randn(2, 3, height, width),),
            ["image"], ["feat"], ({0: batch},),
        ),
        "refine": (
            RefineGraph(model),
            (torch.randn(1, channels, feat_h, feat_w), torch.randn(2, channels, feat_h, feat_w),
             torch.rand(2, 1, feat_h, feat_w)),
            ["query_feat", "support_feat", "support_mask"], ["query_logits", "support_logits"],
            ({}, {0: shots}, {0: shots}),
        ),
    }
    paths: dict[str, Path] = {}
    for graph, (wrapper, example, inputs, outputs, dynamic) in jobs.items():
        path = out_dir / graph_file(graph, "fp32")
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                wrapper, example, str(path), dynamo=True, external_data=False,
                opset_version=opset, input_names=inputs, output_names=outputs,
                dynamic_shapes=dynamic, optimize=True, verbose=False,
            )
        paths[graph] = path
    return paths
