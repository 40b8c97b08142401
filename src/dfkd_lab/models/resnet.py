"""CIFAR ResNet-18/34 (3x3 stem, no max-pool), as used by the DFKD benchmarks."""

from torch import nn
from torch.nn import functional as F

from .registry import register


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    feature_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, depths, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        cin = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(self.pool(x).flatten(1))


@register("resnet18")
def resnet18(num_classes=10, in_channels=3):
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


@register("resnet34")
def resnet34(num_classes=10, in_channels=3):
    return ResNet((3, 4, 6, 3), num_classes, in_channels)
