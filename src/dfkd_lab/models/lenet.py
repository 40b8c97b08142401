"""LeNet-5 and LeNet-5-half for 32x32 inputs, exactly as in the DAFL/ZSKD papers.

LeNet-5: 61,706 parameters; LeNet-5-half (conv channels halved, fc kept): 35,820.
The ``_bn`` variants add BatchNorm2d after each conv, which inversion methods need.
"""

from torch import nn

from .registry import register


class LeNet5(nn.Module):
    """conv c1@5x5 -> pool -> conv c2@5x5 -> pool -> fc 120 -> fc 84 -> fc classes."""

    feature_layers = ("block1", "block2")

    def __init__(self, num_classes=10, in_channels=1, widths=(6, 16), bn=False):
        super().__init__()
        c1, c2 = widths

        def block(cin, cout):
            layers = [nn.Conv2d(cin, cout, 5)]
            if bn:
                layers.append(nn.BatchNorm2d(cout))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            return nn.Sequential(*layers)

        self.block1 = block(in_channels, c1)
        self.block2 = block(c1, c2)
        self.fc1 = nn.Linear(c2 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.block2(self.block1(x)).flatten(1)
        x = self.relu(self.fc2(self.relu(self.fc1(x))))
        return self.classifier(x)


@register("lenet5")
def lenet5(num_classes=10, in_channels=1):
    return LeNet5(num_classes, in_channels)


@register("lenet5_bn")
def lenet5_bn(num_classes=10, in_channels=1):
    return LeNet5(num_classes, in_channels, bn=True)


@register("lenet5_half")
def lenet5_half(num_classes=10, in_channels=1):
    return LeNet5(num_classes, in_channels, widths=(3, 8))


@register("lenet5_half_bn")
def lenet5_half_bn(num_classes=10, in_channels=1):
    return LeNet5(num_classes, in_channels, widths=(3, 8), bn=True)
