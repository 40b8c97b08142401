"""Training on real labels: teachers (exported as zoo entries), and the from-scratch reference."""

import shutil
from pathlib import Path

from ..atomic import atomic_write
from ..config import ConfigError
from ..export import network_record, save_entry
from ..losses.registry import compute_terms
from ..losses.weighting import weighted_sum
from ..synthesis.lopes import KEY, record_activation_stats
from ..zoo import zoo_names
from .base import DistillationModule

#: training images a network's data-dependent layer is fitted to before training starts
FIT_IMAGES = 5000


class SupervisedTraining(DistillationModule):
    loss_terms = ("ce",)

    @classmethod
    def config_blocks(cls, method) -> tuple:
        return ("export",) if method.trains == "teacher" else ()

    @classmethod
    def from_config(cls, cfg, student, teacher, data):
        module = cls(student, cfg.method, cfg.loss, data.num_classes, teacher)
        if hasattr(student, "fit_to_images"):  # a layer set from the data (AirBench's whitening)
            student.fit_to_images(data.split("train").tensors[0][:FIT_IMAGES])
        if cfg.method.trains == "teacher":
            if cfg.method.export.zoo_name in zoo_names(cfg.paths.zoo_dir):
                raise ConfigError(
                    f"method.export.zoo_name={cfg.method.export.zoo_name}: that zoo entry already exists (shipped, or "
                    f"in paths.zoo_dir={cfg.paths.zoo_dir}) and would be overwritten; pick another name, "
                    "or delete that entry first to replace it (the run dir always gets its own copy)"
                )
            module.zoo_dir = Path(cfg.paths.zoo_dir)
            module.zoo_record = network_record(cfg.teacher, data)
            module.zoo_name = cfg.method.export.zoo_name or f"{module.zoo_record['arch']}_{data.name}"
            if cfg.method.export.record_metadata:
                module.metadata_split = data.split("train")
        return module

    def training_step(self, batch, batch_idx):
        x, y = batch
        terms = compute_terms(self.loss_terms, self.weights, {
            "student_logits": self.student(x), "labels": y, "label_smoothing": self.loss_cfg.label_smoothing})
        loss = weighted_sum(terms, self.weights)
        self.check_finite(terms, "the training step", total=loss)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True)
        return loss

    def record_metadata(self) -> dict:
        """Lopes-style activation statistics over one pass of the training split, when asked."""
        if not hasattr(self, "metadata_split"):
            return {}
        images, labels = self.metadata_split.tensors
        return {KEY: record_activation_stats(self.student, images, labels, self.zoo_record["num_classes"])}

    def on_run_end(self, output_dir, metrics):
        """A trained teacher becomes a zoo entry in the run dir (and in ``paths.zoo_dir`` when
        ``method.export.zoo_name`` is set)."""
        if not hasattr(self, "zoo_record"):
            return
        entry = save_entry(self.student, output_dir, self.zoo_name, self.zoo_record, metrics.get("test/acc"),
                           self.record_metadata())
        metrics["export/teacher"] = entry.file
        if self.method.export.zoo_name:
            weights = entry.path()
            atomic_write(self.zoo_dir / weights.name, lambda tmp: shutil.copy(weights, tmp), "teacher weights")
            entry.save(self.zoo_dir)
