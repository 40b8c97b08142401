"""Where each dataset's raw images come from: a local copy first, torchvision's download otherwise.

Every loader returns ``(images uint8 [N, C, H, W], labels int64 [N])``.
"""

from pathlib import Path

import numpy as np
import torch

from .idx import find_idx_split, read_idx

# Debian's dataset-fashion-mnist installs the idx .gz files here.
SYSTEM_DATASETS = Path("/usr/share/datasets")


class DatasetUnavailable(RuntimeError):
    pass


def _idx_dataset(root: Path, local_names, torchvision_cls, split: str, download: bool):
    folders = [root / n for n in local_names] + [SYSTEM_DATASETS / n for n in local_names]
    folders += [root / torchvision_cls.__name__ / "raw"]
    found = find_idx_split(folders, split)
    if found is None:
        if not download:
            raise DatasetUnavailable(
                f"no local {torchvision_cls.__name__} {split} files in {[str(f) for f in folders]} "
                "and data.download=false"
            )
        ds = _torchvision(torchvision_cls, root, split)
        return ds.data.unsqueeze(1).to(torch.uint8), torch.as_tensor(ds.targets, dtype=torch.int64)
    images, labels = (read_idx(p) for p in found)
    return images.unsqueeze(1), labels


def _torchvision(cls, root: Path, split: str):
    try:
        return cls(str(root), train=split == "train", download=True)
    except Exception as err:  # network errors come in many types
        raise DatasetUnavailable(
            f"could not download {cls.__name__} into {root} ({err}); put a local copy there "
            "or set data.root to a folder that has one"
        ) from err


def fashion_mnist(root: Path, split: str, download: bool = True):
    from torchvision.datasets import FashionMNIST

    return _idx_dataset(root, ["fashion-mnist", "fashion_mnist"], FashionMNIST, split, download)


def mnist(root: Path, split: str, download: bool = True):
    from torchvision.datasets import MNIST

    return _idx_dataset(root, ["mnist"], MNIST, split, download)


def _cifar(cls, root: Path, split: str, download: bool):
    if not download:
        try:
            ds = cls(str(root), train=split == "train", download=False)
        except RuntimeError as err:
            raise DatasetUnavailable(f"{cls.__name__} not found in {root} and data.download=false") from err
    else:
        ds = _torchvision(cls, root, split)
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
    return images, torch.as_tensor(ds.targets, dtype=torch.int64)


def cifar10(root: Path, split: str, download: bool = True):
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, root, split, download)


def cifar100(root: Path, split: str, download: bool = True):
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, root, split, download)


def image_folder(root: Path, split: str, channels: int, image_size: int, download: bool = True):
    """``root/<split>/<class>/*``: every image converted to ``channels`` and resized."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetUnavailable(
            f"data.root={root} has no '{split}' folder: expected {folder}/<class>/<image files>"
        )
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetUnavailable(f"{folder} holds no readable images per class folder: {err}") from err
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path, _ in ds.samples:
        try:
            with Image.open(path) as img:
                img = img.convert(mode).resize((image_size, image_size))
        except OSError as err:
            raise DatasetUnavailable(f"cannot read image {path}: {err}") from err
        arr = np.asarray(img, dtype=np.uint8)
        images.append(torch.from_numpy(arr.reshape(image_size, image_size, channels).copy()))
    labels = torch.tensor([label for _, label in ds.samples], dtype=torch.int64)
    return torch.stack(images).permute(0, 3, 1, 2).contiguous(), labels, ds.classes


LOADERS = {
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
}
