"""Real image data, in memory, offline-first.

Data-free runs build the datamodule with ``train_split=False``: the training split is then
never read from disk, and asking for it is an error.
"""

from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..config import ConfigError
from . import sources
from .augment import crop_flip


class TrainSplitForbidden(RuntimeError):
    pass


def keep_classes(images: torch.Tensor, labels: torch.Tensor, classes):
    """Only the images of ``classes`` (None: all), relabelled 0..len(classes)-1 in that order
    (``data.classes``: a teacher of five CIFAR-10 classes, the other five as its proxy)."""
    if classes is None:
        return images, labels
    wanted = torch.as_tensor(list(classes), dtype=torch.int64)
    keep = torch.isin(labels, wanted)
    relabel = torch.full((max(int(labels.max()), int(wanted.max())) + 1,), -1, dtype=torch.int64)
    relabel[wanted] = torch.arange(len(wanted))
    return images[keep], relabel[labels[keep]]


def fit_size(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Pad by an even margin (28x28 digits -> 32x32 LeNet input), else resize bilinearly."""
    pad = image_size - x.shape[-1]
    if pad > 0 and pad % 2 == 0:
        return F.pad(x, (pad // 2,) * 4)
    if x.shape[-1] != image_size:
        return F.interpolate(x, size=image_size, mode="bilinear", align_corners=False)
    return x


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of an N x C x H x W batch."""
    return (x - torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)) / torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)


def _collate(samples, pad, flip):
    images = torch.stack([s[0] for s in samples])
    labels = torch.stack([s[1] for s in samples])
    return crop_flip(images, pad, flip), labels


class ClassificationData(pl.LightningDataModule):
    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int,
        channels: int,
        image_size: int,
        mean=None,
        std=None,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        crop_pad: int = 0,
        flip: bool = False,
        num_workers: int = 0,
        download: bool = True,
        train_split: bool = True,
        classes=None,
    ):
        super().__init__()
        if name != "image_folder" and name not in sources.LOADERS:
            raise KeyError(f"data.name={name!r}: choose image_folder or one of {sorted(sources.LOADERS)}")
        self.name, self.root = name, Path(root)
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.mean, self.std = mean, std
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop_pad, self.flip, self.num_workers = crop_pad, flip, num_workers
        self.download, self.train_split = download, train_split
        self.class_subset = list(classes) if classes is not None else None  # data.classes
        self.classes: list[str] | None = None  # an image folder's class names
        self._splits: dict[str, TensorDataset] = {}

    @property
    def image_shape(self):
        return (self.channels, self.image_size, self.image_size)

    def _raw(self, split):
        if self.name == "image_folder":
            images, labels, self.classes = sources.image_folder(
                self.root, split, self.channels, self.image_size
            )
            if len(self.classes) != self.num_classes:
                raise ConfigError(
                    f"{self.root}/{split} has {len(self.classes)} class folders but "
                    f"data.num_classes={self.num_classes}: set data.num_classes={len(self.classes)}"
                )
            return images, labels
        return sources.LOADERS[self.name](self.root, split, self.download)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[1] != self.channels:
            raise ConfigError(f"{self.name} images have {x.shape[1]} channels, data.channels={self.channels}")
        x = fit_size(x, self.image_size)
        if self.mean is None or self.std is None:  # image_folder without given stats
            self.mean = x.mean(dim=(0, 2, 3)).tolist()
            self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        return normalise(x, self.mean, self.std)

    def split(self, split: str) -> TensorDataset:
        if split == "train" and not self.train_split:
            raise TrainSplitForbidden("this is a data-free run: the real training split must not be used")
        if split not in self._splits:
            if split == "test" and self.train_split and (self.mean is None or self.std is None):
                self.split("train")  # statistics come from the training images
            images, labels = keep_classes(*self._raw(split), self.class_subset)
            if len(labels) == 0:
                raise sources.DatasetUnavailable(f"{self.name} {split} split at {self.root} is empty")
            self._splits[split] = TensorDataset(self._prepare(images), labels)
        return self._splits[split]

    def setup(self, stage=None):
        if self.train_split:
            images = len(self.split("train"))
            if images < self.batch_size:  # the last incomplete batch is dropped: not one batch would train
                raise ConfigError(f"{self.name} train split at {self.root} has {images} images, fewer than "
                                  f"data.batch_size={self.batch_size}: set data.batch_size={images} or less")
        self.split("test")

    def train_dataloader(self):
        return DataLoader(
            self.split("train"),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=partial(_collate, pad=self.crop_pad, flip=self.flip),
        )

    def test_dataloader(self):
        """The real test split in a fixed shuffled order: test files are often sorted by class
        (CIFAR's local copy, every image folder), and a limited evaluation
        (``trainer.limit_val_batches``, ``limit_test_batches``) must see every class, not the first few."""
        test = self.split("test")
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0)).tolist()
        return DataLoader(test, batch_size=self.eval_batch_size, sampler=order, num_workers=self.num_workers)

    def val_dataloader(self):
        """The field evaluates on the real test split; validation therefore uses it too, in the
        same order, so that a validation and the test limited alike see the same images."""
        return self.test_dataloader()

    @property
    def value_range(self):
        """Per-channel (low, high) of valid normalised pixels, for clipping synthetic images."""
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return (0 - mean) / std, (1 - mean) / std
