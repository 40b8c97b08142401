"""Training on real labels: teachers (exported as zoo entries), and the from-scratch reference."""

import shutil
from pathlib import Path

from omegaconf import OmegaConf
from torch.nn import functional as F

from ..atomic import atomic_write, save_torch
from ..config import ConfigError, network_name
from ..provenance import run_command
from ..synthesis.lopes import KEY, record_activation_stats
from ..zoo import ZooEntry, sha256, zoo_names
from .base import DistillationModule


class SupervisedTraining(DistillationModule):
    loss_terms = ("ce",)

    @classmethod
    def config_blocks(cls, method) -> tuple:
        return ("export",) if method.trains == "teacher" else ()

    @classmethod
    def from_config(cls, cfg, student, teacher, data):
        module = cls(student, cfg.method, cfg.loss, data.num_classes, teacher)
        if cfg.method.trains == "teacher":
            if cfg.method.export.zoo_name in zoo_names(cfg.paths.zoo_dir):
                raise ConfigError(
                    f"method.export.zoo_name={cfg.method.export.zoo_name}: that zoo entry already exists (shipped, or "
                    f"in paths.zoo_dir={cfg.paths.zoo_dir}) and would be overwritten; pick another name, "
                    "or delete that entry first to replace it (the run dir always gets its own copy)"
                )
            module.zoo_dir = Path(cfg.paths.zoo_dir)
            name = network_name(cfg.teacher)
            module.zoo_entry = {
                "name": cfg.method.export.zoo_name or f"{name}_{data.name}",
                "arch": name, "dataset": data.name, "num_classes": data.num_classes,
                "in_channels": data.channels, "input_size": data.image_size,
                "mean": list(data.mean), "std": list(data.std), "command": run_command(),
                # a network of one's own is rebuilt from its spec (its module must be importable)
                "model": OmegaConf.to_container(cfg.teacher.model, resolve=True) if cfg.teacher.model else None,
            }
            if cfg.method.export.record_metadata:
                module.metadata_split = data.split("train")
        return module

    def training_step(self, batch, batch_idx):
        x, y = batch
        ce = F.cross_entropy(self.student(x), y)
        loss = ce * self.weights["ce"]
        self.check_finite({"ce": ce}, "the training step", total=loss)
        self.log("train/ce", ce, prog_bar=True)
        return loss

    def record_metadata(self) -> dict:
        """Lopes-style activation statistics over one pass of the training split, when asked."""
        if not hasattr(self, "metadata_split"):
            return {}
        images, labels = self.metadata_split.tensors
        return {KEY: record_activation_stats(self.student, images, labels, self.zoo_entry["num_classes"])}

    def on_run_end(self, output_dir, metrics):
        """A trained teacher becomes a zoo entry in the run dir (and in ``paths.zoo_dir`` when
        ``method.export.zoo_name`` is set)."""
        if not hasattr(self, "zoo_entry"):
            return
        name = self.zoo_entry["name"]
        weights = Path(output_dir) / f"{name}.pt"
        save_torch(weights, {k: v.cpu() for k, v in self.student.state_dict().items()}, "teacher weights")
        entry = ZooEntry(**self.zoo_entry, file=weights.name, sha256=sha256(weights),
                         test_acc=round(metrics.get("test/acc", 0.0), 4), metadata=self.record_metadata())
        entry.save(Path(output_dir))
        if self.method.export.zoo_name:
            atomic_write(self.zoo_dir / weights.name, lambda tmp: shutil.copy(weights, tmp), "teacher weights")
            entry.save(self.zoo_dir)
