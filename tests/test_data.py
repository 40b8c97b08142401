"""The idx reader, the local Fashion-MNIST copy, image folders, and the data-free guard."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dfkd_lab.config import ConfigError
from dfkd_lab.data import ClassificationData, TrainSplitForbidden, sources
from dfkd_lab.data.idx import read_idx

FMNIST = sources.SYSTEM_DATASETS / "fashion-mnist"


def idx_bytes(dtype_code, dims, payload: bytes) -> bytes:
    return bytes([0, 0, dtype_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_images_and_labels(tmp_path, suffix):
    opener = gzip.open if suffix else open
    images, labels = tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}"
    with opener(images, "wb") as f:
        f.write(idx_bytes(0x08, [2, 2, 3], bytes(range(12))))
    with opener(labels, "wb") as f:
        f.write(idx_bytes(0x08, [2], bytes([7, 1])))
    x = read_idx(images)
    assert x.dtype == torch.uint8 and x.shape == (2, 2, 3)
    assert x[1, 1].tolist() == [9, 10, 11]
    y = read_idx(labels)
    assert y.dtype == torch.int64 and y.tolist() == [7, 1]


def test_read_idx_rejects_a_bad_magic_number(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_local_fashion_mnist_is_found_without_download(tmp_path):
    images, labels = sources.fashion_mnist(tmp_path, "test", download=False)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert not any(tmp_path.iterdir())  # nothing downloaded or copied


def test_missing_dataset_without_download_names_the_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATASETS", tmp_path / "none")
    with pytest.raises(sources.DatasetUnavailable, match="data.download=false"):
        sources.fashion_mnist(tmp_path, "test", download=False)


def test_data_free_run_never_reads_the_training_split(tmp_path, monkeypatch):
    asked = []

    def fake_loader(root, split, download):
        asked.append(split)
        return torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4)

    monkeypatch.setitem(sources.LOADERS, "fashion_mnist", fake_loader)
    data = ClassificationData("fashion_mnist", str(tmp_path), 10, 1, 32, mean=[0.5], std=[0.5],
                              train_split=False)
    data.setup("fit")
    data.test_dataloader()
    with pytest.raises(TrainSplitForbidden):
        data.train_dataloader()
    assert asked == ["test"]
    assert data.split("test").tensors[0].shape == (4, 1, 32, 32)  # 28x28 padded to 32x32


def write_folder(root, classes=("cat", "dog"), per_class=3, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_resizes_converts_and_normalises(tmp_path, channels):
    write_folder(tmp_path)
    data = ClassificationData("image_folder", str(tmp_path), 2, channels, 16, batch_size=6)
    data.setup("fit")
    x, y = data.split("train").tensors
    assert x.shape == (6, channels, 16, 16)
    assert data.classes == ["cat", "dog"] and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    # mean/std were measured on the training images, so those come out standardised
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert x.std(dim=(0, 2, 3)).sub(1).abs().max() < 1e-2
    assert data.split("test").tensors[0].shape == (6, channels, 16, 16)


def test_image_folder_class_count_mismatch_names_the_key(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ConfigError, match="data.num_classes=2"):
        ClassificationData("image_folder", str(tmp_path), 5, 3, 16).setup("fit")


def test_fewer_training_images_than_a_batch_is_refused_naming_the_key(tmp_path):
    """The incomplete last batch is dropped, so 6 images in batches of 8 would never train."""
    write_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"has 6 images, fewer than data.batch_size=8: set data.batch_size=6"):
        ClassificationData("image_folder", str(tmp_path), 2, 3, 16, batch_size=8).setup("fit")
    ClassificationData("image_folder", str(tmp_path), 2, 3, 16, batch_size=6).setup("fit")


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_image_folder_is_a_clear_error(tmp_path, case):
    if case == "empty":
        (tmp_path / "train").mkdir()
    if case == "unreadable":
        (tmp_path / "train" / "cat").mkdir(parents=True)
        (tmp_path / "train" / "cat" / "0.png").write_bytes(b"not a png")
    message = {"missing": "no 'train' folder", "empty": "no readable images", "unreadable": "cannot read image"}
    with pytest.raises(sources.DatasetUnavailable, match=message[case]):
        ClassificationData("image_folder", str(tmp_path), 2, 3, 16).setup("fit")


def test_mixup_blends_each_image_and_its_soft_targets_with_one_weight():
    from dfkd_lab.data.augment import mixup

    # image i is the constant i and its soft target is one-hot on class i, so a blend of images
    # i and j with weight w is the constant w*i + (1-w)*j and its target puts w on i, 1-w on j
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 3).clone()
    soft = torch.eye(4)
    mixed, mixed_soft = mixup(x, soft, generator=torch.Generator().manual_seed(3))
    assert mixed.shape == x.shape and mixed_soft.shape == soft.shape
    assert torch.allclose(mixed, mixed[:, :, :1, :1].expand_as(mixed))  # still constant images
    torch.testing.assert_close(mixed[:, 0, 0, 0], mixed_soft @ torch.arange(4.0))
    torch.testing.assert_close(mixed_soft.sum(1), torch.ones(4))
    assert ((mixed_soft > 0).sum(1) <= 2).all()
    assert not torch.equal(mixed, x)
    again, _ = mixup(x, soft, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, mixed)


def write_cifar_batch(path, images: np.ndarray, labels: list, label_key: str):
    """A batch file in the official pickled layout: uint8 rows of 3072 values, channel-major."""
    import pickle

    blob = {"batch_label": "generated", "data": images.reshape(len(images), -1), label_key: labels}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(blob))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_reads_the_official_batch_layout_without_download(tmp_path, name, monkeypatch):
    folder, train_files, test_files, label_key = sources.CIFAR_LAYOUTS[name.upper()]
    rng = np.random.default_rng(0)
    written = {}
    for i, fname in enumerate(train_files + test_files):
        images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
        write_cifar_batch(tmp_path / folder / fname, images, [i, i + 1, 9 - i], label_key)
        written[fname] = images
    monkeypatch.setattr(sources, "_torchvision", lambda *a: pytest.fail("must not download"))
    x, y = sources.LOADERS[name](tmp_path, "train", download=True)
    assert x.dtype == torch.uint8 and x.shape == (3 * len(train_files), 3, 32, 32)
    assert torch.equal(x[:3], torch.from_numpy(written[train_files[0]]))  # channel-major rows
    assert y[:3].tolist() == [0, 1, 9]
    x, y = sources.LOADERS[name](tmp_path, "test", download=False)
    assert torch.equal(x, torch.from_numpy(written[test_files[0]]))


def test_missing_cifar_without_download_names_the_folder(tmp_path):
    with pytest.raises(sources.DatasetUnavailable, match="cifar-10-batches-py"):
        sources.cifar10(tmp_path, "train", download=False)


def test_a_limited_validation_of_a_class_sorted_test_split_sees_every_class(tmp_path):
    """CIFAR's local test batch is sorted by class: the first evaluation batches must still mix them,
    validation and test see the images in one fixed order, and the whole split is evaluated."""
    labels = [c for c in range(10) for _ in range(20)]  # 200 images, sorted by class
    images = np.random.default_rng(0).integers(0, 256, (200, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", images, labels, "labels")
    data = ClassificationData("cifar10", str(tmp_path), 10, 3, 32, mean=[0.5] * 3, std=[0.25] * 3,
                              eval_batch_size=40, download=False, train_split=False)
    data.setup()
    first_val = next(iter(data.val_dataloader()))[1]
    assert len(first_val) == 40 and len(set(first_val.tolist())) >= 8
    assert torch.equal(next(iter(data.test_dataloader()))[1], first_val)
    val_labels = torch.cat([y for _, y in data.val_dataloader()])
    assert sorted(val_labels.tolist()) == labels
    again = torch.cat([y for _, y in data.val_dataloader()])
    assert torch.equal(val_labels, again)  # the same order at every evaluation
