"""Files written so that an interruption or a full disk never damages what is on disk.

Everything goes to ``<name>.tmp`` first and is renamed over the target only once complete:
a killed process leaves the previous file whole, and a failed write (disk full, read-only
folder) removes its temporary file and stops the run with a message naming the file.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch


class DiskWriteError(OSError):
    """A result file could not be written; the earlier files are intact."""


def atomic_write(path, write: Callable[[Path], None], what: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise DiskWriteError(
            f"could not write the {what} {path} ({err}); the files already in {path.parent} are intact. "
            "Free disk space (or make the folder writable), then continue with "
            "dfkd-train resume=<the run dir>"
        ) from err


def save_json(path, data: dict, what: str = "file"):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"), what)


def save_torch(path, obj, what: str = "file"):
    atomic_write(path, lambda tmp: torch.save(obj, tmp), what)
