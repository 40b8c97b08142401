"""Transfer sets on disk: synthesise once, distil many students (``method=kd_transfer``).

A set is a folder of ``shard_00000.pt, shard_00001.pt, ...`` (one synthesised batch each:
the normalised float32 images exactly as the run's image pool holds them, and soft targets
where the method stores them) and a ``manifest.json`` naming the teacher (sha256), dataset,
method config, seed, image count and synthesis cost. The shards are also where a run's pool
lives between a checkpoint and its resume (synthesis/pool.py): a checkpoint records how many
shards are valid, and the resumed run re-reads them, bit for bit. Every file is written to a
temporary name and renamed, so an interrupted run leaves only whole shards; a resumed run
keeps the shards its checkpoint counted, removes the ones made after it (it makes them again)
and continues the numbering. The shards on disk, not the manifest, are the truth when reading.
Sets written before format 2 hold uint8 pixels mapped onto the normalised range; they still load.
"""

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..atomic import save_json, save_torch
from ..config import ConfigError
from ..zoo import sha256, zoo_entry

MANIFEST = "manifest.json"
FORMAT = 2  # 1: uint8 pixels; 2: the pool's float32 images


def teacher_sha256(cfg) -> str | None:
    """The sha256 of the teacher's weights file as the run configured it."""
    t = cfg.teacher
    if t.ckpt:
        return sha256(Path(t.ckpt))
    if t.zoo:
        return zoo_entry(t.zoo, cfg.paths.zoo_dir).sha256
    return None


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard_*.pt"))


def shard_index(path: Path) -> int:
    return int(Path(path).stem.split("_")[1])


def decode(images: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A shard's images as normalised floats (format 1 stored uint8 pixels in [0, 255])."""
    if images.dtype != torch.uint8:
        return images
    return low + images.float() / 255 * (high - low)


class TransferSetWriter:
    """Appends shards to ``folder`` and keeps its manifest current."""

    def __init__(self, folder: Path, info: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.info = info
        self._read_folder()
        if self.manifest and self.manifest.get("teacher_sha256") != info.get("teacher_sha256"):
            raise ConfigError(
                f"{self.folder} holds a transfer set made by another teacher "
                f"(sha256 {self.manifest.get('teacher_sha256')}); resume with the same teacher or use a new run dir"
            )

    def _read_folder(self):
        """Take the shards and manifest on disk as they are (another process may have written them)."""
        manifest = self.folder / MANIFEST
        self.manifest = json.loads(manifest.read_text()) if manifest.is_file() else {}
        shards = _shards(self.folder)
        self.next_index = shard_index(shards[-1]) + 1 if shards else 0
        # shards written after the last manifest update (an interruption) are counted too
        known = self.manifest.get("shards", {})
        self.counts = {p.name: known.get(p.name) or int(torch.load(p, weights_only=True)["images"].shape[0])
                       for p in shards}

    @classmethod
    def for_run(cls, cfg) -> "TransferSetWriter":
        info = {
            "format": FORMAT,
            "teacher_sha256": teacher_sha256(cfg),
            "teacher": cfg.teacher.zoo or cfg.teacher.ckpt,
            "dataset": cfg.data.name,
            "method": OmegaConf.to_container(cfg.method, resolve=True),
            "seed": cfg.seed,
        }
        return cls(Path(cfg.paths.output_dir) / "transfer_set", info)

    def write(self, images, soft_targets, low, high, cost: dict):
        name = f"shard_{self.next_index:05d}.pt"
        shard = {"images": images.detach().float().cpu(),
                 "soft_targets": soft_targets.detach().float().cpu() if soft_targets is not None else None}
        save_torch(self.folder / name, shard, "transfer-set shard")
        self.next_index += 1
        self.counts[name] = int(images.shape[0])
        self.manifest = {
            **self.info,
            "value_low": low.flatten().tolist(), "value_high": high.flatten().tolist(),
            "soft_targets": soft_targets is not None, "cost": cost,
        }
        self._save_manifest()

    def truncate(self, shards: int):
        """Keep the first ``shards`` shards, those a checkpoint counted: a run killed after its
        last checkpoint wrote more, and the resumed run makes those images again."""
        extra = [path for path in _shards(self.folder) if shard_index(path) >= shards]
        for path in extra:
            path.unlink()
        self._read_folder()
        if extra and self.manifest:
            self._save_manifest()

    def _save_manifest(self):
        self.manifest.update(images=sum(self.counts.values()), shards=self.counts)
        save_json(self.folder / MANIFEST, self.manifest, "transfer-set manifest")

    def read(self, index: int, part: int = 0, parts: int = 1):
        """Shard ``index`` as (images, soft targets or None), cut into ``parts`` equal slices of
        which slice ``part`` is kept (under DDP a shard holds every rank's batch, in rank order)."""
        path = self.folder / f"shard_{index:05d}.pt"
        if not path.is_file():
            raise ConfigError(f"{path} is missing, but the checkpoint counts it: the image pool is rebuilt "
                              "from these shards on resume; restore the folder or start a new run without resume=")
        shard = torch.load(path, weights_only=True)
        rows = shard["images"].shape[0] // parts
        images, soft = shard["images"][part * rows:(part + 1) * rows], shard["soft_targets"]
        if images.dtype == torch.uint8:
            images = decode(images, *(torch.tensor(self.manifest[k]).view(1, -1, 1, 1)
                                      for k in ("value_low", "value_high")))
        return images, (soft[part * rows:(part + 1) * rows] if soft is not None else None)


def read_manifest(path) -> dict:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"transfer_set={path}: no {MANIFEST} there; point transfer_set at a run's transfer_set/ folder")
    return json.loads(manifest.read_text())


def load_transfer_set(path, expected_teacher_sha256: str | None, newest: int | None = None):
    """The images (normalised) and soft targets of a saved set, after checking its teacher: all
    of them, or the ``newest`` ones (only the shards that hold them are read)."""
    manifest = read_manifest(path)
    made_by = manifest.get("teacher_sha256")
    if made_by is None or expected_teacher_sha256 is None or made_by != expected_teacher_sha256:
        raise ConfigError(
            f"transfer_set={path} was made by teacher {manifest.get('teacher')} (sha256 {made_by}), but the "
            f"configured teacher has sha256 {expected_teacher_sha256}: set teacher= to the teacher the set "
            "was made with, or synthesise a set with this teacher"
        )
    shards, held = [], 0
    for shard_path in reversed(_shards(Path(path))):
        if newest is not None and held >= newest:
            break
        shards.insert(0, torch.load(shard_path, weights_only=True))
        held += shards[0]["images"].shape[0]
    if not shards:
        raise ConfigError(f"transfer_set={path}: the set has no shards")
    low = torch.tensor(manifest["value_low"]).view(1, -1, 1, 1)
    high = torch.tensor(manifest["value_high"]).view(1, -1, 1, 1)
    skip = held - newest if newest is not None and held > newest else 0
    images = torch.cat([decode(s["images"], low, high) for s in shards])[skip:]
    soft = torch.cat([s["soft_targets"] for s in shards])[skip:] if manifest["soft_targets"] else None
    return images, soft, manifest
