"""A network of one's own for the tests: any nn.Module, with none of the names the shipped
architectures carry (no ``classifier``, no ``feature_layers``)."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
