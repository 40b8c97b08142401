"""Distillation with real data: response, feature (hint), relation (FSP) and attention terms."""


import torch
from torch import nn

from ..losses.registry import Lazy, compute_terms, reads
from ..losses.weighting import weighted_sum
from ..models.modes import eval_mode
from ..models.taps import stage_tap, with_stages
from ..optim import network_groups
from .base import DistillationModule


def stage_channels(model: nn.Module, image_shape) -> list[int]:
    """Channel count of each feature stage, found with one dummy forward."""
    with torch.no_grad(), eval_mode(model), stage_tap(model) as tap:
        model(torch.zeros(2, *image_shape))
        return [f.shape[1] for f in tap.features]


class KnowledgeDistillation(DistillationModule):
    loss_terms = ("kd", "ce", "hint", "fsp", "at")

    def __init__(self, student, method, loss, num_classes, teacher, image_shape):
        super().__init__(student, method, loss, num_classes, teacher)
        self.temperature = loss.temperature
        # feature stages are tapped only for a term that reads them (any network works without)
        self.reads_features = any(reads(self.loss_terms, self.weights, f) for f in ("student_features", "teacher_features"))
        if reads(self.loss_terms, self.weights, "projected_student_features"):
            s_ch, t_ch = stage_channels(student, image_shape), stage_channels(teacher, image_shape)
            if len(s_ch) != len(t_ch):
                raise ValueError(
                    f"hint/fsp need as many feature stages in the student ({len(s_ch)}) as in the teacher "
                    f"({len(t_ch)}); set loss.weights.hint=0 and loss.weights.fsp=0 for this pair"
                )
            self.projections = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(s_ch, t_ch))

    @classmethod
    def from_config(cls, cfg, student, teacher, data):
        return cls(student, cfg.method, cfg.loss, data.num_classes, teacher, data.image_shape)

    def student_parameters(self):
        return network_groups(self.student, *([self.projections] if hasattr(self, "projections") else []))

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            t_logits, t_feats = with_stages(self.teacher, self.reads_features, lambda: self.teacher(x))
        s_logits, s_feats = with_stages(self.student, self.reads_features, lambda: self.student(x))
        terms = compute_terms(self.loss_terms, self.weights, {
            "student_logits": s_logits, "teacher_logits": t_logits, "labels": y, "temperature": self.temperature,
            "label_smoothing": self.loss_cfg.label_smoothing,
            "student_features": s_feats, "teacher_features": t_feats,
            "projected_student_features": Lazy(lambda: [p(f) for p, f in zip(self.projections, s_feats)]),
        })
        loss = weighted_sum(terms, self.weights)
        self.check_finite(terms, "the student update", total=loss)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        return loss
