"""Proxy data: unlabelled images of another dataset, made into inputs the teacher understands.

A proxy is read like a data config (a built-in dataset or an image folder, one split, an
optional class subset), converted to the run's channels (luminance for RGB -> grayscale,
repeated for grayscale -> RGB) and size, and normalised with the teacher's statistics. Its
labels are dropped: the teacher labels every image. It is refused when it could hold the
teacher's training images or the test images the run is scored on.
"""

from pathlib import Path

import torch

from ..config import ConfigError
from . import sources
from .datamodule import fit_size, keep_classes, normalise

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Float images [N, C, H, W] converted to ``channels`` (1 or 3)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMINANCE, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    if have == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    raise ConfigError(f"proxy images have {have} channels and cannot be converted to the data's {channels}")


def _overlap(a, b) -> bool:
    """Whether two class subsets (None: every class) share a class."""
    return a is None or b is None or bool(set(a) & set(b))


def check_not_own_data(proxy, data_cfg):
    """Refuse a proxy that is the run's own dataset on a split and classes the teacher was
    trained on, or on the test split the run is scored on."""
    if proxy.name != data_cfg.name:
        return
    if proxy.name == "image_folder" and Path(proxy.root).resolve() != Path(data_cfg.root).resolve():
        return
    if proxy.split in ("train", "test") and _overlap(proxy.classes, data_cfg.classes):
        role = "the teacher's training data" if proxy.split == "train" else "the test split the run is scored on"
        raise ConfigError(
            f"proxy={proxy.name} split={proxy.split} is {role} (data={data_cfg.name}, classes "
            f"{data_cfg.classes or 'all'}): a proxy must be other images, e.g. another dataset, or "
            "disjoint classes of this one (proxy.classes=[...] beside data.classes=[...])"
        )


def load_proxy(proxy, data, seed: int = 0) -> torch.Tensor:
    """The proxy's images, as normalised inputs of ``data``'s shape: (N, C, H, W) floats."""
    if proxy.name != "image_folder" and proxy.name not in sources.LOADERS:
        raise ConfigError(f"proxy.name={proxy.name!r}: choose image_folder or one of {sorted(sources.LOADERS)}")
    try:
        if proxy.name == "image_folder":
            images, labels, _ = sources.image_folder(Path(proxy.root), proxy.split, data.channels, data.image_size)
        else:
            images, labels = sources.LOADERS[proxy.name](Path(proxy.root), proxy.split, proxy.download)
    except sources.DatasetUnavailable as err:  # its advice names data.root: the proxy has its own
        raise sources.DatasetUnavailable(f"proxy={proxy.name}: {err.args[0].replace('data.', 'proxy.')}") from err
    images, _ = keep_classes(images, labels, proxy.classes)
    if proxy.limit is not None:
        if proxy.limit < 1:
            raise ConfigError(f"proxy.limit must be >= 1 or null, got {proxy.limit}")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        images = images[order[: proxy.limit]]
    if len(images) == 0:
        raise ConfigError(f"proxy={proxy.name} split={proxy.split} classes={proxy.classes} holds no images")
    return normalise(fit_size(to_channels(images.float().div_(255), data.channels), data.image_size), data.mean, data.std)
