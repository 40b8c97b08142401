"""Image generators for generator-based DFKD (DAFL, ZSKT, DFAD, DFQ, CMI, FastDFKD)."""

from torch import nn


class Generator(nn.Module):
    """DCGAN-style generator: z -> (channels, size, size).

    ``out="tanh_bn"`` ends in tanh then BatchNorm(affine=False) (DAFL); ``out="bn"`` ends in
    BatchNorm(affine=False) alone (ZSKT, DFAD); ``out="sigmoid"`` gives images in [0, 1]
    to be normalised by the caller (CMI, FastDFKD).
    """

    def __init__(self, nz=100, ngf=64, img_size=32, channels=1, out="tanh_bn"):
        super().__init__()
        if img_size % 4:
            raise ValueError(f"generator img_size must be divisible by 4, got {img_size}")
        self.init_size = img_size // 4
        self.project = nn.Linear(nz, 2 * ngf * self.init_size**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
        )
        heads = {
            "tanh_bn": [nn.Tanh(), nn.BatchNorm2d(channels, affine=False)],
            "bn": [nn.BatchNorm2d(channels, affine=False)],
            "sigmoid": [nn.Sigmoid()],
        }
        if out not in heads:
            raise ValueError(f"generator out must be one of {sorted(heads)}, got {out!r}")
        self.head = nn.Sequential(*heads[out])

    def forward(self, z):
        x = self.project(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.head(self.body(x))

