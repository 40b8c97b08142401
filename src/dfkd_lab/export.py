"""What a run delivers: its trained network as a zoo entry in the run dir.

A teacher run exports the teacher (``method=teacher``, see ``methods/supervised.py``); every other
run that finishes exports its student the same way, ``<arch>_<dataset>_<method>.pt`` (the state
dict) beside its ``.json`` entry (architecture, normalisation, test accuracy, command, sha256), so
``teacher.ckpt=`` or :func:`load_network` rebuilds it. A quantised student is exported as what it
is for: its int8 model, as TorchScript (``..._int8.pt``), which plain ``torch.jit.load`` runs on
a CPU without dfkd-lab or the architecture's code.
"""

import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from .atomic import atomic_write, save_torch
from .build import entry_network
from .config import network_name
from .data.datamodule import fit_size, normalise
from .provenance import run_command
from .zoo import (
    QUANTISED,
    TeacherError,
    ZooEntry,
    check_sha256,
    load_state,
    load_weights,
    sha256,
    sidecar_entry,
)


def network_record(spec, data) -> dict:
    """The entry fields that say what ``spec``'s network is and what inputs it takes."""
    return {
        "arch": network_name(spec), "dataset": data.name, "num_classes": data.num_classes,
        "in_channels": data.channels, "input_size": data.image_size,
        "mean": list(data.mean), "std": list(data.std), "command": run_command(),
        # a network of one's own is rebuilt from its spec (its module must be importable)
        "model": OmegaConf.to_container(spec.model, resolve=True) if spec.get("model") else None,
    }


def _entry(folder, name: str, record: dict, test_acc: float | None, metadata: dict) -> ZooEntry:
    """The ``.json`` beside ``folder/<name>.pt``, once the weights are written."""
    weights = Path(folder) / f"{name}.pt"
    entry = ZooEntry(name=name, **record, file=weights.name, sha256=sha256(weights),
                     test_acc=None if test_acc is None else round(test_acc, 4), metadata=metadata)
    entry.save(Path(folder))
    entry.folder = Path(folder)
    return entry


def save_entry(model: nn.Module, folder, name: str, record: dict, test_acc: float | None,
               metadata=None) -> ZooEntry:
    """``folder/<name>.pt`` (the state dict, on the CPU) and ``folder/<name>.json``."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    save_torch(Path(folder) / f"{name}.pt", state, "network weights")
    return _entry(folder, name, record, test_acc, metadata or {})


def save_quantised(model: nn.Module, folder, name: str, record: dict, test_acc: float | None, bits: int) -> ZooEntry:
    """``folder/<name>.pt``: the int8 model as TorchScript, beside its ``.json`` entry."""
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; torch.export cannot save int8 FX models
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
        atomic_write(Path(folder) / f"{name}.pt", lambda tmp: torch.jit.save(scripted, str(tmp)), "int8 model")
    return _entry(folder, name, record, test_acc, {QUANTISED: bits})


def export_student(cfg, data, module, output_dir, metrics: dict) -> ZooEntry:
    """The finished run's student in its run dir; ``metrics`` gains ``export/student``, the file's
    name (the run dir holds it, wherever the dir is moved)."""
    record = network_record(cfg.student, data)
    name = f"{record['arch']}_{data.name}_{cfg.method.name}"
    quantised = module.quantised_student()
    if quantised is None:
        entry = save_entry(module.student, output_dir, name, record, metrics.get("test/acc"))
    else:
        model, bits = quantised
        entry = save_quantised(model, output_dir, f"{name}_int8", record, metrics.get("test/acc_int8"), bits)
    metrics["export/student"] = entry.file
    return entry


def prepare_inputs(images: torch.Tensor, entry: ZooEntry) -> torch.Tensor:
    """Images (N x C x H x W, values in [0, 1]) as the network was trained and tested on them:
    fitted to ``entry.input_size`` as the data module does (28x28 digits are zero-padded to 32,
    other sizes resized bilinearly), then normalised with the entry's mean and std."""
    return normalise(fit_size(images.float(), entry.input_size), entry.mean, entry.std)


def load_network(path) -> tuple[nn.Module, ZooEntry]:
    """The network a run exported, in eval mode on the CPU, and its entry; ``path`` is the
    weights file or its ``.json``. Feed it ``prepare_inputs(images, entry)``."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".pt")
    if not path.is_file():
        raise TeacherError(f"{path}: no such file")
    entry = sidecar_entry(path, key=None)
    if entry is None:
        raise TeacherError(f"{path}: no {path.with_suffix('.json').name} beside it, so its architecture and "
                           "normalisation are unknown; give a file a run exported")
    if QUANTISED in entry.metadata:
        check_sha256(path, entry.sha256, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu").eval(), entry
    model = entry_network(entry, str(path))
    load_weights(model, load_state(path, entry.sha256, None), str(path))
    return model.eval(), entry
