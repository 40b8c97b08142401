"""Reading W&B's offline run files, so a resumed offline run continues its step count.

Offline, W&B cannot ask a server where a resumed run stopped: each segment (``offline-run-*``
folder with the run's id) numbers its history rows (``_step``) from 0 again, and on upload its
rows would land on the steps the earlier segment's rows hold. The earlier segments' own files
say how far they got; the resumed segment starts after that.
"""

import struct
from pathlib import Path

BLOCK = 32768  # the file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers
HEADER = 7


def records_in(path: Path, kind: str) -> list:
    """The records of one kind (``history``, ``exit``, ``summary``, ...) in an offline run file,
    up to the first one W&B is still writing (or never finished: a killed run)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, payload, found = path.read_bytes(), HEADER, b"", []  # the file starts with its own header
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a record header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, record_kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if pos + HEADER + length > len(data):
            break
        payload, pos = payload + data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if record_kind in (1, 4):  # a whole record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            if record.WhichOneof("record_type") == kind:
                found.append(getattr(record, kind))
    return found


def steps_logged_before(run) -> int:
    """History rows the earlier offline segments of ``run`` (same id, same ``wandb/`` folder)
    wrote: the first step the resumed segment may use."""
    own = Path(run.dir).parent  # <save_dir>/wandb/offline-run-<time>-<id>/files
    last = -1
    for path in own.parent.glob(f"offline-run-*-{run.id}/run-{run.id}.wandb"):
        if path.parent != own:
            last = max([last, *(record.step.num for record in records_in(path, "history"))])
    return last + 1


def continue_steps(run):
    """Make ``run``'s next history row the one after its earlier offline segments' last."""
    start = steps_logged_before(run)
    if start:  # a new segment's counter is at 0
        run.log({}, step=start, commit=False)  # moves the row counter; the next log fills row ``start``
