"""VGG-8 and VGG-11 with BatchNorm for 32x32 inputs."""

from torch import nn

from .registry import register

_PLANS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    feature_layers = ("stage1", "stage2", "stage3", "stage4", "stage5")

    def __init__(self, plan, num_classes=10, in_channels=3):
        super().__init__()
        cin = in_channels
        for i, widths in enumerate(plan):
            layers = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
                cin = w
            layers.append(nn.MaxPool2d(2))
            setattr(self, f"stage{i + 1}", nn.Sequential(*layers))
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        for name in self.feature_layers:
            x = getattr(self, name)(x)
        return self.classifier(x.flatten(1))


def _register(name):
    @register(name)
    def factory(num_classes=10, in_channels=3):
        return VGG(_PLANS[name], num_classes, in_channels)


for _name in _PLANS:
    _register(_name)
