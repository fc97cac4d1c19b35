"""CRNet (Liu et al., CVPR 2020) in PyTorch, split on the seam the deployment uses.

``forward = refine(encode(query), encode(supports), support_mask)``:

* ``encode`` is the Siamese encoder: ResNet trunk, layer2 + dilated layer3 concatenated,
  a 3x3 dilation-2 projection to C channels (CaNet's recipe).
* ``refine`` holds the cross-reference module, the condition module and the recurrent
  mask refinement, and predicts both the query and the support masks.

K-shot fusion: prototypes, not probabilities. Each shot's cross-reference vector and
masked-average-pooled class vector are computed, then fused (cross-reference vectors by
mean, class vectors weighted by each shot's mask area, which equals pooling over the
union of all support pixels). The query branch then runs once per refinement step
whatever K is, so per-frame cost does not grow with the shot count, and a model trained
1-shot sees the same kind of input at K shots, only a better estimate of the class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crnet.models.config import CRNetConfig
from crnet.models.trunk import ResNetTrunk

MASK_EPSILON = 5e-4  # CaNet's masked-average-pooling denominator guard


class CrossReference(nn.Module):
    """Channel weights from both branches: GAP, two FC layers and a sigmoid each, multiplied."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                nn.Sigmoid(),
            )

        self.query_branch = branch()
        self.support_branch = branch()

    def forward(self, query_feat: torch.Tensor, support_feat: torch.Tensor) -> torch.Tensor:
        """Per-shot co-occurrence weights [B*K,C] for queries [B,C,h,w], supports [B*K,C,h,w]."""
        query_weights = self.query_branch(query_feat.mean(dim=(2, 3)))  # [B, C]
        support_weights = self.support_branch(support_feat.mean(dim=(2, 3)))  # [B*K, C]
        episodes, channels = query_weights.shape
        shot_weights = support_weights.reshape(episodes, -1, channels) * query_weights[:, None]
        return shot_weights.reshape(-1, channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (no normalisation, as in CaNet's head)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class Condition(nn.Module):
    """Tile the class vector, concatenate it with the features, fuse, then a residual block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        self.residual = ResidualBlock(channels)

    def forward(self, feat: torch.Tensor, class_vector: torch.Tensor) -> torch.Tensor:
        tiled = class_vector[:, :, None, None].expand(-1, -1, feat.shape[2], feat.shape[3])
        return self.residual(F.relu(self.fuse(torch.cat([feat, tiled], dim=1))))


class MaskRefinement(nn.Module):
    """One refinement step: downsample (x2), global convolution (1x7/7x1), combine -> 2 logits."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.entry = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.gc_left = nn.Sequential(
            nn.Conv2d(channels, channels, (1, 7), padding=(0, 3)),
            nn.Conv2d(channels, channels, (7, 1), padding=(3, 0)),
        )
        self.gc_right = nn.Sequential(
            nn.Conv2d(channels, channels, (7, 1), padding=(3, 0)),
            nn.Conv2d(channels, channels, (1, 7), padding=(0, 3)),
        )
        self.combine = nn.Conv2d(channels, channels, 3, padding=1)
        self.classifier = nn.Conv2d(channels, 2, 1)

    def forward(self, feat: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        skip = F.relu(self.entry(torch.cat([feat, foreground], dim=1)))
        low = F.relu(self.down(skip))
        low = F.relu(self.gc_left(low) + self.gc_right(low))
        up = F.interpolate(low, size=(skip.shape[2], skip.shape[3]), mode="bilinear",
                           align_corners=False)
        return self.classifier(F.relu(self.combine(skip + up)))


def masked_average_pool(
    feat: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class vectors [K,C] of features [K,C,h,w] under masks [K,1,h,w], and mask areas [K,1]."""
    area = mask.sum(dim=(2, 3))
    vector = (feat * mask).sum(dim=(2, 3)) / (area + MASK_EPSILON)
    return vector, area


class CRNet(nn.Module):
    """Siamese encoder + cross-reference + condition + recurrent mask refinement."""

    def __init__(self, config: CRNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.feature_channels
        self.trunk = ResNetTrunk(
            config.block, config.stem_width, config.trunk_blocks, config.trunk_widths
        )
        self.project = nn.Sequential(
            nn.Conv2d(
                self.trunk.layer2_channels + self.trunk.layer3_channels,
                channels, 3, padding=2, dilation=2, bias=False,
            ),
            nn.ReLU(inplace=True),
            nn.Dropout2d(config.dropout),
        )
        self.cross_reference = CrossReference(channels, config.reduction)
        self.condition = Condition(channels)
        self.refinement = MaskRefinement(channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone graph: normalised images [N,3,H,W] -> features [N,C,h,w]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N,3,H,W], got {list(images.shape)}")
        mid, deep = self.trunk(images)
        if deep.shape[2:] != mid.shape[2:]:
            deep = F.interpolate(deep, size=mid.shape[2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([mid, deep], dim=1))

    def refine(
        self,
        query_feat: torch.Tensor,
        support_feat: torch.Tensor,
        support_mask: torch.Tensor,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine graph: query [1,C,h,w], supports [K,C,h,w], masks [K,1,h,w] -> logits.

        Returns (query_logits [1,2,h,w], support_logits [K,2,h,w]) after ``steps``
        refinement steps (the config's ``refine_steps`` by default); the loop is a plain
        Python loop with a fixed count, so the ONNX export unrolls it.

        Training batches episodes: B queries [B,C,h,w] with B*K supports (episode-major)
        give [B,2,h,w] and [B*K,2,h,w]; episodes never mix. The export uses B = 1.

        The query and support branches are refined separately (the head has no batch
        statistics, so this equals refining them as one batch): the query logits then
        depend on the supports only through the cross-reference weights and the fused
        class vector, and a runtime that needs only the query mask can drop the support
        branch from the exported graph (see ``refine_query``).
        """
        steps = self.config.refine_steps if steps is None else steps
        query_feat, fused_vector, support_feat, shot_vectors = self._cross_and_pool(
            query_feat, support_feat, support_mask)
        query_logits = self._refine_steps(self.condition(query_feat, fused_vector), steps)
        support_logits = self._refine_steps(self.condition(support_feat, shot_vectors), steps)
        return query_logits, support_logits

    def refine_query(
        self,
        query_feat: torch.Tensor,
        support_feat: torch.Tensor,
        support_mask: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        """The query logits of ``refine`` alone, without refining the supports."""
        steps = self.config.refine_steps if steps is None else steps
        query_feat, fused_vector, _, _ = self._cross_and_pool(
            query_feat, support_feat, support_mask)
        return self._refine_steps(self.condition(query_feat, fused_vector), steps)

    def _cross_and_pool(
        self, query_feat: torch.Tensor, support_feat: torch.Tensor, support_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-reference both branches and pool the class vectors: (reweighted query
        features [B,C,h,w], fused class vector [B,C], reweighted support features
        [B*K,C,h,w], per-shot class vectors [B*K,C])."""
        if not _exporting():
            check_refine_inputs(query_feat, support_feat, support_mask)
        episodes, channels = query_feat.shape[0], query_feat.shape[1]
        weights = self.cross_reference(query_feat, support_feat)  # [B*K, C]
        support_feat = support_feat * weights[:, :, None, None]
        per_episode = weights.reshape(episodes, -1, channels)  # [B, K, C]
        query_feat = query_feat * per_episode.mean(dim=1)[:, :, None, None]

        shot_vectors, areas = masked_average_pool(support_feat, support_mask)
        episode_vectors = shot_vectors.reshape(episodes, -1, channels)
        areas = areas.reshape(episodes, -1, 1)
        fused_vector = (episode_vectors * areas).sum(dim=1) / (areas.sum(dim=1) + MASK_EPSILON)
        return query_feat, fused_vector, support_feat, shot_vectors

    def _refine_steps(self, conditioned: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` recurrent refinements from an all-background start -> logits."""
        foreground = torch.zeros_like(conditioned[:, :1])
        logits = conditioned.new_zeros(0)
        for _ in range(steps):
            logits = self.refinement(conditioned, foreground)
            foreground = torch.softmax(logits, dim=1)[:, 1:2]
        return logits

    def forward(
        self, query_images: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full model: query [1,3,H,W], supports [K,3,H,W], masks [K,1,H,W] -> logits at h,w."""
        if support_masks.dim() != 4 or support_masks.shape[1] != 1:
            raise ValueError(f"support_masks must be [K,1,H,W], got {list(support_masks.shape)}")
        if support_masks.shape[0] != support_images.shape[0]:
            raise ValueError(
                f"{support_images.shape[0]} support images but {support_masks.shape[0]} masks"
            )
        support_feat = self.encode(support_images)
        query_feat = self.encode(query_images)
        mask = resize_mask(support_masks, support_feat.shape[2:])
        return self.refine(query_feat, support_feat, mask)


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Binary masks [K,1,H,W] to feature size, bilinear as in CaNet."""
    return F.interpolate(mask.float(), size=tuple(size), mode="bilinear", align_corners=True)


def check_refine_inputs(
    query_feat: torch.Tensor, support_feat: torch.Tensor, support_mask: torch.Tensor
) -> None:
    """Raise a clear ValueError on mismatched shapes or an all-zero support mask."""
    if query_feat.dim() != 4:
        raise ValueError(f"query_feat must be [1,C,h,w], got {list(query_feat.shape)}")
    if support_feat.dim() != 4 or support_feat.shape[1:] != query_feat.shape[1:]:
        raise ValueError(
            f"support_feat must be [K,{query_feat.shape[1]},{query_feat.shape[2]},"
            f"{query_feat.shape[3]}] to match the query, got {list(support_feat.shape)}"
        )
    if support_feat.shape[0] == 0 or support_feat.shape[0] % query_feat.shape[0] != 0:
        raise ValueError(
            f"{support_feat.shape[0]} support features for {query_feat.shape[0]} queries: "
            "each query needs the same number (>= 1) of shots"
        )
    expected = [support_feat.shape[0], 1, *support_feat.shape[2:]]
    if list(support_mask.shape) != expected:
        raise ValueError(f"support_mask must be {expected}, got {list(support_mask.shape)}")
    empty = (support_mask.flatten(1).sum(dim=1) <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"support mask of shot(s) {empty} is all zero: every support needs a labelled "
            "foreground to define the class"
        )


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
