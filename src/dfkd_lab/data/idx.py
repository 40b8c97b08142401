"""Read the idx(.gz) files of MNIST-style datasets straight into tensors (no torchvision layout)."""

import gzip
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=_DTYPES[raw[2]], offset=4 + 4 * ndim)
    return torch.from_numpy(data.astype(np.int64 if ndim == 1 else np.uint8).reshape(dims))


def find_idx_split(folders, split: str):
    """Find ``{train,t10k}-{images,labels}`` (plain or .gz) in the first folder holding both."""
    prefix = "train" if split == "train" else "t10k"
    for folder in folders:
        folder = Path(folder)
        found = {}
        for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[kind] = folder / name
                    break
        if len(found) == 2:
            return found["images"], found["labels"]
    return None
