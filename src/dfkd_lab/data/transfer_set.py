"""Transfer sets on disk: synthesise once, distil many students (``method=kd_transfer``).

A set is a folder of ``shard_00000.pt, shard_00001.pt, ...`` (one synthesised batch each:
uint8 images in [0, 255] mapped onto the normalised pixel range, and soft targets where the
method stores them) and a ``manifest.json`` naming the teacher (sha256), dataset, method
config, seed, image count and synthesis cost. Every file is written to a temporary name and
renamed, so an interrupted run leaves only whole shards; a resumed run keeps them and
continues the numbering. The shards on disk, not the manifest, are the truth when reading.
"""

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..atomic import save_json, save_torch
from ..config import ConfigError
from ..zoo import sha256, zoo_entry

MANIFEST = "manifest.json"
FORMAT = 1


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


def encode(images: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Normalised images -> uint8 pixels (what a real image file would hold)."""
    x01 = (images.float().cpu() - low.cpu()) / (high.cpu() - low.cpu())
    return (x01 * 255).round().clamp(0, 255).to(torch.uint8)


def decode(pixels: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return low + pixels.float() / 255 * (high - low)


class TransferSetWriter:
    """Appends shards to ``folder`` and keeps its manifest current."""

    def __init__(self, folder: Path, info: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        old = self.folder / MANIFEST
        previous = json.loads(old.read_text()) if old.is_file() else {}
        if previous and previous.get("teacher_sha256") != info.get("teacher_sha256"):
            raise ConfigError(
                f"{self.folder} holds a transfer set made by another teacher "
                f"(sha256 {previous.get('teacher_sha256')}); resume with the same teacher or use a new run dir"
            )
        self.info = info
        shards = _shards(self.folder)
        self.next_index = int(shards[-1].stem.split("_")[1]) + 1 if shards else 0
        # shards written after the last manifest update (an interruption) are counted too
        known = previous.get("shards", {})
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
        shard = {"images": encode(images, low, high),
                 "soft_targets": soft_targets.detach().float().cpu() if soft_targets is not None else None}
        save_torch(self.folder / name, shard, "transfer-set shard")
        self.next_index += 1
        self.counts[name] = int(images.shape[0])
        manifest = {
            **self.info,
            "value_low": low.flatten().tolist(), "value_high": high.flatten().tolist(),
            "images": sum(self.counts.values()), "soft_targets": soft_targets is not None,
            "shards": self.counts, "cost": cost,
        }
        save_json(self.folder / MANIFEST, manifest, "transfer-set manifest")


def read_manifest(path) -> dict:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"transfer_set={path}: no {MANIFEST} there; point transfer_set at a run's transfer_set/ folder")
    return json.loads(manifest.read_text())


def load_transfer_set(path, expected_teacher_sha256: str | None):
    """All images (normalised) and soft targets of a saved set, after checking its teacher."""
    manifest = read_manifest(path)
    made_by = manifest.get("teacher_sha256")
    if made_by is None or expected_teacher_sha256 is None or made_by != expected_teacher_sha256:
        raise ConfigError(
            f"transfer_set={path} was made by teacher {manifest.get('teacher')} (sha256 {made_by}), but the "
            f"configured teacher has sha256 {expected_teacher_sha256}: set teacher= to the teacher the set "
            "was made with, or synthesise a set with this teacher"
        )
    shards = [torch.load(p, weights_only=True) for p in _shards(Path(path))]
    if not shards:
        raise ConfigError(f"transfer_set={path}: the set has no shards")
    low = torch.tensor(manifest["value_low"]).view(1, -1, 1, 1)
    high = torch.tensor(manifest["value_high"]).view(1, -1, 1, 1)
    images = decode(torch.cat([s["images"] for s in shards]), low, high)
    soft = torch.cat([s["soft_targets"] for s in shards]) if manifest["soft_targets"] else None
    return images, soft, manifest
