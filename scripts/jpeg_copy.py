"""A CIFAR-10 batch copy re-encoded as JPEG at a given quality: to measure how much a model's
accuracy depends on the compression of the copy it trains and is tested on.

The copy this machine has (``../shared/data``) is itself a JPEG re-encoding of CIFAR-10; its
teachers stop 4-5 points under what their recipes report on the original images. Training the
same recipe on this copy re-encoded once more, at lower qualities, shows how steeply accuracy
falls with compression here (docs/cifar10_cpu.md, "Is the copy the ceiling?").

    python scripts/jpeg_copy.py data /work/runs/jpeg_q50 --quality 50
    dfkd-train experiment=teacher_cifar10_cpu_airbench data.root=/work/runs/jpeg_q50

Both splits are re-encoded (as the copy's were), with Pillow's default 4:2:0 chroma subsampling.
"""

import argparse
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from dfkd_lab.data.sources import CIFAR_LAYOUTS, read_cifar_batches

FOLDER, TRAIN_FILES, TEST_FILES, LABEL_KEY = CIFAR_LAYOUTS["CIFAR10"]


def reencode(images: np.ndarray, quality: int) -> np.ndarray:
    """``uint8 [N, 3, H, W]`` images through one JPEG encode/decode at ``quality``."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    return out


def write_copy(source: Path, dest: Path, quality: int) -> int:
    """Re-encodes every batch file of ``source``'s CIFAR-10 layout into ``dest``'s; returns the
    number of images written. Labels and file names are kept, so ``data.root=dest`` reads it."""
    (dest / FOLDER).mkdir(parents=True, exist_ok=True)
    written = 0
    for name in TRAIN_FILES + TEST_FILES:
        images, labels = read_cifar_batches([source / FOLDER / name], LABEL_KEY)
        data = reencode(images.numpy(), quality).reshape(len(images), -1)
        with open(dest / FOLDER / name, "wb") as f:
            pickle.dump({"data": data, LABEL_KEY: labels.tolist()}, f)
        written += len(images)
    meta = source / FOLDER / "batches.meta"
    if meta.is_file():
        (dest / FOLDER / "batches.meta").write_bytes(meta.read_bytes())
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder holding cifar-10-batches-py/")
    parser.add_argument("dest", type=Path, help="where to write the re-encoded cifar-10-batches-py/")
    parser.add_argument("--quality", type=int, required=True, help="JPEG quality, 1-95")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality must be in 1..95, got {args.quality}")
    count = write_copy(args.source, args.dest, args.quality)
    print(f"{args.dest / FOLDER}: {count} images at JPEG quality {args.quality}")


if __name__ == "__main__":
    main()
