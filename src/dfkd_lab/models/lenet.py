"""LeNet-5 and LeNet-5-half for 32x32 inputs, exactly as in the DAFL/ZSKD papers.

LeNet-5: 61,706 parameters; LeNet-5-half (conv channels halved, fc kept): 35,820.
The ``_bn`` variants add BatchNorm2d after each conv, which inversion methods need.
``lenet5_bn_fc`` also puts BatchNorm1d after the two hidden fc layers: a teacher whose
statistics cover 4 layers (226 channels) instead of 2 (22), a stronger image prior for data-free
synthesis. Its extra layers are ``Identity`` in the others, so their state dicts are unchanged.
"""

from torch import nn

from .registry import register


class LeNet5(nn.Module):
    """conv c1@5x5 -> pool -> conv c2@5x5 -> pool -> fc 120 -> fc 84 -> fc classes."""

    feature_layers = ("block1", "block2")

    def __init__(self, num_classes=10, in_channels=1, widths=(6, 16), bn=False, bn_fc=False):
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
        self.fc1_bn = nn.BatchNorm1d(120) if bn_fc else nn.Identity()
        self.fc2_bn = nn.BatchNorm1d(84) if bn_fc else nn.Identity()
        self.classifier = nn.Linear(84, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.block2(self.block1(x)).flatten(1)
        x = self.relu(self.fc2_bn(self.fc2(self.relu(self.fc1_bn(self.fc1(x))))))
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


@register("lenet5_bn_fc")
def lenet5_bn_fc(num_classes=10, in_channels=1):
    return LeNet5(num_classes, in_channels, bn=True, bn_fc=True)
