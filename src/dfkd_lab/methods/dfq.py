"""DFQ (Choi et al. 2020): adversarial distillation into a quantised student, with ensembles.

The loop is DataFreeDistillation's; what differs:

- a student ensemble (``method.dfq.students``): the first student is the one evaluated and
  shipped, the others are float peers trained by KD on the same batches. The generator's
  adversarial term averages over all of them, so it seeks images that any student still
  gets wrong (the generator ensemble is ``synthesizer.n_generators``);
- the evaluated student is fake-quantised (``method.dfq.quant_bits``: 2 to 8, 0 keeps it float)
  for the epochs after ``method.dfq.quant_from`` of them (float before), and converted to a real int8 model for the test, which reports both
  accuracies and both model sizes.
"""

import copy

import torch
from torch import nn
from torch.ao.quantization import (
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)
from torchmetrics.classification import MulticlassAccuracy

from ..config import ConfigError
from ..optim import network_groups
from ..quant import fake_quant_on, model_bytes, prepare_qat, to_int8
from .data_free import DataFreeDistillation


class StudentEnsemble(nn.Module):
    """Stacks the members' logits along the batch: a batch-mean loss against the teacher's
    logits repeated once per member is then the mean of the members' losses."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.cat([m(x) for m in self.members])


def fresh_copy(model: nn.Module) -> nn.Module:
    """Same architecture, newly initialised weights: a peer that starts somewhere else."""
    peer = copy.deepcopy(model)
    for module in peer.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return peer


class DFQDistillation(DataFreeDistillation):
    @classmethod
    def config_blocks(cls, method) -> tuple:
        return ("synthesis", "dfq")

    def __init__(self, student, method, loss, num_classes, teacher, synthesizer, image_shape,
                 value_range, seed: int = 0):
        if method.dfq.students < 1:
            raise ConfigError(f"method.dfq.students={method.dfq.students}: need at least the evaluated student (1)")
        if not 0 <= method.dfq.quant_from < 1:
            raise ConfigError(f"method.dfq.quant_from={method.dfq.quant_from}: give the float fraction of the epochs, in [0, 1)")
        float_student = student
        if method.dfq.quant_bits:
            student = prepare_qat(student, method.dfq.quant_bits, torch.zeros(2, *image_shape))
        super().__init__(student, method, loss, num_classes, teacher, synthesizer, image_shape, value_range, seed)
        self.peers = nn.ModuleList(fresh_copy(float_student) for _ in range(method.dfq.students - 1))
        self.float_bytes = model_bytes(float_student)
        self.int8_acc = MulticlassAccuracy(num_classes, average="micro")
        self._int8 = ()  # (converted model,) from the test on; a tuple keeps it out of the state dict

    def student_parameters(self):
        return network_groups(self.student, self.peers)

    def _ensemble(self):
        return StudentEnsemble([self.student, *self.peers]) if len(self.peers) else self.student

    def _context(self, synth_opts):
        ctx = super()._context(synth_opts)
        ctx.student = self._ensemble()
        return ctx

    def student_logits(self, images, t_logits):
        return self._ensemble()(images), t_logits.repeat(len(self.peers) + 1, 1)

    def train(self, mode: bool = True):
        # Quantisation ranges are learned from synthetic images only: freezing the observers
        # outside training keeps the real test images from calibrating the quantiser.
        super().train(mode)
        if self.method.dfq.quant_bits:
            self.student.apply(enable_observer if mode else disable_observer)
        return self

    def on_train_epoch_start(self):
        # Float first, then quantisation-aware: from the start, fake quantisation slowed the
        # student down (56% vs 67% float in a 1000-step probe); the observers still learn the
        # ranges during the float phase.
        if self.method.dfq.quant_bits:
            quantise = self.current_epoch >= int(self.method.dfq.quant_from * self.trainer.max_epochs)
            self.student.apply(enable_fake_quant if quantise else disable_fake_quant)

    # --- the int8 model ---------------------------------------------------------------------
    def on_fit_start(self):
        super().on_fit_start()
        self._int8 = ()  # a model converted by an earlier test is not this training's

    def quantised_student(self):
        bits = self.method.dfq.quant_bits
        if not bits:
            return None
        return (self._int8[0] if self._int8 else to_int8(self.student)), bits

    def on_test_start(self):
        if self.method.dfq.quant_bits:
            self._int8 = (to_int8(self.student),)  # tested here, exported after (quantised_student)

    def test_step(self, batch, batch_idx):
        super().test_step(batch, batch_idx)
        if self._int8:
            x, y = batch
            self.int8_acc.update(self._int8[0](x.cpu().float().contiguous()).argmax(1).to(y.device), y)

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        if self._int8:
            self.log("test/acc_int8", self.int8_acc.compute())
            self.int8_acc.reset()
            self.log("quant/int8_bytes", float(model_bytes(self._int8[0])))
            self.log("quant/float_bytes", float(self.float_bytes))
            self.log("quant/bits", float(self.method.dfq.quant_bits))

    def end_warnings(self, max_epochs):
        dfq = self.method.dfq
        if not dfq.quant_bits or fake_quant_on(self.student):
            return super().end_warnings(max_epochs)
        start = int(dfq.quant_from * max_epochs)
        return [*super().end_warnings(max_epochs), (f"the run ended ({self.EARLY_ENDS}) before epoch {start + 1} of "
                f"{max_epochs}, where quantisation-aware training starts (method.dfq.quant_from="
                f"{dfq.quant_from}): its {dfq.quant_bits}-bit student is the float student quantised after "
                "training, never trained quantised. Give the run the time for its epochs, or a smaller quant_from")]
