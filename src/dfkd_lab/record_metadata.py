"""Record Lopes-style activation metadata for an existing zoo teacher, in place.

    python -m dfkd_lab.record_metadata lenet5_fmnist [--data-root data] [--zoo-dir checkpoints]

One pass over the real training split; only ``metadata["activations"]`` of the entry's
``<name>.json`` changes, in the folder it was found in: the weights file and its sha256 stay as
they are.
"""

import argparse

from .build import entry_network
from .data import ClassificationData
from .synthesis.lopes import KEY, record_activation_stats
from .zoo import load_state, load_weights, zoo_entry


def record(name: str, data_root: str, zoo_dir: str) -> dict:
    entry = zoo_entry(name, zoo_dir)
    model = entry_network(entry, name)
    load_weights(model, load_state(entry.path(), entry.sha256, name), name)
    data = ClassificationData(name=entry.dataset, root=data_root, num_classes=entry.num_classes,
                              channels=entry.in_channels, image_size=entry.input_size,
                              mean=entry.mean, std=entry.std)
    images, labels = data.split("train").tensors
    entry.metadata[KEY] = record_activation_stats(model, images, labels, entry.num_classes)
    entry.save(entry.folder)
    return entry.metadata[KEY]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="zoo entry: a shipped teacher or <zoo-dir>/<name>.json")
    parser.add_argument("--data-root", default="data", help="as data.root (default: ./data)")
    parser.add_argument("--zoo-dir", default="checkpoints", help="as paths.zoo_dir (default: ./checkpoints)")
    args = parser.parse_args(argv)
    stats = record(args.name, args.data_root, args.zoo_dir)
    print(f"{args.name}: recorded {len(stats['layers'])} layers over {sum(stats['class_counts'])} training images")


if __name__ == "__main__":
    main()
