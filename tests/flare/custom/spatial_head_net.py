"""A job's own network, shipped in the job's ``app/custom`` folder: ``SmallCNN`` with a spatial head.

The global average pooling is replaced by pooling to 4 x 4 and the classifier reads all 64 x 16
features, so the classifier's update keeps where each feature was (docs/benchmarks.md: the attack
reaches SSIM 0.72 at batch 1 from the flat prior on it, 0.33 on ``SmallCNN``).
"""

from __future__ import annotations

from torch import nn

from nvflare_gia.models import SmallCNN


class SpatialHeadCNN(SmallCNN):
    """``SmallCNN`` whose head pools to ``grid`` x ``grid`` and classifies all the pooled features."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, init_seed: int | None = None, grid: int = 4) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, init_seed=init_seed)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.classifier = nn.Linear(64 * grid * grid, num_classes)
