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


# The official python-pickle layout, as torchvision downloads it (and as make_cifar10.py writes
# an offline copy): pickled dicts of uint8 rows (N x 3072, channel-major) and int labels.
CIFAR_LAYOUTS = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def read_cifar_batches(files, label_key: str):
    """Concatenates pickled CIFAR batch files into ``(uint8 [N, 3, 32, 32], int64 [N])``."""
    import pickle

    data, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            blob = pickle.load(f, encoding="latin1")
        data.append(np.asarray(blob["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(blob[label_key])
    return torch.from_numpy(np.concatenate(data)), torch.as_tensor(labels, dtype=torch.int64)


def _cifar(cls_name: str, root: Path, split: str, download: bool):
    """A local copy is read directly (torchvision's class would refuse a re-encoded copy over
    its md5 sums); without one, torchvision downloads the official files into ``root``."""
    folder, train_files, test_files, label_key = CIFAR_LAYOUTS[cls_name]
    files = [Path(root) / folder / name for name in (train_files if split == "train" else test_files)]
    if not all(f.is_file() for f in files):
        if not download:
            raise DatasetUnavailable(
                f"{cls_name} not found in {Path(root) / folder} and data.download=false"
            )
        import torchvision.datasets

        _torchvision(getattr(torchvision.datasets, cls_name), root, split)
    return read_cifar_batches(files, label_key)


def cifar10(root: Path, split: str, download: bool = True):
    return _cifar("CIFAR10", root, split, download)


def cifar100(root: Path, split: str, download: bool = True):
    return _cifar("CIFAR100", root, split, download)


def image_folder_layout(root: Path, split: str = "train") -> tuple[list[str], int]:
    """The class folders of ``root/<split>`` and the channels of its images (1 for grayscale
    files, 3 otherwise), read from the first image, so a user's folder needs no shape options."""
    from PIL import Image

    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetUnavailable(
            f"data.root={root} has no '{split}' folder: expected {folder}/<class>/<image files>"
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DatasetUnavailable(
            f"data.root={root} has no class folders in '{split}': expected {folder}/<class>/<image files>"
        )
    first = next((f for c in classes for f in sorted((folder / c).iterdir()) if f.is_file()), None)
    if first is None:
        raise DatasetUnavailable(f"{folder} has class folders but no image files")
    try:
        with Image.open(first) as img:
            grayscale = img.mode in ("1", "L", "LA", "I", "I;16", "F")
    except OSError as err:
        raise DatasetUnavailable(f"cannot read image {first}: {err}") from err
    return classes, 1 if grayscale else 3


def image_folder(root: Path, split: str, channels: int, image_size: int):
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
