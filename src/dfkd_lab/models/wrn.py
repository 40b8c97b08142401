"""Wide ResNets WRN-depth-width for 32x32 inputs (pre-activation blocks)."""

from torch import nn
from torch.nn import functional as F

from .registry import register


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    feature_layers = ("group1", "group2", "group3")

    def __init__(self, depth, widen, num_classes=10, in_channels=3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        cin = widths[0]
        for g in range(3):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(cin, widths[g + 1], 2 if (j == 0 and g > 0) else 1))
                cin = widths[g + 1]
            setattr(self, f"group{g + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.group3(self.group2(self.group1(self.stem(x))))
        return self.classifier(self.pool(F.relu(self.bn(x))).flatten(1))


def _register(depth, widen):
    @register(f"wrn{depth}_{widen}")
    def factory(num_classes=10, in_channels=3):
        return WideResNet(depth, widen, num_classes, in_channels)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
