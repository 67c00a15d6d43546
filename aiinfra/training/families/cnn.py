"""A small convolutional network for image arrays stored as flat pixel columns.

Images travel through the platform as one numeric column per pixel (a dataset version, a feature
spec and a signature like any table), so the network reshapes its input vector to
``image_shape`` (channels, height, width) first. scikit-learn's 8x8 digits are the test case.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aiinfra.training.families import _check, family


class ImageCNN(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], dropout: float, output_dim: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        blocks: list[nn.Module] = []
        in_ch, side = image_shape[0], min(image_shape[1:])
        for ch in channels:
            blocks += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.ReLU()]
            if side >= 4:  # pool while the image is still big enough to halve
                blocks.append(nn.MaxPool2d(2))
                side //= 2
            in_ch = ch
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        x = self.features(x)
        return self.head(x.mean(dim=(2, 3)))  # global average pooling: any image size


@family("image_cnn")
def image_cnn(input_dim: int, output_dim: int, *, image_shape: list[int] | None = None, channels: list[int] | None = None,
              dropout: float = 0.0) -> nn.Module:
    if image_shape is None:  # a square single-channel image
        side = math.isqrt(input_dim)
        image_shape = [1, side, side]
    _check(len(image_shape) == 3 and all(isinstance(d, int) and d > 0 for d in image_shape),
           "image_shape must be [channels, height, width] of positive integers, got {}", image_shape)
    _check(math.prod(image_shape) == input_dim, "image_shape {} holds {} values but the input has {}",
           image_shape, math.prod(image_shape), input_dim)
    channels = [16, 32] if channels is None else list(channels)
    _check(len(channels) >= 1 and all(isinstance(c, int) and 1 <= c <= 4096 for c in channels),
           "channels must be a non-empty list of integers in 1..4096, got {}", channels)
    _check(0.0 <= dropout < 1.0, "dropout must be in [0, 1), got {}", dropout)
    return ImageCNN(tuple(image_shape), channels, dropout, output_dim)  # type: ignore[arg-type]
