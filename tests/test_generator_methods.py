"""Generator methods (DAFL, ZSKT, DFAD, DFQ), the quantised student and the sample grid.

Tiny runs: an 8-channel generator, batches of 16, two training steps on CPU.
"""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from dfkd_lab.build import build_data, build_module, build_student, build_teacher, trainer_kwargs
from dfkd_lab.callbacks.samples import histogram_image, to_uint8_grid
from dfkd_lab.config import ConfigError
from dfkd_lab.data import ClassificationData
from dfkd_lab.data.augment import adversarial_push
from dfkd_lab.losses.kd import kd_kl
from dfkd_lab.methods.base import TrainingDiverged
from dfkd_lab.methods.data_free import SynthesisDiverged
from dfkd_lab.methods.dfq import StudentEnsemble
from dfkd_lab.models import build_model
from dfkd_lab.quant import model_bytes, prepare_qat, qat_qconfig, to_int8
from dfkd_lab.synthesis.base import SynthBatch
from dfkd_lab.synthesis.generator import GeneratorSynthesizer
from dfkd_lab.train import run
from dfkd_lab.validate import problems

METHODS = ["dafl", "zskt", "dfad", "dfq"]
TINY = ["method.synthesis.batch_size=16", "method.synthesizer.ngf=8", "method.synthesis.student_steps=2",
        "trainer.limit_val_batches=1", "data.eval_batch_size=256", "callbacks.sample_grid=null"]


def tiny(compose_cfg, method, *overrides):
    return compose_cfg(f"method={method}", *TINY, *overrides)


def snapshot(module):
    """Parameters and buffers (BN statistics, quantiser ranges)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def weights(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


def fit(cfg):
    """Build and fit as dfkd-train does, keeping the module and trainer for inspection."""
    pl.seed_everything(cfg.seed)
    data = build_data(cfg)
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    parts = {"teacher": snapshot(module.teacher), "student": weights(module.student),
             "generator": weights(module.synthesizer.generators)}
    if hasattr(module, "peers"):
        parts["peers"] = weights(module.peers)
    trainer = pl.Trainer(**trainer_kwargs(cfg), logger=False, callbacks=[], enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=module.train_dataloader_from(data), val_dataloaders=data.val_dataloader())
    return module, trainer, parts


@pytest.mark.parametrize("method", METHODS)
def test_each_optimiser_moves_only_its_own_parameters(compose_cfg, method):
    module, trainer, before = fit(tiny(compose_cfg, method))
    assert not changed(before["teacher"], snapshot(module.teacher)), "teacher weights or BN buffers moved"
    assert changed(before["student"], weights(module.student))
    assert changed(before["generator"], weights(module.synthesizer.generators))
    if method == "dfq":
        assert len(module.peers) == 1 and changed(before["peers"], weights(module.peers))
    adversarial = {"zskt": "synth/adversarial_kl", "dfad": "synth/adversarial_l1", "dfq": "synth/adversarial_kl"}.get(method)
    if adversarial:
        assert trainer.callback_metrics[adversarial].item() < 0  # -distance: non-zero, T and S differ


@pytest.mark.parametrize("follows", [False, True])
def test_generator_learning_rate_follows_the_student_schedule_only_when_asked(compose_cfg, follows):
    module, _, _ = fit(tiny(compose_cfg, "dfad", f"method.synthesis.follow_student_schedule={str(follows).lower()}"))
    student_opt, generator_opt = module.optimizers()
    assert student_opt.param_groups[0]["lr"] < module.method.lr  # cosine: decayed after 4 student steps
    generator_lr = generator_opt.param_groups[0]["lr"]
    assert (generator_lr < module.synthesizer.lr) is follows
    if follows:  # the same fraction of its initial rate as the student's
        assert generator_lr / module.synthesizer.lr == pytest.approx(student_opt.param_groups[0]["lr"] / module.method.lr)


@pytest.mark.parametrize("method", ["zskt", "dfq"])
def test_generator_step_does_not_touch_the_student(compose_cfg, method):
    """Synthesis only (warm-up epoch): the adversarial backward runs through the student, yet
    only the generator may change."""
    module, _, before = fit(tiny(compose_cfg, method, "method.synthesis.warmup_epochs=1"))
    assert changed(before["generator"], weights(module.synthesizer.generators))
    assert not changed(before["student"], weights(module.student))
    assert not changed(before["teacher"], snapshot(module.teacher))


def test_data_free_run_never_reads_the_training_split(compose_cfg, monkeypatch):
    read = []
    original = ClassificationData._raw
    monkeypatch.setattr(ClassificationData, "_raw", lambda self, split: read.append(split) or original(self, split))
    run(tiny(compose_cfg, "dfad"))
    assert read == ["test"]


def test_same_seed_same_metrics(compose_cfg, tmp_path):
    def metrics(folder):
        cfg = tiny(compose_cfg, "dfad", f"paths.output_dir={folder}")
        return {k: v for k, v in run(cfg).items() if not k.startswith(("time/", "cost/", "mem/", "run/command"))}

    first, second = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    students = [torch.load(tmp_path / d / m["export/student"], weights_only=True) for d, m in (("a", first), ("b", second))]
    assert "test/acc" in first and first == second
    assert students[0].keys() == students[1].keys()
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])


def test_nan_stops_the_run_and_keeps_the_earlier_checkpoint(compose_cfg, monkeypatch):
    cfg = tiny(compose_cfg, "zskt", "trainer.max_epochs=2")
    calls, real = [], GeneratorSynthesizer.synthesize

    def poisoned(self, ctx):
        calls.append(1)
        terms = real(self, ctx)
        return {**terms, "adversarial_kl": torch.tensor(float("nan"))} if len(calls) > 2 else terms

    monkeypatch.setattr(GeneratorSynthesizer, "synthesize", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss .'adversarial_kl'. in synthesis"):
        run(cfg)
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()  # from epoch 0


@pytest.mark.parametrize("patience, collapses", [(3, True), (0, False)])
def test_collapsed_generator_stops_the_run_after_patience_rounds(compose_cfg, monkeypatch, patience, collapses):
    """method.synthesis.collapse_patience: every image labelled one class for that many rounds stops the
    run (0 = never); the checkpoint of the epoch before is kept."""
    cfg = tiny(compose_cfg, "dafl", "trainer.max_epochs=2", f"method.synthesis.collapse_patience={patience}")
    real = GeneratorSynthesizer.batch

    def one_class(self, n, ctx):
        logits = torch.zeros(n, 10, device=ctx.device)
        logits[:, 3] = 10.0
        return SynthBatch(real(self, n, ctx).images, teacher_logits=logits)

    monkeypatch.setattr(GeneratorSynthesizer, "batch", one_class)
    if collapses:  # 2 steps per epoch: the third step, in epoch 1, is the third collapsed one
        with pytest.raises(SynthesisDiverged, match="collapse.*class 3 for 3 synthesis rounds"):
            run(cfg)
        assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()  # from epoch 0
    else:
        assert 0.0 <= run(cfg)["test/acc"] <= 1.0


def test_student_ensemble_averages_member_losses():
    a, b, t = torch.randn(4, 10), torch.randn(4, 10), torch.randn(4, 10)
    members = [lambda x, v=v: v for v in (a, b)]
    stacked = StudentEnsemble.forward(type("E", (), {"members": members})(), None)
    expected = (kd_kl(a, t) + kd_kl(b, t)) / 2
    torch.testing.assert_close(kd_kl(stacked, t.repeat(2, 1)), expected)


@pytest.mark.parametrize("bits, activation_max, weight_range", [(8, 127, (-128, 127)), (4, 15, (-8, 7))])
def test_activations_take_at_most_7_bits_so_int8_kernels_without_vnni_cannot_saturate(bits, activation_max,
                                                                                     weight_range):
    config = qat_qconfig(bits)
    activation, weight = config.activation(), config.weight()
    assert (activation.quant_min, activation.quant_max) == (0, activation_max)
    assert (weight.quant_min, weight.quant_max) == weight_range


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quant_student_and_int8_conversion(bits):
    torch.manual_seed(0)
    model = build_model("lenet5_half", num_classes=10, in_channels=1)
    x = torch.randn(32, 1, 32, 32)
    qat = prepare_qat(model, bits, x)
    qat(x).sum().backward()  # trains: fake quant passes gradients straight through
    assert model.classifier.weight.grad is None and qat.classifier.weight.grad is not None
    qat.eval()
    fake = qat(x)
    assert not torch.allclose(fake, model(x), atol=1e-4)  # quantisation changes the output
    int8 = to_int8(qat)
    assert any(p.is_quantized for p in int8.state_dict().values() if isinstance(p, torch.Tensor))
    tolerance = {8: 0.05, 4: 0.5}[bits] * fake.abs().max()
    assert (int8(x) - fake).abs().max() < tolerance
    assert model_bytes(int8) < model_bytes(model) / 2
    with pytest.raises(ValueError, match="method.dfq.quant_bits"):
        prepare_qat(model, 16, x)


class BranchesOnValues(nn.Module):
    """A forward that branches on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = x.flatten(1)[:, :4]
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_a_student_fx_cannot_trace_is_refused_naming_the_float_alternative():
    with pytest.raises(ConfigError, match=r"BranchesOnValues.*cannot be quantised.*method.dfq.quant_bits=0"):
        prepare_qat(BranchesOnValues(), 8, torch.randn(2, 1, 2, 2))


# DFQ's own keys and method.synthesis.adversarial_eps (checked for every data-free method), run with dfq
@pytest.mark.parametrize("key", ["method.dfq.students=0", "method.dfq.quant_from=1.0", "method.synthesis.adversarial_eps=-0.1"])
def test_bad_method_settings_are_rejected_naming_the_key(compose_cfg, key):
    cfg = tiny(compose_cfg, "dfq", key)
    data = build_data(cfg)
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)


@pytest.mark.parametrize("bits", [-1, 1, 9])
def test_quantisation_bits_outside_2_to_8_are_refused_before_the_run(compose_cfg, bits):
    assert f"method.dfq.quant_bits={bits}: choose 0 (float) or 2..8 bits" in problems(
        tiny(compose_cfg, "dfq", f"method.dfq.quant_bits={bits}"))


@pytest.mark.parametrize("trainer,refused", [(["trainer=ddp_sim"], True), (["trainer=ddp_sim", "method.dfq.quant_bits=0"], False),
                                             (["trainer.strategy=ddp_spawn"], True), (["trainer.strategy=ddp"], False)])
def test_a_quantised_student_is_refused_with_a_strategy_that_spawns_its_processes(compose_cfg, trainer, refused):
    found = [p for p in problems(tiny(compose_cfg, "dfq", *trainer)) if "spawns its processes" in p]
    assert bool(found) == refused and all("method.dfq.quant_bits=0" in p and "trainer=ddp " in p for p in found)


def test_dfq_observers_learn_from_synthetic_images_only(compose_cfg):
    cfg = tiny(compose_cfg, "dfq")
    data = build_data(cfg)
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    module.eval()
    before = snapshot(module.student)
    module.student(torch.randn(8, 1, 32, 32) * 5)
    assert not changed(before, snapshot(module.student))
    module.train()
    module.student(torch.randn(8, 1, 32, 32) * 5)
    assert changed(before, snapshot(module.student))


def test_sample_grid_is_denormalised_uint8():
    images = torch.full((4, 1, 8, 8), (0.5 - 0.2860) / 0.3530)
    grid = to_uint8_grid(images, [0.2860], [0.3530], nrow=2)
    assert grid.mode == "L" and grid.size == (2 * 10 + 2, 2 * 10 + 2)
    assert grid.getpixel((5, 5)) == 128 and grid.getpixel((0, 0)) == 255  # pixel, padding
    chart = histogram_image([3, 0, 1])
    assert chart.size[0] == 3 * 32 + 8


def test_sample_grid_callback_writes_pngs_only_for_synthesizers(compose_cfg, tmp_path):
    cfg = compose_cfg("method=dafl", *[o for o in TINY if "sample_grid" not in o])
    run(cfg)
    samples = Path(cfg.paths.output_dir) / "samples"
    assert {p.name for p in samples.iterdir()} >= {"epoch_000.png", "latest.png", "classes_latest.png"}
    assert Image.open(samples / "latest.png").size == (8 * 34 + 2, 8 * 34 + 2)
    kd = compose_cfg("method=kd", "trainer.limit_val_batches=1", f"paths.output_dir={tmp_path / 'kd'}")
    run(kd)
    assert not (Path(kd.paths.output_dir) / "samples").exists()


def test_augment_mixup_gives_the_student_blends_of_the_generated_batch_for_the_teacher_to_label():
    synthesizer = GeneratorSynthesizer(nz=8, ngf=4, augment_mixup=True)
    teacher = build_model("lenet5", num_classes=10, in_channels=1)
    synthesizer.setup((1, 32, 32), 10, (torch.tensor([-1.0]), torch.tensor([1.0])), teacher)
    generated = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 32, 32).clone()
    synthesizer._cache = SynthBatch(generated, teacher_logits=torch.zeros(4, 10))
    batch = synthesizer.batch(4, ctx=None)
    assert batch.teacher_logits is None  # the generator-step logits belong to the unblended images
    values = batch.images[:, 0, 0, 0]
    assert torch.allclose(batch.images, values.view(4, 1, 1, 1).expand_as(batch.images))
    assert ((values >= 0) & (values <= 3)).all() and not torch.equal(values, torch.arange(4.0))
    assert torch.equal(synthesizer._cache.images, generated)  # later reuses blend the same batch


def test_replay_fills_half_the_student_batch_from_earlier_generated_images():
    synthesizer = GeneratorSynthesizer(nz=8, ngf=4, replay=6)
    synthesizer.setup((1, 32, 32), 10, (torch.tensor([-1.0]), torch.tensor([1.0])), build_model("lenet5"))
    for value in (1.0, 2.0, 3.0):  # what three generator steps made, 2 images each
        synthesizer.memory.add(torch.full((2, 1, 32, 32), value))
    synthesizer._cache = SynthBatch(torch.full((4, 1, 32, 32), 9.0), teacher_logits=torch.zeros(4, 10))
    batch = synthesizer.batch(4, ctx=None)
    values = batch.images[:, 0, 0, 0].tolist()
    assert values[:2] == [9.0, 9.0] and set(values[2:]) <= {1.0, 2.0, 3.0}
    assert batch.teacher_logits is None
    restored = GeneratorSynthesizer(nz=8, ngf=4, replay=6)
    restored.set_extra_state(synthesizer.get_extra_state())
    assert torch.equal(restored.memory.newest(6), synthesizer.memory.newest(6))
    with pytest.raises(ValueError, match="synthesizer.replay"):
        GeneratorSynthesizer(replay=-1)


def test_adversarial_push_raises_the_disagreement_within_eps_and_leaves_no_gradients():
    torch.manual_seed(0)
    teacher, student = build_model("lenet5", num_classes=10), build_model("lenet5_half_bn", num_classes=10)
    student.eval()
    x = torch.randn(16, 1, 32, 32)
    with torch.no_grad():
        before = kd_kl(student(x), teacher(x))
    student.train()
    bn_stats = snapshot(student)
    moved = adversarial_push(x, teacher, student, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert student.training and not changed(bn_stats, snapshot(student))  # mode and BN buffers as they were
    assert 0 < (moved - x).abs().amax() <= 0.1 + 1e-6
    student.eval()
    with torch.no_grad():
        assert kd_kl(student(moved), teacher(moved)) > before
    assert all(p.grad is None for p in [*teacher.parameters(), *student.parameters()])
    again = adversarial_push(x, teacher, student, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)


def test_adversarial_push_trains_the_student_on_moved_images_the_teacher_labels(compose_cfg):
    plain, _, _ = fit(tiny(compose_cfg, "dafl"))
    module, trainer, before = fit(tiny(compose_cfg, "dafl", "method.synthesis.adversarial_eps=0.2"))
    student_steps = module.method.synthesis.student_steps * trainer.num_training_batches * trainer.max_epochs
    assert module.cost.teacher_forwards - plain.cost.teacher_forwards == student_steps
    assert not changed(before["teacher"], snapshot(module.teacher))
    assert changed(weights(plain.student), weights(module.student))
