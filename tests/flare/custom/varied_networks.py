"""Networks of shapes a job may ship in its ``app/custom`` besides ``SmallCNN``'s (factories called as
``f(num_classes=..., in_channels=...)``): no linear classifier, no BatchNorm, BatchNorm that keeps a
cumulative average or no running statistics, InstanceNorm with running statistics, MONAI's
``Classifier``, dropout before the classifier, and blocks held in an ``nn.ModuleList``."""

from __future__ import annotations

from monai.networks.nets import Classifier
import torch
from torch import nn


def conv_head(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """A 1 x 1 convolution to the classes, then global average pooling: no ``nn.Linear`` to read labels from."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def group_norm(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """GroupNorm instead of BatchNorm: no running statistics in the update."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, num_classes),
    )


def unusual_norms(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """BatchNorm with a cumulative average (``momentum=None``), BatchNorm without running statistics,
    and InstanceNorm with running statistics."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=None), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16, track_running_stats=False), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.InstanceNorm2d(32, affine=True, track_running_stats=True), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def monai_classifier(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """MONAI's ``Classifier`` for 32 x 32 images (its constructor takes the input shape)."""
    return Classifier(in_shape=(in_channels, 32, 32), classes=num_classes, channels=(8, 16, 32), strides=(2, 2, 2))


def dropout_head(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """Dropout before the linear classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, num_classes),
    )


class ModuleListNet(nn.Module):
    """Blocks in an ``nn.ModuleList`` run by a loop in ``forward``, the second one strided."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        widths = [(in_channels, 8, 1), (8, 16, 2), (16, 32, 2)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out, stride in widths
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        x = images
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.pool(x).flatten(1))


def module_list(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """:class:`ModuleListNet`."""
    return ModuleListNet(num_classes, in_channels)
