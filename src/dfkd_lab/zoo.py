"""Teacher checkpoints: each entry says what the weights are, how they were made, and their hash.

An entry is ``<name>.json`` beside ``<name>.pt``, in one of two folders: the teachers shipped
inside the package (read through importlib.resources, never written) and the user's own zoo,
``paths.zoo_dir`` (``./checkpoints`` of the current directory by default), where
``method=teacher method.export.zoo_name=NAME`` publishes. A name means one entry: it may not be in both.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write

# pip installs a wheel as plain files, so the package's resources are a real folder.
SHIPPED_CHECKPOINTS = Path(str(resources.files(__package__) / "checkpoints"))


class TeacherError(RuntimeError):
    """A teacher that cannot be used as configured; the message names the key to fix."""


#: ``metadata`` key of an entry whose file is a quantised student's int8 TorchScript model: its bits
QUANTISED = "quantised_bits"


@dataclass
class ZooEntry:
    name: str
    arch: str
    dataset: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: list
    std: list
    file: str
    sha256: str
    test_acc: float | None  # None: the run that made it did not test it (test=false)
    command: str
    metadata: dict = field(default_factory=dict)  # e.g. recorded activation statistics (Lopes)
    model: dict | None = None  # a network of one's own: its _target_ spec (arch is then its class name)
    folder: Path | None = field(default=None, compare=False)  # where it was read from; not saved

    def path(self) -> Path:
        return self.folder / self.file

    def save(self, folder: Path):
        entry = {k: v for k, v in asdict(self).items() if k != "folder"}
        text = json.dumps(entry, indent=2) + "\n"
        atomic_write(Path(folder) / f"{self.name}.json", lambda tmp: tmp.write_text(text), "zoo entry")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def zoo_folders(user_dir=None) -> list[Path]:
    """The shipped teachers, then ``user_dir`` (``paths.zoo_dir``) when given."""
    return [SHIPPED_CHECKPOINTS] + ([Path(user_dir)] if user_dir is not None else [])


def zoo_names(user_dir=None) -> list[str]:
    return sorted({p.stem for folder in zoo_folders(user_dir) for p in folder.glob("*.json")})


def zoo_entry(name: str, user_dir=None) -> ZooEntry:
    found = [f / f"{name}.json" for f in zoo_folders(user_dir) if (f / f"{name}.json").is_file()]
    if not found:
        raise TeacherError(f"teacher.zoo={name!r} is not in the zoo (the shipped teachers or "
                           f"paths.zoo_dir={user_dir}); known entries: {zoo_names(user_dir)}")
    if len(found) > 1:
        raise TeacherError(f"teacher.zoo={name!r} is both a shipped teacher and {found[1]}: rename "
                           f"the one in paths.zoo_dir (its .json name and \"name\" field)")
    entry = ZooEntry(**json.loads(found[0].read_text()))
    if entry.name != name:
        raise TeacherError(
            f"teacher.zoo={name}: {found[0]} says \"name\": {entry.name!r}; an entry is found by its file name, "
            f"so set its \"name\" to {name!r} (and its \"file\" to the weights file beside it, {entry.file!r} now)"
        )
    entry.folder = found[0].parent
    return entry


def sidecar_entry(weights: Path, key: str | None = "teacher.ckpt") -> ZooEntry | None:
    """The zoo entry written beside a weights file (``NAME.json`` next to ``NAME.pt``, as
    ``method=teacher`` exports them), so a checkpoint carries its arch and normalisation. ``key``:
    the config key that named the file, if one did."""
    path = Path(weights).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        entry = ZooEntry(**json.loads(path.read_text()))
    except (TypeError, ValueError) as err:
        raise TeacherError(f"{f'{key}=' if key else ''}{weights}: {path} beside it is not a zoo entry ({err}); "
                           "remove or fix it") from err
    entry.folder = path.parent
    return entry


def refuse_quantised(entry: ZooEntry, key: str):
    """A quantised student cannot be a teacher: its file is an int8 TorchScript model."""
    if QUANTISED in entry.metadata:
        raise TeacherError(
            f"{key}: {entry.path()} is a student quantised to {entry.metadata[QUANTISED]} bits (int8 TorchScript), "
            "which a run cannot distil from; load it with torch.jit.load, or give a float network (e.g. the "
            "student of a run of the same method with method.dfq.quant_bits=0)"
        )


def load_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one sentence: torch's own message
    also offers to load it unsafely, which a teacher file never needs."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split(". Please", 1)[0].strip()
        return (f"it holds Python objects, not only tensors ({reason}); save the network's state dict "
                "instead: torch.save(model.state_dict(), path)")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def by(key: str | None) -> str:
    """A message's opening: the config key that named the file, if one did."""
    return f"{key}: " if key else ""


def check_sha256(path: Path, expected: str | None, key: str | None):
    """A file whose sha256 is not the one its entry records was replaced or corrupted. ``key``: the
    config key that named the file (its messages start with it), None for a library call."""
    actual = sha256(path) if expected else None
    if expected and actual != expected:
        raise TeacherError(
            f"{by(key)}{path} has sha256 {actual}, expected {expected} (file corrupt or replaced; "
            + ("restore it or set teacher.sha256=null to accept it)" if key in ("teacher.ckpt", "teacher.zoo")
               else "restore it, or export it again)")
        )


def load_state(path: Path, expected_sha256: str | None, key: str | None) -> dict:
    if not path.is_file():
        raise TeacherError(f"{by(key)}checkpoint file {path} does not exist")
    check_sha256(path, expected_sha256, key)
    if path.stat().st_size == 0:
        raise TeacherError(f"{by(key)}{path} is empty (0 bytes); give a saved state dict or checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TeacherError(f"{by(key)}cannot read {path} as a checkpoint torch.save wrote: {load_failure(err)}") from err
    if isinstance(state, dict) and "state_dict" in state:
        # A Lightning checkpoint of this project: its trained network is the `student.` part.
        full = state["state_dict"]
        state = {k.removeprefix("student."): v for k, v in full.items() if k.startswith("student.")} or full
    if not isinstance(state, dict):
        raise TeacherError(f"{by(key)}{path} holds a {type(state).__name__}, not a state dict "
                           "(save one with torch.save(model.state_dict(), path))")
    broken = next((k for k, v in state.items()
                   if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise TeacherError(f"{by(key)}{path} holds NaN/inf weights (first in {broken}): it was saved from a "
                           "run that diverged; train the teacher again or give another file")
    return state


def load_weights(model: nn.Module, state: dict, key: str):
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise TeacherError(f"{key}: weights do not fit {type(model).__name__}: {err}") from err


def freeze(model: nn.Module) -> nn.Module:
    """A frozen teacher: eval mode (BN uses running statistics), no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_classes(model: nn.Module, num_classes: int, key: str):
    head = getattr(model, "classifier", None)
    out = getattr(head, "out_features", None)
    if out is not None and out != num_classes:
        raise TeacherError(
            f"{key}: the teacher predicts {out} classes but data.num_classes={num_classes}; "
            "pick a teacher trained on this dataset"
        )
